"""The one denoise step both schedulers use, and the hooks a caller attaches to a run.

``DenoiseStep``: latents x [F, 4, h, w] at noise level sigma, windows over x's frames -> the guided
v-prediction [F, 4, h, w]: every window as a CFG pair (or its conditional rows, per the run plan's
evaluation), ``per_call`` windows per denoiser call, overlapping windows blended with the release's
weights, then classifier-free guidance. Exact mode passes all the clip's windows at every evaluation;
the stream passes its one window. The evaluation (CFG or not, WFM run or reused) comes from the
run's ``RunPlan``, computed once per run.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from engine.backends.base import Tensors
from engine.config.modes import Eval
from engine.diffusion import sampling
from engine.runtime.common import timestep_for
from engine.runtime.control import StageTimer
from engine.runtime.stages import MotionChunk, RunConditioning, Stages, WindowInput, WindowOutput


@dataclass
class RunHooks:
    """Observers of a run, for fixtures, tests and benchmarks. The runtime calls each one that is set
    with what it computed and never computes differently because of them (nothing is held for them
    either: a hook that keeps tensors keeps its own copies)."""

    conditioning: Callable[[RunConditioning], None] | None = None  # the run's conditional inputs
    motion: Callable[[MotionChunk], None] | None = None  # every chunk of driving frames through motion
    window: Callable[[int, WindowOutput], None] | None = None  # (window index, output) at every evaluation
    guided: Callable[[torch.Tensor], None] | None = None  # the guided prediction of every evaluation
    step: sampling.Callback | None = None  # the sampler's callback after every step
    heads: Callable[[list[torch.Tensor]], None] | None = None  # the clip's head latents (exact mode)
    latents: Callable[[torch.Tensor], None] | None = None  # the final latents (exact mode)
    frames: Callable[[torch.Tensor], None] | None = None  # each decoded chunk, float [n, 3, H, W] in [0, 1]


WFMCache = dict[int, tuple[bool, Tensors]]  # WFM outputs per window group (WFM reuse)


class DenoiseStep:
    """One model evaluation over windows of a latent sequence (see the module docstring)."""

    def __init__(self, stages: Stages, cond: RunConditioning, kv_downsample: int, schedule: sampling.Schedule,
                 timer: StageTimer, hooks: RunHooks | None = None) -> None:
        self.denoise, self.cond = stages.denoise.kv_downsample(kv_downsample), cond  # the run's networks, once
        self.schedule, self.timer, self.hooks = schedule, timer, hooks or RunHooks()
        self.per_call = self.denoise.per_call

    def for_source(self, cond: RunConditioning) -> DenoiseStep:
        """This step with another source's conditioning (a stream's source switch); networks shared."""
        step = copy.copy(self)
        step.cond = cond
        return step

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, ev: Eval, windows: Sequence[torch.Tensor] | None,
                 heads: Callable[[int], torch.Tensor], guidance: torch.Tensor,
                 weight: torch.Tensor | None = None, cache: WFMCache | None = None,
                 on_group: Callable[[int], None] | None = None) -> torch.Tensor:
        """x [F, 4, h, w] -> guided v-prediction [F, 4, h, w] (float32).

        ``windows``: each window's frame indices into x, as device index tensors made once per run (a
        Python list as a CUDA index is a blocking host-to-device copy per use), blended with ``weight``
        [T, 1, 1, 1]; None: x is the one window (no blending). ``heads(k)``: window k's head latents;
        ``guidance``: [F, 1, 1, 1]; ``cache``: WFM outputs kept between evaluations (split graphs);
        ``on_group(n)``: after each denoiser call of n windows."""
        timestep = timestep_for(self.schedule, sigma)
        if windows is None:
            pred = self._group([WindowInput(x, sigma, timestep, heads(0))], 0, ev, cache, on_group)[0].noise_pred
        else:
            assert weight is not None, "overlapping windows need their blend weights"
            pred = torch.zeros(2 if ev.cfg else 1, *x.shape, device=x.device)  # [rows, F, 4, h, w]
            count = torch.zeros(x.shape[0], device=x.device)
            for start in range(0, len(windows), self.per_call):
                group = windows[start : start + self.per_call]
                items = [WindowInput(x.index_select(0, idx), sigma, timestep, heads(start + k))
                         for k, idx in enumerate(group)]
                for idx, out in zip(group, self._group(items, start, ev, cache, on_group), strict=True):
                    pred.index_add_(1, idx, out.noise_pred * weight)  # a window's frames are distinct
                    count.index_add_(0, idx, weight[:, 0, 0, 0])
            pred = pred / count[:, None, None, None]
        guided = pred[0] + guidance * (pred[1] - pred[0]) if ev.cfg else pred[0]
        if self.hooks.guided is not None:
            self.hooks.guided(guided)
        return guided

    def _group(self, items: list[WindowInput], start: int, ev: Eval, cache: WFMCache | None,
               on_group: Callable[[int], None] | None) -> list[WindowOutput]:
        """One denoiser call over ``items`` (windows ``start``, ``start + 1``, ...)."""
        with self.timer("denoise"):
            outs = self.denoise(items, self.cond, cfg=ev.cfg, wfm=ev.wfm, cache=cache, first=start)
        if self.hooks.window is not None:
            for k, out in enumerate(outs):
                self.hooks.window(start + k, out)
        if on_group is not None:
            on_group(len(items))
        return outs
