"""Trajectory distillation's objective, shared by the closed-form check and the FRVD student.

The teacher (the release's 25 Euler steps with CFG 2.5) is run once per training example and its
latents recorded at the student's K sigmas (``sampling.student_indices``). Student step k starts at
the teacher's x_k (teacher forcing) and must land on x_{k+1}; its denoiser's target is
``sampling.trajectory_target``. The loss is measured where it matters, on x_{k+1}, relative to that
point's scale sqrt(sigma_{k+1}^2 + 1), so every step weighs alike whatever its noise level.
"""

from __future__ import annotations

import torch

from engine.diffusion import sampling


def step_loss(denoised: torch.Tensor, x: torch.Tensor, x_next: torch.Tensor, sigma: torch.Tensor,
              sigma_next: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the student's landing point x' = D + r (x - D) against the teacher's."""
    r = sigma_next / sigma
    landed = denoised + r * (x - denoised)
    return ((landed - x_next) ** 2).mean() / (sigma_next**2 + 1)


def targets(trajectory: list[torch.Tensor], sigmas: torch.Tensor) -> list[torch.Tensor]:
    """The denoised value each student step should output (for inspection and closed-form fits)."""
    return [sampling.trajectory_target(trajectory[k], trajectory[k + 1], sigmas[k], sigmas[k + 1])
            for k in range(len(sigmas) - 1)]
