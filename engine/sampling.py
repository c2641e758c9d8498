"""Noise schedules and samplers as pure functions (k-diffusion style).

The denoiser is SVD's v-prediction model in the variance-exploding parametrisation
x = x0 + sigma * eps; its input is scaled by 1/sqrt(sigma^2 + 1) and it is conditioned on
c_noise = 0.25 * ln(sigma). A sampler is a whole loop ``sample_X(model_fn, x, sigmas, callback)``
over a ``model_fn(x, sigma) -> denoised`` that the runtime builds (window blending and guidance
inside); no step counter lives anywhere else, so the same model_fn serves every solver.
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


def karras_schedule(steps: int, cfg: dict[str, Any], rho: float = 7.0) -> Schedule:
    """SVD-xt's Euler schedule: Karras sigmas between sigma_min and sigma_max, then 0."""
    if steps < 1:
        raise ValueError("steps must be >= 1")
    train = _train_sigmas(cfg)
    sigma_min = cfg.get("sigma_min") or float(train[0])
    sigma_max = cfg.get("sigma_max") or float(train[-1])
    ramp = np.linspace(0, 1, steps)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    timesteps = np.array([0.25 * np.log(s) for s in sigmas])
    sigmas_t = torch.cat([torch.from_numpy(sigmas).float(), torch.zeros(1)])
    return Schedule(sigmas=sigmas_t, timesteps=torch.from_numpy(timesteps).float())


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


def make_schedule(sampler: str, steps: int, cfg: dict[str, Any]) -> Schedule:
    if sampler == "euler":
        return karras_schedule(steps, cfg)
    if sampler == "ddim":
        return ddim_schedule(steps, cfg)
    raise ValueError(f"unknown sampler {sampler!r}; choose 'euler' or 'ddim'")


def scale_model_input(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return x / ((sigma**2 + 1) ** 0.5)


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


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {"euler": sample_euler, "ddim": sample_ddim}

