"""Trajectory distillation where the answer is known: Gaussian data N(mu, C) has the linear ideal
denoiser D(x, s) = mu + C (C + s^2 I)^-1 (x - mu) and the probability-flow ODE's endpoint in closed
form, x(0) = mu + C^1/2 (C + s_T^2 I)^-1/2 (x_T - mu). A K-step student (linear per step, initialised
from the teacher's denoiser, trained with ``engine.distill.objective.step_loss`` on the teacher's
recorded trajectory) must land on that endpoint within 2e-3 (relative), far better than K steps of
any plain solver."""

from __future__ import annotations

import pytest
import torch

from engine.config.settings import SVD_XT_SCHEDULER
from engine.diffusion import sampling
from engine.distill.objective import step_loss

D, F64 = 8, torch.float64
TOL = 2e-3  # relative endpoint error; the teacher's own trajectory (Heun, 8 substeps) is at 6.5e-4


def _gaussian() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(D, D, generator=gen, dtype=F64))
    variances = torch.rand(D, generator=gen, dtype=F64) * 2 + 0.2
    return (q * variances) @ q.T, torch.randn(D, generator=gen, dtype=F64)


@pytest.mark.parametrize("k", [1, 2, 4])
@torch.enable_grad()  # an in-process CLI test may have switched gradients off process-wide
def test_student_lands_on_ode_endpoint(k: int) -> None:
    cov, mu = _gaussian()
    eye = torch.eye(D, dtype=F64)

    def gain(sigma: float) -> torch.Tensor:
        return cov @ torch.linalg.inv(cov + sigma**2 * eye)

    def teacher(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return (x.double() - mu) @ gain(float(sigma)).T + mu

    def endpoint(x_t: torch.Tensor, sigma_t: float) -> torch.Tensor:
        ev, vec = torch.linalg.eigh(cov)
        return (x_t - mu) @ ((vec * torch.sqrt(ev / (ev + sigma_t**2))) @ vec.T).T + mu

    sigmas = sampling.student_schedule(k, SVD_XT_SCHEDULER).sigmas.double()
    grid = sampling.karras_schedule(sampling.TEACHER_STEPS, SVD_XT_SCHEDULER).sigmas.double()
    gen = torch.Generator().manual_seed(k)
    x_t = torch.randn(512, D, generator=gen, dtype=F64) * float(sigmas[0])
    traj = [t.double() for t in sampling.teacher_trajectory(teacher, x_t, grid, sampling.student_indices(k), "heun",
                                                             substeps=8)]

    # the student: D_k(x) = A_k x / sqrt(s_k^2 + 1) + b_k, initialised from the teacher's denoiser at s_k
    c_in = [(float(s) ** 2 + 1) ** -0.5 for s in sigmas[:-1]]
    a = [(gain(float(s)) / c).clone().requires_grad_() for s, c in zip(sigmas[:-1], c_in, strict=True)]
    b = [((eye - gain(float(s))) @ mu).clone().requires_grad_() for s in sigmas[:-1]]
    opt = torch.optim.Adam(a + b, lr=3e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 400)
    for _ in range(400):
        loss = sum(step_loss(traj[i] * c_in[i] @ a[i].T + b[i], traj[i], traj[i + 1], sigmas[i], sigmas[i + 1])
                   for i in range(k))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()

    @torch.no_grad()
    def student(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        i = int((sigmas[:-1] == sigma).nonzero()[0])
        return x.double() * c_in[i] @ a[i].T + b[i]

    x_new = torch.randn(256, D, generator=gen, dtype=F64) * float(sigmas[0])  # held out: never trained on
    ref = endpoint(x_new, float(sigmas[0]))

    def error(x0: torch.Tensor) -> float:
        return float((x0.double() - ref).norm(dim=1).mean() / (ref - mu).norm(dim=1).mean())

    got = error(sampling.sample_distilled(student, x_new, sigmas))
    assert got < TOL, got
    for solver in ("euler", "ddim", "dpmpp_2m"):  # K plain steps of the teacher on its own schedule
        plain = error(sampling.SAMPLERS[solver](teacher, x_new, sampling.make_schedule(solver, k, SVD_XT_SCHEDULER,
                                                                                         "release").sigmas))
        assert plain > 50 * got, (solver, plain, got)


def test_student_schedule_is_a_subset_of_the_teachers() -> None:
    grid = sampling.karras_schedule(25, SVD_XT_SCHEDULER)
    for k, idx in ((1, [0, 25]), (2, [0, 12, 25]), (4, [0, 6, 12, 19, 25])):
        assert sampling.student_indices(k) == idx
        s = sampling.student_schedule(k, SVD_XT_SCHEDULER)
        assert torch.equal(s.sigmas, grid.sigmas[idx]) and torch.equal(s.timesteps, grid.timesteps[idx[:-1]])
    # the target makes one DDIM step land exactly on the next point
    x, x_next = torch.randn(5), torch.randn(5)
    target = sampling.trajectory_target(x, x_next, torch.tensor(3.0), torch.tensor(1.0))
    assert torch.allclose(target + (1.0 / 3.0) * (x - target), x_next)
