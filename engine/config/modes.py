"""Named run modes: bundles of knob values, each a deliberate change of the computation.

    exact   the release: Euler on its Karras schedule, 25 steps, CFG every step, the WFM every
            step, windows overlapping by 6, exact attention. The default; reproduces the fixtures.
    fast    <= 56 TFLOP per output frame at 512^2 (>= 4x less than exact)
    turbo   <= 18 TFLOP per output frame at 512^2 (>= 12x less than exact)
    ultra   <= 3.3 TFLOP per output frame at 512^2 (a 4090's real-time budget): a distilled student
            and the tiny VAE decoder, both given to the engine (docs/distillation.md)

The knobs themselves are declared once, as the fields of ``RunConfig`` (below);
a mode only names values for some of them. ``RunOptions`` is what a caller gives (a mode and any
knob as an override); ``resolve`` turns it into the run's ``RunConfig``, once per run. The work each
mode does is counted by ``benchmarks/count_flops.py --mode NAME``, its drift from exact measured by
``benchmarks/bench_modes.py``; see docs/modes.md.

``RunPlan`` is the one place that decides, per model evaluation, whether CFG runs and whether the
WFM runs or its last outputs are reused: computed once per run, the runtime follows it and the cost
model counts it.
"""

from __future__ import annotations

import typing
from dataclasses import Field, asdict, dataclass, field, replace
from types import MappingProxyType
from typing import Any

import torch

from engine.config.controls import CONTROL_NAMES, MotionControls
from engine.config.knobs import Knob, base_type, knob, knob_fields
from engine.config.settings import DECODERS, KV_FACTORS, SEED_MAX, SVD_XT_SCHEDULER
from engine.diffusion import sampling
from engine.diffusion.guidance import Guidance
from engine.errors import InputError


@dataclass(frozen=True)
class RunConfig:
    """One run's knobs, each declared once (name, type, default = the release's, limits, help).

    ``mode`` records which bundle of knobs (engine.config.modes) the values came from; nothing reads it
    back. Front ends derive their options from these fields: see the module docstring."""

    mode: str = "exact"
    sampler: str = knob("euler", "solver (distilled: a student's own loop, the engine needs --student)",
                        choices=tuple(sampling.SAMPLERS), serve=True)
    schedule: str | None = knob(None, "noise schedule (None: the sampler's own: euler release, ddim leading)",
                                choices=sampling.SCHEDULES)
    steps: int = knob(25, "denoising steps", lo=1, serve=True)
    guidance: float = knob(2.5, "classifier-free guidance scale", serve=True)
    min_guidance: float | None = knob(None, "guidance of the last frame when it ramps over the frames "
                                            "(the release's linspace(min, max) flipped); None: no ramp",
                                      cli=False)
    guidance_mode: str = knob("full", "when CFG runs: full | none | first:K | interval:LO:HI",
                              parse=Guidance.parse)
    wfm_every: int = knob(1, "run the Warping Feature Mapper every k-th evaluation, reuse its outputs "
                             "in between", lo=1)
    overlap: int = knob(6, "window overlap in frames", lo=1, hi=13)
    kv_downsample: int = knob(1, "2: 2x2-pooled keys/values in the WFM's full attentions, 4x less attention "
                                 "(torch only)", choices=KV_FACTORS)
    decoder: str = knob("full", "tiny: the TAESD decoder the engine was given (--tiny-decoder)", choices=DECODERS)
    seed: int = knob(0, "the run's noise draws", lo=0, hi=SEED_MAX, serve=True)
    relative_motion: bool = knob(True, "False: self-reenactment (absolute driving motion)", cli=False)
    # smoothing and motion controls (engine.config.controls), checked there; a stream may change them
    controls: MotionControls = field(default_factory=MotionControls)

    @property
    def schedule_name(self) -> str:
        return self.schedule or sampling.DEFAULT_SCHEDULE[self.sampler]

    @property
    def guidance_range(self) -> tuple[float, float]:
        """(min, max) of the per-frame guidance ramp."""
        return (self.guidance if self.min_guidance is None else self.min_guidance), self.guidance


KNOB_NAMES = tuple(f.name for f, _ in knob_fields(RunConfig))
# every knob of a run, one declaration each: RunConfig's own, then its nested motion controls' (flat names)
RUN_KNOBS: tuple[tuple[Field, Knob], ...] = (*knob_fields(RunConfig), *knob_fields(MotionControls))
OPTION_NAMES = tuple(f.name for f, _ in RUN_KNOBS)  # what RunOptions takes besides the mode

MODES: dict[str, RunConfig] = {
    "exact": RunConfig(),  # RunConfig's defaults are the release's
    # 10 DPM-Solver++(2M) steps on the release's schedule; CFG for the first half (where it shapes the
    # motion), the WFM on every 2nd evaluation; the release's windows (seams unchanged)
    "fast": RunConfig(mode="fast", sampler="dpmpp_2m", schedule="release", steps=10, guidance_mode="first:5",
                      wfm_every=2),
    # 4 steps, no CFG, the WFM on every 2nd evaluation, windows overlapping by 2 (9 instead of 12 per 100 frames)
    "turbo": RunConfig(mode="turbo", sampler="dpmpp_2m", schedule="release", steps=4, guidance_mode="none",
                       wfm_every=2, overlap=2),
    # <= 3.3 TFLOP/frame: a 1-step distilled student (CFG baked in), windows overlapping by 1, pooled keys/values,
    # the tiny VAE decoder; the engine needs a student and a tiny decoder (docs/distillation.md)
    "ultra": RunConfig(mode="ultra", sampler="distilled", steps=1, guidance_mode="none", overlap=1, kv_downsample=2,
                       decoder="tiny"),
}


