"""Schedulers over the stages: the release's offline exact mode and the causal stream."""

from engine.runtime.control import Cancelled, RunControl, StageTimer
from engine.runtime.exact import ExactRun, Noise
from engine.runtime.stream import StreamFrame, StreamRunner

__all__ = ["Cancelled", "ExactRun", "Noise", "RunControl", "StageTimer", "StreamFrame", "StreamRunner"]
