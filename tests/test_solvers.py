"""Solvers and schedules against independent references: diffusers' schedulers step for step on
the same model outputs, and the exact solution of a toy probability-flow ODE."""

from __future__ import annotations

import pytest
import torch

from engine.config.settings import SVD_XT_SCHEDULER
from engine.diffusion import sampling


def _dpm_scheduler(steps: int):
    from diffusers import DPMSolverMultistepScheduler

    cfg = {k: v for k, v in SVD_XT_SCHEDULER.items() if k not in ("sigma_min", "sigma_max", "_class_name")}
    sch = DPMSolverMultistepScheduler.from_config(cfg, algorithm_type="dpmsolver++", solver_order=2,
                                                  use_karras_sigmas=True, final_sigmas_type="zero")
    sch.set_timesteps(steps)
    return sch


@pytest.mark.parametrize("steps", [4, 8, 25])
def test_karras_schedule_is_diffusers_dpm_solver_sigmas(steps: int) -> None:
    sch = _dpm_scheduler(steps)
    ours = sampling.make_schedule("dpmpp_2m", steps, SVD_XT_SCHEDULER, "karras")
    torch.testing.assert_close(ours.sigmas, sch.sigmas.float(), rtol=2e-6, atol=0)


@pytest.mark.parametrize("steps", [4, 12, 25])
def test_dpmpp_2m_matches_diffusers_step_for_step(steps: int) -> None:
    """Same sigmas, same v-predictions: diffusers works in the VP parametrisation
    (x_vp = x / sqrt(sigma^2 + 1)); every step's latent must agree to 1e-5 relative."""
    sch = _dpm_scheduler(steps)
    sigmas = sch.sigmas.float()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=gen) * (sigmas[0] ** 2 + 1) ** 0.5
    vs = [torch.randn(x.shape, generator=gen) for _ in range(steps)]
    calls = iter(vs)
    seen: list[torch.Tensor] = []
    sampling.sample_dpmpp_2m(lambda xi, s: sampling.v_to_x0(next(calls), xi, s), x.clone(), sigmas,
                             callback=lambda i, xi, s, d: seen.append(xi))
    x_vp = x.double() / (sigmas[0].double() ** 2 + 1) ** 0.5
    worst = 0.0
    for i, t in enumerate(sch.timesteps):
        x_vp = sch.step(vs[i].double(), t, x_vp, return_dict=False)[0]
        ref = x_vp * (sigmas[i + 1].double() ** 2 + 1) ** 0.5  # back to our VE parametrisation
        worst = max(worst, ((seen[i].double() - ref).abs().max() / ref.abs().max()).item())
    assert worst <= 1e-5, worst


def _gaussian_ode(s2: float):
    """Data ~ N(0, s2): the exact denoiser is x s2 / (s2 + sigma^2) and the probability-flow ODE's
    solution is x(sigma) = x(sigma0) sqrt((s2 + sigma^2) / (s2 + sigma0^2))."""

    def model_fn(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return x * s2 / (s2 + sigma.double() ** 2)

    def exact(x0: torch.Tensor, sigma0: float, sigma1: float) -> torch.Tensor:
        return x0 * ((s2 + sigma1**2) / (s2 + sigma0**2)) ** 0.5

    return model_fn, exact


def _solve(name: str, steps: int, model_fn, x: torch.Tensor, sigma_end: float) -> torch.Tensor:
    sigmas = torch.linspace(10.0, sigma_end, steps + 1, dtype=torch.float64)
    return sampling.SAMPLERS[name](model_fn, x, sigmas).double()


def test_heun_is_second_order_on_a_toy_ode() -> None:
    model_fn, exact = _gaussian_ode(0.25)
    x = torch.linspace(-3, 3, 7, dtype=torch.float64)
    ref = exact(x, 10.0, 0.5)
    # float32 latents (the samplers keep x in float32): compare above its rounding floor
    errs = {n: (_solve("heun", n, model_fn, x, 0.5) - ref).abs().max().item() for n in (16, 32)}
    euler = {n: (_solve("euler", n, model_fn, x, 0.5) - ref).abs().max().item() for n in (16, 32)}
    assert 3.5 < errs[16] / errs[32] < 4.5  # error ~ h^2 (measured 3.99)
    assert 1.5 < euler[16] / euler[32] < 2.5  # Euler's ~ h, for contrast
    assert errs[32] < euler[32] / 3


def test_heun_single_step_is_the_trapezoid_rule() -> None:
    model_fn, _ = _gaussian_ode(1.0)
    x = torch.tensor([1.5, -0.5])
    s0, s1 = torch.tensor(2.0), torch.tensor(1.0)
    d = (x - model_fn(x, s0)) / s0
    x2 = x + d * (s1 - s0)
    want = x + (d + (x2 - model_fn(x2, s1)) / s1) / 2 * (s1 - s0)
    got = sampling.sample_heun(model_fn, x, torch.stack([s0, s1]))
    torch.testing.assert_close(got, want.float())


def test_eval_sigmas_count_heun_corrector_calls() -> None:
    sigmas = torch.tensor([4.0, 2.0, 1.0, 0.0])
    assert sampling.eval_sigmas("euler", sigmas) == [4.0, 2.0, 1.0]
    assert sampling.eval_sigmas("heun", sigmas) == [4.0, 2.0, 2.0, 1.0, 1.0]
    seen: list[float] = []

    def model_fn(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        seen.append(float(sigma))
        return x * 0.5

    sampling.sample_heun(model_fn, torch.ones(2), sigmas)
    assert seen == sampling.eval_sigmas("heun", sigmas)


@pytest.mark.parametrize("name", ["euler", "heun", "dpmpp_2m", "ddim"])
def test_every_solver_converges_on_the_toy_ode(name: str) -> None:
    model_fn, exact = _gaussian_ode(0.25)
    x = torch.linspace(-3, 3, 7, dtype=torch.float64)
    got = _solve(name, 40, model_fn, x, 0.0)
    assert (got - exact(x, 10.0, 0.0)).abs().max() < 0.05


def test_schedules_are_chosen_separately_from_the_solver() -> None:
    a = sampling.make_schedule("heun", 6, SVD_XT_SCHEDULER, "leading")
    b = sampling.make_schedule("ddim", 6, SVD_XT_SCHEDULER)
    assert torch.equal(a.sigmas, b.sigmas)
    assert torch.equal(sampling.make_schedule("euler", 6, SVD_XT_SCHEDULER).sigmas,
                       sampling.karras_schedule(6, SVD_XT_SCHEDULER).sigmas)
    with pytest.raises(ValueError, match="schedule"):
        sampling.make_schedule("euler", 6, SVD_XT_SCHEDULER, "cosine")
