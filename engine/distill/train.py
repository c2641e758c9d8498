"""The two distillation loops behind ``python -m engine.distill``, with checkpoint/resume and a JSON-lines
log: ``student`` (engine.distill.frvd) and ``vae-decoder`` (engine.models.taesd, regression on the engine's
own VAE decoder over latents of face clips).

A checkpoint (``checkpoint.pt``: iteration, trainable weights, optimiser, RNG) is written to a temporary
file and renamed every ``save_every`` iterations and at the end; ``resume`` continues from it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.errors import InputError

CHECKPOINT = "checkpoint.pt"


def _save_checkpoint(out: Path, what: str, it: int, module: nn.Module, opt: torch.optim.Optimizer,
                     meta: dict[str, Any]) -> None:
    tmp = out / f".{CHECKPOINT}.partial"
    torch.save({"what": what, "iter": it, "model": module.state_dict(), "optim": opt.state_dict(),
                "rng": torch.get_rng_state(), "meta": meta}, tmp)
    tmp.replace(out / CHECKPOINT)


def _resume(out: Path, what: str, module: nn.Module, opt: torch.optim.Optimizer, meta: dict[str, Any]) -> int:
    path = out / CHECKPOINT
    if not path.exists():
        return 0
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - a damaged checkpoint is one clear error
        raise InputError(f"checkpoint {path} cannot be read ({type(err).__name__}): delete it to start over") from None
    if state.get("what") != what or state.get("meta") != meta:
        raise InputError(f"checkpoint {path} is from another run ({state.get('what')}, {state.get('meta')}): "
                         "use another --out or delete it to start over")
    module.load_state_dict(state["model"])
    opt.load_state_dict(state["optim"])
    torch.set_rng_state(state["rng"])
    return int(state["iter"])


def loop(out: Path, what: str, module: nn.Module, params: list[nn.Parameter], meta: dict[str, Any], iters: int,
         lr: float, step: Callable[[int], float], resume: bool, save_every: int,
         log: Callable[[str], None] = print) -> list[float]:
    """``step(iteration)`` computes the loss and its gradients; the loop owns the optimiser, the
    checkpoints and the log. Returns the losses of this invocation."""
    opt = torch.optim.Adam(params, lr=lr)
    start = _resume(out, what, module, opt, meta) if resume else 0
    if start:
        log(f"resumed from {out / CHECKPOINT} at iteration {start}")
    losses = []
    with (out / "log.jsonl").open("a") as log_file:
        for it in range(start, iters):
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss = step(it)
            opt.step()
            losses.append(loss)
            log_file.write(json.dumps({"what": what, "iter": it + 1, "loss": loss,
                                       "seconds": round(time.perf_counter() - t0, 3)}) + "\n")
            log_file.flush()
            if (it + 1) % save_every == 0 or it + 1 == iters:
                _save_checkpoint(out, what, it + 1, module, opt, meta)
            log(f"{what} iteration {it + 1}/{iters}: loss {loss:.6g}")
    return losses


# ------------------------------------------------------------------------------------ vae decoder


@torch.no_grad()
def vae_latents(engine, frames_u8: np.ndarray, chunk: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames -> (the sampler's latents, i.e. posterior mode * scaling factor; the full decoder's frames in [-1, 1])."""
    from engine.diffusion import conditioning

    scale = engine.cfg.model.vae.get("scaling_factor", 0.18215)
    lat, img = [], []
    for i in range(0, len(frames_u8), chunk):
        x = conditioning.to_pm1(frames_u8[i : i + chunk])
        z = torch.cat([engine.backend.run("vae_encoder", image=x[j : j + 1])["latent"] for j in range(len(x))])
        lat.append(z * scale)
        img.append(engine.backend.run("vae_decoder", latents=z)["image"].float())
    return torch.cat(lat).float(), torch.cat(img)


