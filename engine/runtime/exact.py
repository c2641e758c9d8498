"""Exact mode: the release's algorithm over the stages, frames streamed in and out.

    1. conditioning   the run's VAE latent of the noise-augmented source (CLIP, f_s, x_s: cached)
    2. motion         driving frames read as a stream, MOTION_CHUNK at a time -> head latents kept once
    3. denoise        every step blends ALL windows (frame 0 sits in each), CFG per window pair,
                      one solver loop over model_fn(x, sigma) -> denoised
    4. decode         final latents -> frames, DECODE_CHUNK per call, yielded as soon as decoded

Frames are final only after the last step (the release's windows are non-causal), so exact mode
cannot emit early; what it can do is hold nothing clip-long but the latents [F, 4, h, w] and the
head latents [F, c0, h, w] (see README for the bytes per frame).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from engine.config.modes import RunConfig, RunPlan
from engine.diffusion import conditioning, sampling, windows
from engine.runtime.common import HeadStore, Noise, guidance_scales
from engine.runtime.control import RunControl, StageTimer
from engine.runtime.stages import MOTION_CHUNK, RunConditioning, SourceFeatures, Stages, to_uint8
from engine.runtime.step import DenoiseStep, RunHooks


def chunked(frames: Iterable[np.ndarray], size: int, pad_to: int) -> Iterator[np.ndarray]:
    """uint8 frames -> [n, H, W, 3] chunks of ``size``; a clip shorter than ``pad_to`` frames is
    padded with its last frame (the networks were trained on full windows)."""
    buf: list[np.ndarray] = []
    count = 0
    for frame in frames:
        buf.append(frame)
        count += 1
        if len(buf) == size:
            yield np.stack(buf)
            buf = []
    if count == 0:
        raise ValueError("the driving clip has no frames")
    last = buf[-1] if buf else frame
    buf += [last] * max(0, pad_to - count)
    while buf:
        yield np.stack(buf[:size])
        buf = buf[size:]


@dataclass
class ExactRun:
    """One exact-mode run: construct, then iterate ``frames()`` (uint8 [H, W, 3] in order).
    ``hooks`` observe what it computes (fixtures, tests); ``plan`` is the run's, computed once (by the
    caller, else here)."""

    stages: Stages
    run: RunConfig
    source: SourceFeatures
    driving: Iterable[np.ndarray]
    noise: Noise
    control: RunControl = field(default_factory=RunControl)
    timer: StageTimer = field(default_factory=StageTimer)
    hooks: RunHooks = field(default_factory=RunHooks)
    plan: RunPlan | None = None
    num_frames: int = 0  # driving frames read (set by the motion step)

    def __post_init__(self) -> None:
        if self.plan is None:
            self.plan = RunPlan.of(self.run, self.stages.cfg.scheduler)

    # 2. ------------------------------------------------------------------------------ motion
    def encode_motion(self) -> HeadStore:
        motion = self.stages.motion(self.source, self.run.relative_motion, self.run.controls)
        heads = HeadStore(self.stages.denoise.backend.device)
        count = 0

        def counted() -> Iterator[np.ndarray]:
            nonlocal count
            for frame in self.driving:
                count += 1
                yield frame

        for chunk in chunked(counted(), MOTION_CHUNK, self.stages.cfg.windows.size):
            with self.timer("motion"):
                out = motion.run_pm1(conditioning.to_pm1(chunk))
            heads.append(out.head_latents)
            if self.hooks.motion is not None:
                self.hooks.motion(out)
            self.control.report("motion", heads.count, max(heads.count, count))
        self.num_frames = count
        if self.hooks.heads is not None:
            self.hooks.heads(heads.chunks)
        return heads

    # 3. ----------------------------------------------------------------------------- denoise
    def model_fn(self, cond: RunConditioning, heads: HeadStore) -> sampling.ModelFn:
        """x [F, 4, h, w], sigma -> denoised [F, 4, h, w]: the one denoise step over all the clip's
        windows, blended; CFG and WFM reuse as the run plan says."""
        plan = self.plan
        assert plan is not None
        all_windows = windows.window_indices(heads.count, self.stages.cfg.windows.size, self.run.overlap)
        device = self.stages.denoise.backend.device
        weight = windows.window_weights(len(all_windows[0]))[:, None, None, None].to(device)  # [T, 1, 1, 1]
        guidance = guidance_scales(self.run, heads.count).to(device)
        # device index tensors made once: a Python list as a CUDA index is a blocking host-to-device copy
        # per use (several per window and evaluation on the hot path)
        index = [torch.tensor(idx, device=device) for idx in all_windows]
        step = DenoiseStep(self.stages, cond, self.run.kv_downsample, plan.schedule, self.timer, self.hooks)
        evals = iter(plan.evals)
        cache: dict | None = {} if plan.split else None  # WFM outputs per window group
        total = len(all_windows) * len(plan.evals)
        done = 0

        def report(n: int) -> None:
            nonlocal done
            done += n
            self.control.report("denoise", done, total)

        def window_heads(k: int) -> torch.Tensor:
            return heads.gather(all_windows[k])

        def model_fn(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            guided = step(x, sigma, next(evals), index, window_heads, guidance, weight, cache, report)
            return sampling.v_to_x0(guided, x, sigma)

        return model_fn

    def denoise(self, cond: RunConditioning, heads: HeadStore) -> torch.Tensor:
        plan = self.plan
        assert plan is not None
        latents = self.noise.initial_latents(range(heads.count), plan.schedule)  # [F, 4, h, w]
        latents = latents.to(self.stages.denoise.backend.device)
        sampler = sampling.SAMPLERS[self.run.sampler]
        return sampler(self.model_fn(cond, heads), latents, plan.schedule.sigmas, callback=self.hooks.step)

    # 4. ------------------------------------------------------------------------------ decode
    def decode(self, latents: torch.Tensor) -> Iterator[torch.Tensor]:
        """Final latents -> float [n, 3, H, W] chunks in [0, 1], only the clip's own frames."""
        n = self.num_frames
        per_call = self.stages.decode.per_call
        plan = self.plan
        assert plan is not None
        for start in range(0, n, per_call):
            with self.timer("decode"):
                frames = self.stages.decode(latents[start : min(start + per_call, n)], tiny=plan.tiny_decoder)
            self.control.report("decode", min(start + per_call, n), n)
            if self.hooks.frames is not None:
                self.hooks.frames(frames)
            yield frames

    # all ---------------------------------------------------------------------------------
    def frames(self) -> Iterator[np.ndarray]:
        with self.timer("source"):
            cond = self.stages.source.conditioning(self.source, self.noise.aug)
        if self.hooks.conditioning is not None:
            self.hooks.conditioning(cond)
        heads = self.encode_motion()
        latents = self.denoise(cond, heads)
        del heads
        if self.hooks.latents is not None:
            self.hooks.latents(latents)
        for chunk in self.decode(latents):
            yield from to_uint8(chunk)
