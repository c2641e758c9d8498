"""Named run modes: bundles of knobs, each a deliberate change of the computation.

    exact   the release: Euler on its Karras schedule, 25 steps, CFG every step, the WFM every
            step, windows overlapping by 6, exact attention. The default; reproduces the fixtures.
    fast    <= 56 TFLOP per output frame at 512^2 (>= 4x less than exact)
    turbo   <= 18 TFLOP per output frame at 512^2 (>= 12x less than exact)
    ultra   <= 3.3 TFLOP per output frame at 512^2 (a 4090's real-time budget): a distilled student
            and the tiny VAE decoder, both given to the engine (docs/distillation.md)

Every knob can be given on its own and then overrides the mode's value (``resolve``). The work
each mode does is counted by ``benchmarks/count_flops.py --mode NAME``, its drift from exact
measured by ``benchmarks/bench_modes.py``; see docs/modes.md.

``EvalPlan`` is the one place that decides, per model evaluation, whether CFG runs and whether
the WFM runs or its last outputs are reused: the runtime follows it and the cost model counts it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import torch

from engine.config.settings import RunConfig, SamplerConfig, WindowConfig
from engine.diffusion import sampling
from engine.diffusion.guidance import Guidance

KV_FACTORS = (1, 2)
DECODERS = ("full", "tiny")  # 2: keys/values of the WFM's full attentions averaged over 2x2 pixels
_S, _W = SamplerConfig(), WindowConfig()  # the release's values are defined once, there


@dataclass(frozen=True)
class Knobs:
    """What a mode fixes. None in an override means "the mode's value"."""

    sampler: str = _S.sampler  # euler | heun | dpmpp_2m | ddim
    schedule: str | None = _S.schedule  # release | karras | leading; None: the sampler's own (DEFAULT_SCHEDULE)
    steps: int = _S.steps
    guidance_mode: str = _S.guidance_mode  # engine.diffusion.guidance: full | none | first:K | interval:LO:HI
    wfm_every: int = _S.wfm_every  # run the WFM at every k-th model evaluation, reuse its outputs in between
    overlap: int = _W.overlap  # frames shared by consecutive windows (frame 0 is in every window besides)
    kv_downsample: int = 1  # 2: 2x2 average of keys/values in the WFM's full attentions (4x less attention)
    decoder: str = "full"  # full (the VAE's) | tiny (TAESD, engine.models.taesd: the engine needs one)

    @classmethod
    def of(cls, cfg: RunConfig) -> Knobs:
        """The knobs a run configuration holds."""
        s = cfg.sampler
        return cls(s.sampler, s.schedule, s.steps, s.guidance_mode, s.wfm_every, cfg.windows.overlap, cfg.kv_downsample,
                   cfg.decoder)

    def apply(self, cfg: RunConfig, mode: str) -> RunConfig:
        """``cfg`` running with these knobs (recorded as ``mode``)."""
        sampler = replace(cfg.sampler, sampler=self.sampler, schedule=self.schedule, steps=self.steps,
                          guidance_mode=self.guidance_mode, wfm_every=self.wfm_every)
        return replace(cfg, sampler=sampler, windows=replace(cfg.windows, overlap=self.overlap),
                       kv_downsample=self.kv_downsample, decoder=self.decoder, mode=mode)

    def check(self) -> None:
        if self.sampler not in sampling.SAMPLERS:
            raise ValueError(f"sampler {self.sampler!r} is not one of {', '.join(sampling.SAMPLERS)}")
        if self.schedule is not None and self.schedule not in sampling.SCHEDULES:
            raise ValueError(f"schedule {self.schedule!r} is not one of {', '.join(sampling.SCHEDULES)}")
        if self.steps < 1:
            raise ValueError("steps must be >= 1")
        Guidance.parse(self.guidance_mode)
        if self.wfm_every < 1:
            raise ValueError("wfm_every must be >= 1")
        if self.overlap < 1:
            raise ValueError("overlap must be >= 1 (consecutive windows must share a frame to blend)")
        if self.kv_downsample not in KV_FACTORS:
            raise ValueError(f"kv_downsample must be one of {KV_FACTORS}")
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}")

    @property
    def schedule_name(self) -> str:
        return self.schedule or sampling.DEFAULT_SCHEDULE[self.sampler]


MODES: dict[str, Knobs] = {
    "exact": Knobs(),
    # 10 DPM-Solver++(2M) steps on the release's schedule; CFG for the first half (where it shapes the
    # motion), the WFM on every 2nd evaluation; the release's windows (seams unchanged)
    "fast": Knobs(sampler="dpmpp_2m", schedule="release", steps=10, guidance_mode="first:5", wfm_every=2),
    # 4 steps, no CFG, the WFM on every 2nd evaluation, windows overlapping by 2 (9 instead of 12 per 100 frames)
    "turbo": Knobs(sampler="dpmpp_2m", schedule="release", steps=4, guidance_mode="none", wfm_every=2, overlap=2),
    # <= 3.3 TFLOP/frame: a 1-step distilled student (CFG baked in), windows overlapping by 1, pooled keys/values,
    # the tiny VAE decoder; the engine needs a student and a tiny decoder (docs/distillation.md)
    "ultra": Knobs(sampler="distilled", steps=1, guidance_mode="none", overlap=1, kv_downsample=2, decoder="tiny"),
}
KNOB_NAMES = tuple(f.name for f in fields(Knobs))


def resolve(mode: str = "exact", base: Knobs | None = None, **overrides: Any) -> Knobs:
    """The mode's knobs (``base`` instead of exact's when given: an engine's own defaults) with every
    non-None override applied, checked."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    unknown = set(overrides) - set(KNOB_NAMES)
    if unknown:
        raise ValueError(f"unknown knobs {sorted(unknown)}; knobs are {', '.join(KNOB_NAMES)}")
    start = base if mode == "exact" and base is not None else MODES[mode]
    knobs = replace(start, **{k: v for k, v in overrides.items() if v is not None})
    knobs.check()
    return knobs


