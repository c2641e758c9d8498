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

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from engine.config import modes
from engine.config.settings import RunConfig
from engine.diffusion import conditioning, sampling, windows
from engine.runtime.common import HeadStore, Noise, guidance_scales, timestep_for
from engine.runtime.control import RunControl, StageTimer
from engine.runtime.stages import (
    MOTION_CHUNK,
    RunConditioning,
    SourceFeatures,
    Stages,
    WindowInput,
    WindowOutput,
    to_uint8,
)

Record = dict[str, torch.Tensor]


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
    """One exact-mode run: construct, then iterate ``frames()`` (uint8 [H, W, 3] in order)."""

    stages: Stages
    cfg: RunConfig
    source: SourceFeatures
    driving: Iterable[np.ndarray]
    noise: Noise
    control: RunControl = field(default_factory=RunControl)
    timer: StageTimer = field(default_factory=StageTimer)
    record: Record | None = None
    relative: bool = True
    split: bool = False  # the split wfm + unet graphs even when nothing is reused (tests: k = 1 == exact)
    num_frames: int = 0  # driving frames read (set by the motion step)

    # 2. ------------------------------------------------------------------------------ motion
    def encode_motion(self) -> HeadStore:
        motion = self.stages.motion(self.source, self.relative, self.cfg.controls)
        heads = HeadStore(self.stages.denoise.backend.device)
        trunks = []
        count = 0

        def counted() -> Iterator[np.ndarray]:
            nonlocal count
            for frame in self.driving:
                count += 1
                yield frame

        for chunk in chunked(counted(), MOTION_CHUNK, self.cfg.windows.size):
            with self.timer("motion"):
                out = motion.run_pm1(conditioning.to_pm1(chunk))
            heads.append(out.head_latents)
            if self.record is not None:
                trunks.append(out.trunk)
            self.control.report("motion", heads.count, max(heads.count, count))
        self.num_frames = count
        if self.record is not None:
            self.record["motion_trunk"] = torch.cat(trunks)[None].float()
        return heads

    # 3. ----------------------------------------------------------------------------- denoise
    def model_fn(self, cond: RunConditioning, heads: HeadStore, schedule: sampling.Schedule,
                 on_window: Callable[[int, WindowOutput], None] | None = None,
                 on_guided: Callable[[torch.Tensor], None] | None = None) -> sampling.ModelFn:
        """x [F, 4, h, w], sigma -> denoised [F, 4, h, w]: window-blended CFG pairs (or conditional rows,
        per the run's guidance strategy), guidance; the WFM reused as the mode's plan says."""
        wc, s = self.cfg.windows, self.cfg.sampler
        all_windows = windows.window_indices(heads.count, wc.size, wc.overlap)
        weight = windows.window_weights(len(all_windows[0]))[:, None, None, None]  # [T, 1, 1, 1]
        guidance = guidance_scales(self.cfg, heads.count)
        per_call = self.stages.denoise.per_call
        device = self.stages.denoise.backend.device
        weight, guidance = weight.to(device), guidance.to(device)
        # device index tensors made once: a Python list as a CUDA index is a blocking host-to-device copy
        # per use (several per window and evaluation on the hot path)
        index = [torch.tensor(idx, device=device) for idx in all_windows]
        plan = iter(modes.eval_plan(s.sampler, schedule.sigmas, s.guidance_mode, s.wfm_every))
        cache: dict[Any, Any] | None = {} if s.wfm_every > 1 or self.split else None  # WFM outputs per window group
        progress = {"done": 0, "total": len(all_windows) * len(sampling.eval_sigmas(s.sampler, schedule.sigmas))}

        def model_fn(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            ev = next(plan)
            timestep = timestep_for(schedule, sigma)
            rows = 2 if ev.cfg else 1
            pred = torch.zeros(rows, *x.shape, device=x.device)  # [rows, F, 4, h, w] (uncond, cond), float32
            count = torch.zeros(x.shape[0], device=x.device)
            for start in range(0, len(all_windows), per_call):
                group = all_windows[start : start + per_call]
                items = [WindowInput(x.index_select(0, index[start + k]), sigma, timestep, heads.gather(idx))
                         for k, idx in enumerate(group)]
                with self.timer("denoise"):
                    outs = self.stages.denoise(items, cond, cfg=ev.cfg, wfm=ev.wfm, cache=cache,
                                               kv_downsample=self.cfg.kv_downsample)
                for k, (_, out) in enumerate(zip(group, outs, strict=True)):
                    pred.index_add_(1, index[start + k], out.noise_pred * weight)  # windows' frames are distinct
                    count.index_add_(0, index[start + k], weight[:, 0, 0, 0])
                    if on_window is not None:
                        on_window(start + k, out)
                progress["done"] += 1
                self.control.report("denoise", progress["done"], progress["total"])
            pred = pred / count[:, None, None, None]
            guided = pred[0] + guidance * (pred[1] - pred[0]) if ev.cfg else pred[0]
            if on_guided is not None:
                on_guided(guided)
            return sampling.v_to_x0(guided, x, sigma)

        return model_fn

    def denoise(self, cond: RunConditioning, heads: HeadStore) -> torch.Tensor:
        s = self.cfg.sampler
        schedule = sampling.make_schedule(s.sampler, s.steps, s.scheduler, s.schedule)
        latents = self.noise.initial_latents(range(heads.count), schedule)  # [F, 4, h, w]
        latents = latents.to(self.stages.denoise.backend.device)
        rec = _StepRecorder(self.record)
        model_fn = self.model_fn(cond, heads, schedule, rec.window if rec.on else None,
                                 rec.guided if rec.on else None)
        return sampling.SAMPLERS[s.sampler](model_fn, latents, schedule.sigmas, callback=rec.step)

    # 4. ------------------------------------------------------------------------------ decode
    def decode(self, latents: torch.Tensor) -> Iterator[torch.Tensor]:
        """Final latents -> float [n, 3, H, W] chunks in [0, 1], only the clip's own frames."""
        n = self.num_frames
        per_call = self.stages.decode.per_call
        for start in range(0, n, per_call):
            with self.timer("decode"):
                frames = self.stages.decode(latents[start : min(start + per_call, n)], tiny=self.cfg.decoder == "tiny")
            self.control.report("decode", min(start + per_call, n), n)
            yield frames

    # all ---------------------------------------------------------------------------------
    def frames(self) -> Iterator[np.ndarray]:
        with self.timer("source"):
            cond = self.stages.source.conditioning(self.source, self.noise.aug)
        heads = self.encode_motion()
        latents = self.denoise(cond, heads)
        if self.record is not None:
            self.record["head_latents"] = torch.cat(heads.chunks)
        del heads
        if self.record is not None:
            self.record.update(final_latents=latents[None], image_latents_cfg=_cfg_pair(cond.image_latents),
                               image_embeddings_cfg=_cfg_pair(cond.image_embeds),
                               added_time_ids=cond.added_time_ids.repeat(2, 1),
                               vae_latent_mean=cond.image_latents, clip_image_embeds=cond.image_embeds[:, 0])
            self.record["frames"] = torch.cat(list(self.decode(latents)))[None]
            yield from to_uint8(self.record["frames"][0])
            return
        for chunk in self.decode(latents):
            yield from to_uint8(chunk)


def _cfg_pair(t: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.zeros_like(t), t])


class _StepRecorder:
    """Names every window output and step result as the pipeline fixture does (``step{i}_...``).
    The step index is counted here, from the sampler's callbacks, not inside the sampler."""

    def __init__(self, record: Record | None) -> None:
        self.record, self.on, self.index = record, record is not None, 0

    def window(self, w: int, out: WindowOutput) -> None:
        assert self.record is not None
        self.record[f"step{self.index}_win{w}_infofill"] = out.infofill.float()
        self.record[f"step{self.index}_win{w}_unet_out"] = out.unet_out.float()

    def guided(self, guided: torch.Tensor) -> None:
        assert self.record is not None
        self.record[f"step{self.index}_noise_pred_guided"] = guided[None]

    def step(self, i: int, x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> None:
        if self.record is not None:
            self.record[f"step{i}_latents"] = x[None]
        self.index = i + 1
