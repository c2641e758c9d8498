"""Noise schedules and samplers as pure functions (k-diffusion style).

The denoiser is SVD's v-prediction model in the variance-exploding parametrisation
x = x0 + sigma * eps; its input is scaled by 1/sqrt(sigma^2 + 1) and it is conditioned on
c_noise = 0.25 * ln(sigma). A sampler is a whole loop ``sample_X(model_fn, x, sigmas, callback)``
over a ``model_fn(x, sigma) -> denoised`` that the runtime builds (window blending and guidance
inside); no step counter lives anywhere else, so the same model_fn serves every solver.

Schedules and solvers are chosen separately (``make_schedule(sampler, steps, cfg, schedule)``):

    release   Karras sigmas (rho 7) between the scheduler config's sigma_min/sigma_max
              (SVD-xt: 0.002 .. 700), diffusers' EulerDiscreteScheduler; the release's schedule
    karras    Karras sigmas (rho 7) between the smallest and largest *training* noise levels
              (0.029 .. 14.6 for SVD's betas), as k-diffusion and diffusers' DPM-Solver use them
    leading   the DDPM training noise levels at 'leading'-spaced timesteps (the paper's DDIM)
    student   K of the release schedule's 25 sigmas (``student_indices``): where a distilled student
              was trained to land on the teacher's trajectory (docs/distillation.md)

The ``distilled`` sampler is the student's own loop (deterministic DDIM steps between its K sigmas);
``teacher_trajectory`` and ``trajectory_target`` give what it is trained on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class Schedule:
    sigmas: torch.Tensor  # [steps + 1] float32, decreasing, ending in 0
    timesteps: torch.Tensor  # [steps] float32, what the networks are conditioned on

    @property
    def init_noise_sigma(self) -> torch.Tensor:
        # sqrt(sigma_max^2 + 1) in float32, as diffusers' 'leading'-spaced Euler scheduler returns it
        return (self.sigmas.max() ** 2 + 1) ** 0.5


def _train_sigmas(cfg: dict[str, Any]) -> np.ndarray:
    if cfg.get("beta_schedule", "scaled_linear") != "scaled_linear":
        raise ValueError(f"unsupported beta_schedule {cfg.get('beta_schedule')!r}")
    n = int(cfg["num_train_timesteps"])
    betas = np.linspace(cfg["beta_start"] ** 0.5, cfg["beta_end"] ** 0.5, n, dtype=np.float32) ** 2
    alphas_cumprod = np.cumprod(1.0 - betas, axis=0)
    return ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5


def _karras(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Schedule:
    if steps < 1:
        raise ValueError("steps must be >= 1")
    ramp = np.linspace(0, 1, steps)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    timesteps = np.array([0.25 * np.log(s) for s in sigmas])
    sigmas_t = torch.cat([torch.from_numpy(sigmas).float(), torch.zeros(1)])
    return Schedule(sigmas=sigmas_t, timesteps=torch.from_numpy(timesteps).float())


def karras_schedule(steps: int, cfg: dict[str, Any], rho: float = 7.0) -> Schedule:
    """The release's schedule (SVD-xt's Euler): Karras sigmas between the config's sigma_min and
    sigma_max (the training range where the config gives none), then 0."""
    train = _train_sigmas(cfg)
    return _karras(steps, cfg.get("sigma_min") or float(train[0]), cfg.get("sigma_max") or float(train[-1]), rho)


def karras_train_schedule(steps: int, cfg: dict[str, Any], rho: float = 7.0) -> Schedule:
    """Karras sigmas over the training noise levels (k-diffusion's ``get_sigmas_karras(n,
    model.sigma_min, model.sigma_max)``, diffusers' ``use_karras_sigmas`` for DPM-Solver)."""
    train = _train_sigmas(cfg)
    return _karras(steps, float(train[0]), float(train[-1]), rho)


def ddim_schedule(steps: int, cfg: dict[str, Any]) -> Schedule:
    """DDIM's schedule: the training noise levels at 'leading'-spaced timesteps, then 0."""
    if steps < 1:
        raise ValueError("steps must be >= 1")
    train = _train_sigmas(cfg)
    n = int(cfg["num_train_timesteps"])
    ratio = n // steps
    ts = (np.arange(0, steps) * ratio).round()[::-1].astype(np.int64) + int(cfg.get("steps_offset", 0))
    ts = np.clip(ts, 0, n - 1)
    sigmas = train[ts].astype(np.float64)
    timesteps = 0.25 * np.log(sigmas)
    sigmas_t = torch.cat([torch.from_numpy(sigmas).float(), torch.zeros(1)])
    return Schedule(sigmas=sigmas_t, timesteps=torch.from_numpy(timesteps).float())


