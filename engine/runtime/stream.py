"""Causal streaming: driving frames pushed one at a time, finished frames out as soon as they are final.

The release's window shape is kept (frame 0 + 13 frames, stride 8). Window k is denoised as soon as
driving frames up to its last one have arrived; the frames it shares with window k-1 (and frame 0)
were already emitted, so their clean latents are held fixed at every step - the model's denoised
estimate for them is overwritten with the clean latent, which is exactly the release's
``first_n_frames`` pinning (it overwrites the v-prediction with the one whose denoised estimate is
that latent) - and only the 8 new frames are generated and emitted. See docs/runtime.md.

Between frames, the motion controls may change (from the next frame on) and the source may be
switched. A switch at frame s starts a new *segment*: frames from s on are generated as by a fresh
stream started at s with the new source (the motion anchor stays the first driving frame); the old
segment still runs the windows that emit its frames < s exactly as without the switch, so the
motion stage computes, for the ``lookahead`` frames after s, the head latents of both sources. So
frames < s are those of a run without the switch and the look-ahead bound holds across it.

Three worker threads overlap the stages (motion ahead, denoise, decode), linked by bounded queues;
nothing in the state grows with the stream's length. On a GPU each thread queues its kernels on a CUDA
stream of its own; a queue item carries an event its consumer's stream waits for.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from engine.config.controls import MotionControls
from engine.config.modes import RunConfig, RunPlan
from engine.diffusion import conditioning, sampling
from engine.errors import EngineError
from engine.models.liveportrait.motion_branch import to_model_input
from engine.runtime.common import Noise, guidance_scales, ready_event, stage_stream, wait_ready
from engine.runtime.control import RunControl, StageTimer
from engine.runtime.stages import (
    RunConditioning,
    SourceFeatures,
    SourceMotion,
    Stages,
    float32_region,
    to_uint8,
)
from engine.runtime.step import DenoiseStep

_END = object()
STALL_SECONDS = 2.0  # input and output queues both full this long: the caller is not reading results


@dataclass(frozen=True)
class SetControls:
    """An input-queue item: new motion controls from the next frame on."""

    controls: MotionControls


@dataclass(frozen=True)
class SwitchSource:
    """An input-queue item: the next frames reenact this source."""

    motion: SourceMotion
    cond: RunConditioning


@dataclass
class Segment:
    """The denoise worker's state for the frames of one source: ``start`` is its frame 0 (its window
    plan counts from there); ``end`` (set by a switch) is its first frame that belongs to the next."""

    start: int
    step: DenoiseStep  # the denoise step with this segment's source conditioning
    end: int | None = None
    received: int = 0  # relative to start, like every index below
    emitted: int = 0
    heads: dict[int, torch.Tensor] = field(default_factory=dict)  # frame 0 and the last size-1 frames
    known: dict[int, torch.Tensor] = field(default_factory=dict)  # clean latents: frame 0, the last size-1

    @property
    def done(self) -> bool:
        return self.end is not None and self.start + self.emitted >= self.end


class StreamError(EngineError):
    """A stream was used out of order (push after end, results never read, ...)."""


@dataclass(frozen=True)
class StreamFrame:
    index: int  # output frame index = driving frame index
    frame: np.ndarray  # [H, W, 3] uint8
    latency: float  # seconds from the push of driving frame ``index`` to this frame being ready
    timestamp: float | None = None  # the capture timestamp given to ``push`` for that frame, echoed


@dataclass(frozen=True)
class CausalWindows:
    """Which frames the next stream window holds, as a pure function of the stream's counters."""

    size: int = 14
    overlap: int = 6

    @property
    def stride(self) -> int:
        return self.size - self.overlap

    @property
    def lookahead(self) -> int:
        """Driving frames needed beyond an output frame before it can be emitted (worst case: frame 0)."""
        return self.size - 1

    @property
    def steady_lookahead(self) -> int:
        return self.stride - 1

    def next_window(self, received: int, emitted: int, ended: bool) -> list[int] | None:
        """Frame indices of the next window (frame 0 first), or None while it cannot run yet.

        The first window is frames 0..size-1; later ones end ``stride`` frames after the last
        emitted frame, like the release's windows. At the end, the last window ends at the last
        frame; a clip shorter than a window is padded with its last frame.
        """
        if emitted >= received:
            return None
        last = (self.size if emitted == 0 else emitted + self.stride) - 1
        if received <= last:
            if not ended:
                return None
            last = received - 1
        if last < self.size - 1:  # short clip: one window padded with the last frame
            return list(range(last + 1)) + [last] * (self.size - 1 - last)
        return [0, *range(last - self.size + 2, last + 1)]


