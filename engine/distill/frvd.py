"""Trajectory distillation of FRVD (docs/distillation.md): teacher trajectories recorded by the
engine's own exact run, the student's conditional-row forward with gradients, and the held-out drift
of the student against undistilled modes of equal work.

An example is one window (14 driving frames) of one (source, driving clip, seed): the runtime blends
windows, so a student that lands on the teacher's trajectory per window does so for a whole clip.
The student's HeadNet is the teacher's, frozen (the student file carries it, so a later run that
trains it needs no format change); the WFM and the UNet are trained.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from engine.config import modes
from engine.config.modes import RunConfig, RunPlan
from engine.diffusion import sampling
from engine.distill.objective import step_loss
from engine.graphs.mode_modules import DenoiserCondGraph
from engine.runtime import ExactRun, Noise
from engine.runtime.common import HeadStore, timestep_for
from engine.runtime.stages import RunConditioning, SourceFeatures, WindowInput, to_uint8


@dataclass(frozen=True)
class Example:
    """One training or held-out example: a window of driving frames, a source, a seed."""

    source: SourceFeatures
    frames: np.ndarray  # uint8 [T, H, W, 3]
    seed: int


@dataclass
class Prepared:
    cond: RunConditioning
    heads: HeadStore
    x_init: torch.Tensor  # [T, 4, h, w] initial latents (sigma_max * the run's noise)
    run: ExactRun


def knob_cfg(engine, mode: str, **knobs: object) -> RunConfig:
    """The RunConfig of ``mode`` with ``knobs``, without the API's student checks (training evaluates the
    teacher's networks in the student's schedule and vice versa)."""
    return modes.resolve(mode, **knobs)


def prepare(engine, cfg: RunConfig, ex: Example) -> Prepared:
    noise = Noise.draw(ex.seed, engine.cfg.size, engine.cfg.windows.size)
    run = ExactRun(engine.stages, replace(cfg, seed=ex.seed), ex.source, iter(ex.frames), noise)
    cond = engine.stages.source.conditioning(ex.source, noise.aug)
    heads = run.encode_motion()
    assert run.plan is not None
    x_init = noise.initial_latents(range(heads.count), run.plan.schedule)
    return Prepared(cond, heads, x_init, run)


@torch.no_grad()
def solve(engine, cfg: RunConfig, prep: Prepared, keep: list[int] | None = None) -> list[torch.Tensor]:
    """Run ``cfg``'s sampler from the prepared start; x at the schedule indices ``keep`` (default: the end)."""
    run = replace(prep.run, run=cfg, plan=RunPlan.of(cfg, engine.cfg.scheduler))
    assert run.plan is not None
    schedule = run.plan.schedule
    model_fn = run.model_fn(prep.cond, prep.heads)
    keep = keep if keep is not None else [len(schedule.sigmas) - 1]
    return sampling.teacher_trajectory(model_fn, prep.x_init, schedule.sigmas, keep, cfg.sampler)


def teacher_trajectory(teacher, ex: Example, k: int) -> list[torch.Tensor]:
    """The teacher's exact-mode latents at the K-step student's sigmas (x_0 = the initial noise)."""
    cfg = knob_cfg(teacher, "exact")
    return solve(teacher, cfg, prepare(teacher, cfg, ex), sampling.student_indices(k, cfg.steps))


def student_denoised(student, cfg: RunConfig, prep: Prepared, x: torch.Tensor, sigma: torch.Tensor,
                     graph: DenoiserCondGraph) -> torch.Tensor:
    """D(x, sigma) of the student's conditional row over one window, with gradients (``graph``: the
    student's conditional-row graph, with pooled keys/values when the run's ``kv_downsample`` says so)."""
    schedule = sampling.make_schedule("distilled", cfg.steps, student.cfg.scheduler)
    item = WindowInput(x, sigma, timestep_for(schedule, sigma), prep.heads.gather(list(range(x.shape[0]))))
    feeds = student.stages.denoise._fill([item], prep.cond, pairs=False)
    spec = student.backend["denoiser_cond"].spec
    unet_out, infofill = graph(*[feeds[n] for n in spec.input_names])
    return sampling.v_to_x0((unet_out + infofill)[0].float(), x, sigma)


@torch.enable_grad()  # whatever the caller's mode (a CLI may have switched gradients off process-wide)
def train_step(student, cfg: RunConfig, prep: Prepared, traj: list[torch.Tensor], graph: DenoiserCondGraph,
               scale: float = 1.0) -> float:
    """Backward of every student step's loss times ``scale`` (teacher-forced: each step starts at the
    teacher's x_k); gradients accumulate in the student's parameters. Returns the summed loss (unscaled)."""
    sigmas = sampling.make_schedule("distilled", cfg.steps, student.cfg.scheduler).sigmas
    total = 0.0
    for i in range(len(sigmas) - 1):
        denoised = student_denoised(student, cfg, prep, traj[i], sigmas[i], graph)
        loss = step_loss(denoised, traj[i], traj[i + 1], sigmas[i], sigmas[i + 1])
        (loss * scale).backward()  # per step: the denoise stage's input buffers are reused by the next forward
        total += float(loss.detach())
    return total


def decode_u8(engine, latents: torch.Tensor, tiny: bool = False) -> np.ndarray:
    return to_uint8(engine.stages.decode(latents, tiny=tiny))


def psnr_u8(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def rel_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x - ref).norm() / ref.norm())


def equal_work_modes(k: int) -> dict[str, dict[str, object]]:
    """Undistilled runs of the teacher with the student's work (K conditional-row evaluations per window),
    and one with CFG (2K rows) for reference."""
    return {
        f"euler {k} steps, no CFG": {"sampler": "euler", "schedule": "release", "steps": k, "guidance_mode": "none"},
        f"dpmpp_2m {k} steps, no CFG": {"sampler": "dpmpp_2m", "schedule": "release", "steps": k,
                                       "guidance_mode": "none"},
        f"dpmpp_2m {k} steps, CFG (2x work)": {"sampler": "dpmpp_2m", "schedule": "release", "steps": k,
                                              "guidance_mode": "full"},
    }


@torch.no_grad()
def drift_rows(teacher, student, k: int, kv: int, holdout: list[Example]) -> list[dict[str, object]]:
    """Per held-out example and run: PSNR of uint8 frames and relative error of the final latents vs the
    teacher's exact result (the teacher's own K-step runs use its networks; the student its own)."""
    rows = []
    for ex in holdout:
        exact_cfg = knob_cfg(teacher, "exact")
        ref = solve(teacher, exact_cfg, prepare(teacher, exact_cfg, ex))[0]
        ref_u8 = decode_u8(teacher, ref)
        runs: dict[str, tuple] = {}
        scfg = knob_cfg(student, "exact", sampler="distilled", steps=k, guidance_mode="none", kv_downsample=kv)
        runs[f"student K={k}"] = (student, scfg)
        for name, knobs in equal_work_modes(k).items():
            runs[name] = (teacher, knob_cfg(teacher, "exact", kv_downsample=kv, **knobs))
        for name, (engine, cfg) in runs.items():
            out = solve(engine, cfg, prepare(engine, cfg, ex))[0]
            rows.append({"example": f"seed {ex.seed}", "run": name, "k": k, "kv_downsample": kv,
                         "psnr_u8": psnr_u8(decode_u8(teacher, out), ref_u8), "latent_rel_error": rel_error(out, ref)})
    return rows