TEACHER_STEPS = 25  # the release's Euler steps: the grid a student's sigmas are taken from


def student_indices(steps: int, teacher_steps: int = TEACHER_STEPS) -> list[int]:
    """Which of the teacher's ``teacher_steps + 1`` sigmas (the last is 0) a K-step student runs at:
    evenly spaced indices (K = 1: [0, 25], 2: [0, 12, 25], 4: [0, 6, 12, 19, 25])."""
    if not 1 <= steps <= teacher_steps:
        raise ValueError(f"a student takes 1 .. {teacher_steps} steps, got {steps}")
    return [int(i) for i in np.round(np.linspace(0, teacher_steps, steps + 1))]


def student_schedule(steps: int, cfg: dict[str, Any]) -> Schedule:
    """The release schedule's sigmas (and timesteps) at ``student_indices(steps)``."""
    teacher = karras_schedule(TEACHER_STEPS, cfg)
    idx = student_indices(steps)
    return Schedule(sigmas=teacher.sigmas[idx], timesteps=teacher.timesteps[idx[:-1]])


SCHEDULES: dict[str, Callable[[int, dict[str, Any]], Schedule]] = {
    "release": karras_schedule,
    "karras": karras_train_schedule,
    "leading": ddim_schedule,
    "student": student_schedule,
}
# the schedule each solver gets when none is named: the release's Euler keeps its own, DDIM the paper's
DEFAULT_SCHEDULE = {"euler": "release", "heun": "release", "dpmpp_2m": "release", "ddim": "leading",
                    "distilled": "student"}


def make_schedule(sampler: str, steps: int, cfg: dict[str, Any], schedule: str | None = None) -> Schedule:
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    name = schedule or DEFAULT_SCHEDULE[sampler]
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    return SCHEDULES[name](steps, cfg)


def v_to_x0(model_output: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Denoised estimate from a v-prediction (computed in float32 as the release does)."""
    return model_output * (-sigma / (sigma**2 + 1) ** 0.5) + (x / (sigma**2 + 1))


ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, sigma) -> denoised x0
Callback = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None]  # (step, x, sigma, denoised)


def sample_euler(model_fn: ModelFn, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback | None = None
                 ) -> torch.Tensor:
    """Euler steps of the probability-flow ODE (s_churn = 0), the release's sampler.

    The arithmetic is diffusers' EulerDiscreteScheduler's, in float32: d = (x - x0) / sigma,
    x <- x + d * (sigma_next - sigma).
    """
    x = x.float()
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model_fn(x, sigma).float()
        derivative = (x - denoised) / sigma
        x = x + derivative * (sigma_next - sigma)
        if callback is not None:
            callback(i, x, sigma, denoised)
    return x


def sample_heun(model_fn: ModelFn, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback | None = None
                ) -> torch.Tensor:
    """Heun's second-order method (Karras et al. 2022, Alg. 1, s_churn = 0; k-diffusion's
    ``sample_heun``): an Euler predictor to sigma_next, corrected with the slope there; the last
    step (to sigma = 0) stays Euler. 2 * steps - 1 model evaluations."""
    x = x.float()
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model_fn(x, sigma).float()
        d = (x - denoised) / sigma
        dt = sigma_next - sigma
        if sigma_next == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = (x_2 - model_fn(x_2, sigma_next).float()) / sigma_next
            x = x + (d + d_2) / 2 * dt
        if callback is not None:
            callback(i, x, sigma, denoised)
    return x


def sample_dpmpp_2m(model_fn: ModelFn, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback | None = None
                    ) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022; k-diffusion's ``sample_dpmpp_2m``): a multistep
    second-order solver in t = -ln(sigma), first order on the first step and on the last (to 0)."""
    x = x.float()
    old_denoised: torch.Tensor | None = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model_fn(x, sigma).float()
        if sigma_next == 0:
            x = denoised  # the exponential integrator's limit: exp(-h) -> 0
        else:
            t, t_next = -sigma.log(), -sigma_next.log()
            h = t_next - t
            if old_denoised is None:
                estimate = denoised
            else:
                r = (t - (-sigmas[i - 1].log())) / h
                estimate = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (sigma_next / sigma) * x - torch.expm1(-h) * estimate
        old_denoised = denoised
        if callback is not None:
            callback(i, x, sigma, denoised)
    return x