def required_graphs(cfg: RunConfig) -> list[str]:
    """The denoiser graphs a run needs (``denoiser_cond`` is optional: pairs stand in for it)."""
    s = cfg.sampler
    sigmas = sampling.make_schedule(s.sampler, s.steps, s.scheduler, s.schedule).sigmas
    plan = eval_plan(s.sampler, sigmas, s.guidance_mode, s.wfm_every)
    decoder = ["tiny_decoder"] if cfg.decoder == "tiny" else []
    if s.wfm_every == 1:
        return ["denoiser", *decoder]
    names = ["wfm", "unet"] if any(e.cfg for e in plan) else []
    return names + (["wfm_cond", "unet_cond"] if not all(e.cfg for e in plan) else []) + decoder


@dataclass(frozen=True)
class Eval:
    """One model evaluation of a solver loop."""

    sigma: float
    cfg: bool  # both CFG rows (else the conditional rows only)
    wfm: bool  # run the WFM (else reuse the outputs of the last evaluation that ran it)


def eval_plan(sampler: str, sigmas: torch.Tensor, guidance: str, wfm_every: int) -> list[Eval]:
    """Every model evaluation of one solver loop, in order.

    The WFM runs at evaluations 0, k, 2k, ... and whenever the cached outputs lack rows the
    evaluation needs (a CFG evaluation after conditional-only ones). Guidance follows the sigma
    interval of the strategy (engine.diffusion.guidance)."""
    levels = sampling.eval_sigmas(sampler, sigmas)
    cfg = Guidance.parse(guidance).plan(levels, sigmas)
    plan: list[Eval] = []
    cached_cfg: bool | None = None  # rows the cached WFM outputs hold (None: nothing cached)
    for i, (sigma, guided) in enumerate(zip(levels, cfg, strict=True)):
        run = i % wfm_every == 0 or cached_cfg is None or (guided and not cached_cfg)
        if run:
            cached_cfg = guided
        plan.append(Eval(sigma, guided, run))
    return plan
