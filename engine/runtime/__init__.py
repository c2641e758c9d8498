"""Schedulers over the stages: the release's offline exact mode and the causal stream."""

from engine.runtime.control import Cancelled, RunControl, StageTimer
from engine.runtime.exact import ExactRun, Noise
from engine.runtime.step import DenoiseStep, RunHooks
from engine.runtime.stream import StreamFrame, StreamRunner

__all__ = ["Cancelled", "DenoiseStep", "ExactRun", "Noise", "RunControl", "RunHooks", "StageTimer", "StreamFrame",
           "StreamRunner"]