class StreamRunner:
    """The worker side of a stream: queues in and out, three threads. ``engine.api`` wraps it."""

    def __init__(self, stages: Stages, run: RunConfig, source: SourceFeatures, noise: Noise,
                 control: RunControl | None = None, queue_frames: int = 32, plan: RunPlan | None = None) -> None:
        self.stages, self.run, self.noise = stages, run, noise
        self.control = control or RunControl()
        self.timer = StageTimer(stages.denoise.backend.device)
        self.plan = CausalWindows(stages.cfg.windows.size, run.overlap)
        self.motion = stages.motion(source, run.relative_motion, run.controls)
        self.cond = stages.source.conditioning(source, noise.aug)
        self.run_plan = plan or RunPlan.of(run, stages.cfg.scheduler)  # computed once per run
        self.guidance = guidance_scales(run, self.plan.size).to(stages.denoise.backend.device)
        self.step = DenoiseStep(stages, self.cond, run.kv_downsample, self.run_plan.schedule, self.timer)
        # bounded queues: input frames, per-frame head latents, finished latents, output frames
        self.inputs: queue.Queue = queue.Queue(maxsize=queue_frames)
        self.heads_q: queue.Queue = queue.Queue(maxsize=self.plan.size)
        self.latents_q: queue.Queue = queue.Queue(maxsize=2)
        self.outputs: queue.Queue = queue.Queue(maxsize=queue_frames)
        # denoise-worker state: segments (one per source; a finished one is dropped), each bounded by
        # the window size; more than one only within ``lookahead`` frames of a switch
        self.segments: list[Segment] = [Segment(0, self.step)]
        self.pushed_at: dict[int, tuple[float, float | None]] = {}  # push time, stamp: frames not yet out
        self.windows_done = 0
        self._times_lock = threading.Lock()
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self.device = stages.denoise.backend.device
        if self.device.type == "cuda":  # the set-up above ran on the caller's stream: done before the workers read it
            torch.cuda.current_stream(self.device).synchronize()
        self.threads = [threading.Thread(target=self._guard(fn), name=f"frvd-{fn.__name__}", daemon=True)
                        for fn in (self._motion_worker, self._denoise_worker, self._decode_worker)]
        for t in self.threads:
            t.start()

    # -- plumbing -------------------------------------------------------------------------
    def _guard(self, fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                with stage_stream(self.device):
                    fn()
            except _Stopped:
                pass
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer, re-raised there
                self.error = self.error or exc
                self._stop.set()
            finally:
                self._put_end(fn)

        return run

    def _put_end(self, fn: Callable[[], None]) -> None:
        downstream = {self._motion_worker: self.heads_q, self._denoise_worker: self.latents_q,
                      self._decode_worker: self.outputs}[fn]
        while True:
            try:
                downstream.put(_END, timeout=0.05)
                return
            except queue.Full:
                if self._stop.is_set():  # nobody will read it: drop the oldest item to make room
                    try:
                        downstream.get_nowait()
                    except queue.Empty:
                        pass

    def put(self, q: queue.Queue, item: Any) -> None:
        while True:
            try:
                q.put(item, timeout=0.05)
                return
            except queue.Full:
                if self._stop.is_set():
                    raise _Stopped from None

    def get(self, q: queue.Queue) -> Any:
        while True:
            try:
                return q.get(timeout=0.05)
            except queue.Empty:
                if self._stop.is_set():
                    raise _Stopped from None

    def stop(self) -> None:
        self._stop.set()
        for t in self.threads:
            t.join(timeout=30)

    # -- workers ----------------------------------------------------------------------------
    def _motion_worker(self) -> None:
        """Each frame through the motion stage as soon as it arrives. One frame per call, never a
        timing-dependent batch: batched convolutions round differently, and a stream's output must
        not depend on how fast its frames came. Near a switch a frame is warped for each source
        whose segment still needs it (the keypoints and the smoother run once)."""
        sources: list[tuple[int, int | None, SourceMotion]] = [(0, None, self.motion.source)]  # start, end
        reach = self.plan.lookahead  # an old segment needs frames < end + lookahead
        next_index = 0
        while (item := self.get(self.inputs)) is not _END:
            if isinstance(item, SetControls):
                self.motion.set_controls(item.controls)
                continue
            if isinstance(item, SwitchSource):
                start, _, motion = sources.pop()
                if start < next_index:  # an empty segment (two switches between frames) is dropped
                    sources.append((start, next_index, motion))
                sources.append((next_index, None, item.motion))
                self.put(self.heads_q, ("switch", next_index, item.cond))
                continue
            index, frame = item
            next_index = index + 1
            self.control.check()
            heads = {}
            with self.timer("motion"):
                with torch.no_grad(), float32_region(self.motion.backend.device):
                    images = to_model_input(conditioning.to_pm1(frame[None]).to(self.motion.backend.device))
                    info, rotation = self.motion.driving(images)
                    for start, end, motion in sources:
                        if end is None or index < end + reach:
                            heads[start] = self.motion.for_source(motion, info, rotation).head_latents[0]
            sources = [src for src in sources if src[1] is None or next_index < src[1] + reach]
            self.put(self.heads_q, (index, heads, ready_event(self.device)))

    def _denoise_worker(self) -> None:
        ended = False
        while True:
            while len(self.segments) > 1 and self.segments[0].done:
                self.segments.pop(0)
            seg = self.segments[0]
            seg_ended = ended or (seg.end is not None and len(self.segments) > 1
                                  and seg.start + seg.received >= seg.end + self.plan.lookahead)
            window = self.plan.next_window(seg.received, seg.emitted, seg_ended)
            if window is not None and not seg.done:
                self._run_window(seg, window)
                continue
            if ended:
                return
            item = self.get(self.heads_q)
            if item is _END:
                ended = True
                continue
            if item[0] == "switch":
                _, start, cond = item
                last = self.segments[-1]
                last.end = start
                self.segments.append(Segment(start, self.step.for_source(cond)))
                continue
            index, heads, ready = item
            wait_ready(ready, self.device, heads.values())
            for held in self.segments:
                if held.start in heads:
                    held.heads[index - held.start] = heads[held.start]
                    held.received = index - held.start + 1

    def _run_window(self, seg: Segment, window: list[int]) -> None:
        """Denoise one window of ``seg`` (indices relative to its start) with its already-emitted
        frames pinned; hand the new ones on (those before the segment's end)."""
        dev = self.stages.denoise.backend.device
        known_pos = [p for p, i in enumerate(window) if i < seg.emitted]
        new_pos = [p for p, i in enumerate(window) if i >= seg.emitted and i not in window[:p]]
        if seg.end is not None:
            new_pos = [p for p in new_pos if seg.start + window[p] < seg.end]
        heads = torch.stack([seg.heads[i] for i in window])
        z0 = torch.stack([seg.known[window[p]] for p in known_pos]) if known_pos else None
        # index tensors made once per window: a Python list as a CUDA index blocks the host every step
        known_idx = torch.tensor(known_pos, device=dev)
        new_idx = torch.tensor(new_pos, device=dev)
        plan = self.run_plan
        evals = iter(plan.evals)
        cache: dict | None = {} if plan.split else None  # this window's WFM outputs (reuse)

        def model_fn(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            guided = seg.step(x, sigma, next(evals), None, lambda _: heads, self.guidance, cache=cache)
            denoised = sampling.v_to_x0(guided, x, sigma)
            if z0 is not None:
                denoised.index_copy_(0, known_idx, z0)  # the release's first_n_frames pinning, in x0 form
            return denoised

        x = self.noise.initial_latents(window, plan.schedule).to(dev)
        x = sampling.SAMPLERS[self.run.sampler](model_fn, x, plan.schedule.sigmas, callback=self._step_done)
        indices = [window[p] for p in new_pos]
        for p, i in zip(new_pos, indices, strict=True):
            seg.known[i] = x[p].clone()
        seg.emitted = indices[-1] + 1
        self.windows_done += 1
        # any later window (the last one too, which ends at the last frame) starts after frame 0 at
        # emitted - (size - 2) or later: older state is dropped
        first = seg.emitted - (self.plan.size - 2)
        for held in (seg.heads, seg.known):
            for i in [i for i in held if 0 < i < first]:
                del held[i]
        out = x.index_select(0, new_idx)
        self.put(self.latents_q, ([seg.start + i for i in indices], out, ready_event(self.device)))

    def _step_done(self, i: int, x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> None:
        self.control.check()

    def _decode_worker(self) -> None:
        while True:
            item = self.get(self.latents_q)
            if item is _END:
                return
            indices, latents, ready = item
            wait_ready(ready, self.device, [latents])
            with self.timer("decode"):
                frames = to_uint8(self.stages.decode(latents, tiny=self.run_plan.tiny_decoder))
            now = time.perf_counter()
            for index, frame in zip(indices, frames, strict=True):
                with self._times_lock:
                    pushed, stamp = self.pushed_at.pop(index)
                self.put(self.outputs, StreamFrame(index, frame, now - pushed, stamp))

    # -- the caller's side ------------------------------------------------------------------
    def push(self, index: int, frame: np.ndarray, timestamp: float | None, timeout: float | None) -> None:
        with self._times_lock:
            self.pushed_at[index] = (time.perf_counter(), timestamp)
        try:
            self._put_caller(self.inputs, (index, frame), timeout)
        except BaseException:  # not queued (timeout, stall, error): the frame was never pushed
            with self._times_lock:
                self.pushed_at.pop(index, None)
            raise

    def end(self) -> None:
        self._put_caller(self.inputs, _END, None)

    def set_controls(self, controls: MotionControls) -> None:
        """From the next pushed frame on (checked here, so the worker never fails on it)."""
        controls.check(self.motion.relative)
        self._put_caller(self.inputs, SetControls(controls), None)

    def switch_source(self, source: SourceFeatures) -> None:
        """The next pushed frames reenact ``source`` (its run conditioning computed here, on the caller's thread)."""
        cond = self.stages.source.conditioning(source, self.noise.aug)
        if self.device.type == "cuda":  # computed on the caller's stream; a switch is rare, a sync is fine
            torch.cuda.current_stream(self.device).synchronize()
        self._put_caller(self.inputs, SwitchSource(source.motion, cond), None)

    def _put_caller(self, q: queue.Queue, item: Any, timeout: float | None) -> None:
        start = time.perf_counter()
        stalled_since: float | None = None
        while True:
            self.raise_error()
            try:
                q.put(item, timeout=0.05)
                return
            except queue.Full:
                now = time.perf_counter()
                if timeout is not None and now - start > timeout:
                    raise StreamError(f"push timed out after {timeout} s: the engine is behind") from None
                stalled_since = (stalled_since or now) if self.outputs.full() else None
                if stalled_since is not None and now - stalled_since > STALL_SECONDS:
                    raise StreamError(
                        "the stream is stalled: finished frames are not being read; call ready() between "
                        "pushes (or read results() from another thread)"
                    ) from None

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    def state_sizes(self) -> dict[str, int]:
        """Number of items held by every piece of stream state (for the bounded-memory tests)."""
        segments = list(self.segments)
        return {"segments": len(segments), "heads": sum(len(g.heads) for g in segments),
                "known": sum(len(g.known) for g in segments), "pending_times": len(self.pushed_at),
                "inputs": self.inputs.qsize(), "heads_q": self.heads_q.qsize(),
                "latents_q": self.latents_q.qsize(), "outputs": self.outputs.qsize()}


class _Stopped(Exception):
    """Raised inside a worker when the stream is stopping."""