def resolve(mode: str = "exact", **overrides: Any) -> RunConfig:
    """The mode's knobs with every non-None override applied, each checked against its declaration
    (a ValueError naming the knob)."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    unknown = set(overrides) - set(OPTION_NAMES)
    if unknown:
        raise ValueError(f"unknown knobs {sorted(unknown)}; knobs are {', '.join(OPTION_NAMES)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    run = replace(MODES[mode], **{k: v for k, v in given.items() if k in KNOB_NAMES})
    run = replace(run, **{f.name: k.check(f.name, getattr(run, f.name)) for f, k in knob_fields(RunConfig)})
    controls = replace(run.controls, **{k: v for k, v in given.items() if k in CONTROL_NAMES})
    controls.check(run.relative_motion)  # an InputError naming the control
    return replace(run, controls=controls)


class RunOptions:
    """One render's or stream's choices: ``mode`` (exact | fast | turbo | ultra) and any knob of ``RunConfig``
    or of its motion controls as a keyword (``RunOptions(steps=4, seed=3, lock_pose=True)``); a knob given
    overrides the mode's value, None or absent means the mode's value. ``controls=MotionControls(...)``
    gives every control at once. Immutable; ``resolve()`` gives the run's ``RunConfig``."""

    __slots__ = ("_given", "mode")
    mode: str
    _given: MappingProxyType[str, Any]

    def __init__(self, mode: str = "exact", **knobs: Any) -> None:
        controls = knobs.pop("controls", None)
        if controls is not None:  # every control of a MotionControls (or of its JSON form) given
            every = asdict(controls) if isinstance(controls, MotionControls) else dict(controls)
            knobs = {**every, **{k: v for k, v in knobs.items() if v is not None}}
        unknown = sorted(set(knobs) - set(OPTION_NAMES))
        if unknown:
            raise TypeError(f"unknown run options {unknown}; the knobs are {', '.join(OPTION_NAMES)}")
        object.__setattr__(self, "mode", mode)
        object.__setattr__(self, "_given", MappingProxyType({k: v for k, v in knobs.items() if v is not None}))

    def __getattr__(self, name: str) -> Any:
        if name in OPTION_NAMES:
            return self._given.get(name)  # None: the mode's value
        raise AttributeError(name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("RunOptions is immutable: use .replace(...)")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunOptions) and (self.mode, dict(self._given)) == (other.mode, dict(other._given))

    def __hash__(self) -> int:
        return hash((self.mode, tuple(sorted(self._given.items()))))

    def __repr__(self) -> str:
        return "RunOptions(" + ", ".join(f"{k}={v!r}" for k, v in self.to_json().items()) + ")"

    @property
    def controls(self) -> MotionControls:
        """The motion controls these options give, the others at their defaults (no mode sets any)."""
        return MotionControls(**{k: v for k, v in self._given.items() if k in CONTROL_NAMES})

    def knobs(self) -> dict[str, Any]:
        """The knobs given explicitly."""
        return dict(self._given)

    @staticmethod
    def types() -> dict[str, type]:
        """Every keyword RunOptions takes -> its scalar type (``int | None`` -> int), for front ends that
        convert text (manifests, forms)."""
        hints = {**typing.get_type_hints(RunConfig), **typing.get_type_hints(MotionControls)}
        return {"mode": str, **{name: base_type(hints[name]) for name in OPTION_NAMES}}

    def replace(self, **changes: Any) -> RunOptions:
        values = {"mode": self.mode, **self._given, **changes}
        return RunOptions(**values)

    def resolve(self) -> RunConfig:
        """The run's configuration; a bad value is one InputError naming it."""
        try:
            return resolve(self.mode, **self._given)
        except ValueError as err:
            raise InputError(str(err)) from None

    def check(self) -> None:
        self.resolve()

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, **self._given}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunOptions:
        return cls(**data)


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


@dataclass(frozen=True)
class RunPlan:
    """What one run's solver loop does, computed once per run: its schedule and every evaluation."""

    schedule: sampling.Schedule
    evals: tuple[Eval, ...]
    split: bool  # WFM and UNet as separate graphs, the WFM's outputs cached for reuse (wfm_every > 1)
    tiny_decoder: bool = False  # decode with the engine's TAESD decoder (``decoder="tiny"``)

    @classmethod
    def of(cls, run: RunConfig, scheduler: dict[str, Any] | None = None) -> RunPlan:
        """``scheduler``: the engine's trained noise schedule (default: SVD-xt's)."""
        schedule = sampling.make_schedule(run.sampler, run.steps, scheduler or SVD_XT_SCHEDULER, run.schedule)
        evals = tuple(eval_plan(run.sampler, schedule.sigmas, run.guidance_mode, run.wfm_every))
        return cls(schedule, evals, split=run.wfm_every > 1, tiny_decoder=run.decoder == "tiny")

    @property
    def graphs(self) -> list[str]:
        """The graphs of the run's denoise and decode steps that an engine may lack (``denoiser_cond`` is
        optional: pairs stand in for it)."""
        decoder = ["tiny_decoder"] if self.tiny_decoder else []
        if not self.split:
            return ["denoiser", *decoder]
        names = ["wfm", "unet"] if any(e.cfg for e in self.evals) else []
        return names + (["wfm_cond", "unet_cond"] if not all(e.cfg for e in self.evals) else []) + decoder


def required_graphs(run: RunConfig, scheduler: dict[str, Any] | None = None) -> list[str]:
    """The denoiser graphs a run needs (see ``RunPlan.graphs``)."""
    return RunPlan.of(run, scheduler).graphs