def sample_ddim(model_fn: ModelFn, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback | None = None
                ) -> torch.Tensor:
    """Deterministic DDIM (eta = 0): re-noise each x0 estimate with the current eps to sigma_next.

    In this parametrisation DDIM and Euler agree step for step (Karras et al. 2022, sec. 4);
    what the 'ddim' sampler changes is the schedule (``ddim_schedule``).
    """
    x = x.float()
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model_fn(x, sigma).float()
        eps = (x - denoised) / sigma
        x = denoised + eps * sigma_next
        if callback is not None:
            callback(i, x, sigma, denoised)
    return x


def sample_distilled(model_fn: ModelFn, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback | None = None
                     ) -> torch.Tensor:
    """A trajectory-distilled student's K steps (docs/distillation.md): x <- D + (sigma_next / sigma)
    (x - D), the deterministic DDIM step, with the student's D trained so that each step lands on the
    teacher's trajectory at sigma_next (``trajectory_target``). No guidance: it is baked in."""
    x = x.float()
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model_fn(x, sigma).float()
        x = denoised + (sigma_next / sigma) * (x - denoised)
        if callback is not None:
            callback(i, x, sigma, denoised)
    return x


def trajectory_target(x: torch.Tensor, x_next: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor
                      ) -> torch.Tensor:
    """The denoised value D for which the student's step from (x, sigma) lands exactly on x_next:
    x_next = D + r (x - D), r = sigma_next / sigma, so D = (x_next - r x) / (1 - r)."""
    r = sigma_next / sigma
    return (x_next - r * x) / (1 - r)


def teacher_trajectory(model_fn: ModelFn, x: torch.Tensor, sigmas: torch.Tensor, keep: list[int],
                       sampler: str = "euler", substeps: int = 1) -> list[torch.Tensor]:
    """Run the teacher's solver over ``sigmas`` (each interval split into ``substeps`` Karras-spaced
    sub-intervals, 1: the teacher's own steps) and return x at the sigma indices ``keep``."""
    fine = _refine(sigmas, substeps)
    kept: dict[int, torch.Tensor] = {0: x.float()} if 0 in keep else {}

    def record(i: int, x_i: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> None:
        if (i + 1) % substeps == 0 and (i + 1) // substeps in keep:
            kept[(i + 1) // substeps] = x_i

    SAMPLERS[sampler](model_fn, x, fine, callback=record)
    return [kept[k] for k in keep]


def _refine(sigmas: torch.Tensor, substeps: int) -> torch.Tensor:
    if substeps == 1:
        return sigmas
    out = []
    for a, b in zip(sigmas[:-1].tolist(), sigmas[1:].tolist(), strict=True):
        if b > 0:  # rho-7 spacing inside the interval, as the Karras grid itself
            lo, hi = b ** (1 / 7), a ** (1 / 7)
            out += [(hi + j / substeps * (lo - hi)) ** 7 for j in range(substeps)]
        else:  # the last interval ends at 0: geometric down to a small sigma, then 0
            out += list(np.geomspace(a, a * 1e-3, substeps))
    return torch.tensor([*out, 0.0], dtype=torch.float32)


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "euler": sample_euler, "heun": sample_heun, "dpmpp_2m": sample_dpmpp_2m, "ddim": sample_ddim,
    "distilled": sample_distilled,
}


def eval_sigmas(sampler: str, sigmas: torch.Tensor) -> list[float]:
    """The noise level of every model evaluation a solver makes, in order (its NFE sequence):
    what the runtime's per-evaluation plan (guidance, WFM reuse) and the cost model count."""
    levels = [float(s) for s in sigmas[:-1]]
    if sampler != "heun":
        return levels
    out: list[float] = []
    for i, s in enumerate(levels):
        out.append(s)
        if float(sigmas[i + 1]) > 0:
            out.append(float(sigmas[i + 1]))  # the corrector's evaluation at sigma_next
    return out