def distil_vae_decoder(engine, train: np.ndarray, held: np.ndarray, out: Path, iters: int, batch: int, lr: float,
                       resume: bool, save_every: int, log: Callable[[str], None] = print) -> dict[str, Any]:
    from engine.distill.frvd import psnr_u8
    from engine.models import taesd

    vae = engine.cfg.model.vae
    width = taesd.width_for(vae)
    torch.manual_seed(0)
    decoder = taesd.build(int(vae.get("latent_channels", 4)), width)
    z_train, y_train = vae_latents(engine, train)
    z_held, y_held = vae_latents(engine, held)
    gen = torch.Generator().manual_seed(0)

    @torch.enable_grad()
    def step(it: int) -> float:
        idx = torch.randint(0, len(z_train), (min(batch, len(z_train)),), generator=gen)
        pred = decoder(z_train[idx])
        loss = (pred - y_train[idx]).abs().mean() + ((pred - y_train[idx]) ** 2).mean()
        loss.backward()
        return float(loss)

    meta = {"width": width, "train_frames": len(train)}
    decoder.train().requires_grad_(True)
    losses = loop(out, "vae-decoder", decoder, list(decoder.parameters()), meta, iters, lr, step, resume,
                  save_every, log)
    decoder.eval().requires_grad_(False)

    def u8(images: torch.Tensor) -> np.ndarray:
        return ((images / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1) * 255).to(torch.uint8).numpy()

    with torch.no_grad():
        psnr = psnr_u8(u8(decoder(z_held)), u8(y_held))
    report = {"what": "vae-decoder", "width": width, "iters": iters, "final_loss": losses[-1] if losses else None,
              "train_frames": len(train), "held_out_frames": len(held), "held_out_psnr_vs_full_decoder": psnr}
    taesd.save(decoder, out / "taesd_decoder.safetensors", report)
    return report


# ---------------------------------------------------------------------------------------- student


def distil_student(teacher, student, examples: list, holdout: list, k: int, kv: int, out: Path, iters: int,
                   lr: float, resume: bool, save_every: int, preset: str,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train ``student`` (an engine built like ``teacher``: initialised from it) for K steps; write
    ``student.safetensors`` and return the held-out drift table (engine.distill.frvd.drift_rows)."""
    from engine.distill import frvd
    from engine.graphs.mode_modules import DenoiserCondGraph
    from engine.models import student as student_file

    cfg = frvd.knob_cfg(student, "exact", sampler="distilled", steps=k, guidance_mode="none", kv_downsample=kv)
    trajectories = []
    for i, ex in enumerate(examples):  # one teacher run per example, cached beside the checkpoint
        path = out / f"teacher_k{k}_{i}_seed{ex.seed}.pt"
        if resume and path.exists():
            trajectories.append(torch.load(path, weights_only=True))
            continue
        t0 = time.perf_counter()
        traj = frvd.teacher_trajectory(teacher, ex, k)
        tmp = path.with_name(f".{path.name}.partial")
        torch.save(traj, tmp)
        tmp.replace(path)
        trajectories.append(traj)
        log(f"teacher trajectory {i + 1}/{len(examples)} ({time.perf_counter() - t0:.1f} s)")
    prepared = [frvd.prepare(student, cfg, ex) for ex in examples]
    denoiser = student.backend.nets.denoiser
    graph = DenoiserCondGraph(student.backend.nets)
    params = [p for p in denoiser.parameters()]
    denoiser.requires_grad_(True)

    def step(it: int) -> float:
        j = it % len(examples)
        return frvd.train_step(student, cfg, prepared[j], trajectories[j], graph)

    meta = {"k": k, "kv_downsample": kv, "examples": len(examples), "preset": preset}
    try:
        losses = loop(out, "student", denoiser, params, meta, iters, lr, step, resume, save_every, log)
    finally:
        denoiser.requires_grad_(False)
    info = {"iters": iters, "examples": len(examples), "size": student.cfg.size,
            "final_loss": losses[-1] if losses else None, "first_loss": losses[0] if losses else None}
    student_file.save(student.backend.nets, out / "student.safetensors", steps=k, kv_downsample=kv, preset=preset,
                      **info)
    rows = frvd.drift_rows(teacher, student, k, kv, holdout) if holdout else []
    return {"what": "student", "k": k, "kv_downsample": kv, **info, "drift": rows}
