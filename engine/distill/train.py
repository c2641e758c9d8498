"""``distill_loop(DistillConfig)``: the two distillations behind ``python -m engine.distill`` on engine.train's
parts - its data (``engine.train.data``: clips scanned, windows sampled as the release's dataset does), its
optimizer, atomic checkpoints with bit-identical resume, ``log.jsonl`` and process groups
(``engine.train.optimise`` / ``distributed``: one process, ``torchrun`` on gloo or nccl). Only the
micro-batch is this module's own:

* ``student`` (engine.distill.frvd): example ``i`` is window ``i`` of the training clips (``ClipDataset``
  item ``i``: its reference frame is the source, as the release trains); the teacher's exact-mode
  trajectory at the K student sigmas is computed once per example and cached in ``RUN/teacher/``;
  a micro-batch's samples (``Layout``) map to examples ``sample % examples``.
* ``vae-decoder`` (engine.models.taesd): the same windows' frames, encoded by the engine's VAE; the TAESD
  decoder regresses the VAE decoder's frames (L1 + L2).

Held-out windows come from the last clip, never trained on (``holdout`` > 0 needs two clips or more).
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.errors import InputError
from engine.train import checkpoint as ckpt
from engine.train import data, distributed
from engine.train.optimise import Optimisation, OptimSettings, TrainResult, say_for

WHAT = ("student", "vae-decoder")


@dataclass
class DistillConfig:
    what: str  # student | vae-decoder
    data: Path  # clips: a folder, a list file or one video (engine.train.data.list_clips)
    out: Path
    preset: str = "tiny"
    weights: Path | None = None  # the release's pretrained_weights/ (official)
    size: int | None = None  # None: the preset's
    frames: int = 14  # frames per example (one window)
    sample_rate: int = 4
    examples: int = 8  # training windows (the teacher runs once per window)
    holdout: int = 1  # held-out windows, from the last clip
    k: int = 1  # student: steps
    kv_downsample: int = 1  # student: the WFM attention approximation the mode will run
    batch: int = 1  # examples per micro-batch and process
    accumulate: int = 1
    iters: int = 100
    lr: float | None = None  # None: 1e-5 student, 1e-3 vae-decoder
    warmup: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    save_every: int = 25
    keep: int = 2
    seed: int = 0
    align: str = "none"
    quiet: bool = False

    def optim(self) -> OptimSettings:
        lr = self.lr if self.lr is not None else (1e-5 if self.what == "student" else 1e-3)
        return OptimSettings(self.iters, lr, self.warmup, self.weight_decay, self.max_grad_norm, "adamw",
                             self.save_every, self.keep)

    def identity(self) -> str:
        """What a checkpoint of this run must match (a resume of another run is refused)."""
        keys = ("what", "size", "frames", "sample_rate", "examples", "k", "kv_downsample", "seed", "align")
        text = json.dumps({k: str(getattr(self, k)) for k in keys}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:8]


def distill_loop(cfg: DistillConfig, stop: threading.Event | None = None) -> dict[str, Any] | None:
    """Train (or resume) ``cfg.out``; the report (also the held-out table) on the main process, else None."""
    if cfg.what not in WHAT:
        raise InputError(f"--what must be one of {', '.join(WHAT)}")
    d = distributed.setup("cpu")
    try:
        return _distil(cfg, d, stop or threading.Event())
    finally:
        distributed.teardown(d)


def _engine(cfg: DistillConfig, d: distributed.Dist):
    from engine.api import EngineOptions, Reenactor

    return Reenactor.from_preset(cfg.preset, EngineOptions(size=cfg.size, device=str(d.device)), weights=cfg.weights)


def _clips(cfg: DistillConfig) -> tuple[list[data.Clip], list[data.Clip]]:
    """(training, held-out) clips of ``--data`` (the last one held out when ``holdout`` > 0)."""
    report = data.scan(Path(cfg.data), cfg.frames, cfg.align, cfg.weights)
    clips = report.clips
    if not clips:
        raise InputError(f"no readable clip of at least {cfg.frames} frames in --data {cfg.data} ({report.summary()})")
    if cfg.holdout and len(clips) < 2:
        raise InputError(f"--holdout {cfg.holdout} takes windows from a clip never trained on (the last one), but "
                         f"--data {cfg.data} has {len(clips)} usable clip: give two or more clips, or --holdout 0")
    return (clips[:-1], clips[-1:]) if cfg.holdout else (clips, [])


def _windows(cfg: DistillConfig, clips: list[data.Clip], count: int, size: int, seed_base: int
             ) -> list[tuple[np.ndarray, int]]:
    """ClipDataset items 0 .. count-1 of ``clips`` as (uint8 frames [F, S, S, 3], noise seed); frame 0 is the
    reference."""
    if not count:
        return []
    ds = data.ClipDataset(clips, cfg.frames, size, cfg.sample_rate, cfg.seed)
    out = []
    for i in range(count):
        vid = torch.as_tensor(ds[i]["pixel_values_vid"])  # [F, 3, S, S] in [-1, 1]
        u8 = ((vid + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        out.append((np.ascontiguousarray(u8), seed_base + i))
    return out


def _distil(cfg: DistillConfig, d: distributed.Dist, stop: threading.Event) -> dict[str, Any] | None:
    say = say_for(cfg.quiet, d)
    out = Path(cfg.out)
    train_clips, held_clips = _clips(cfg)  # bad data fails before any network is built
    engine = _engine(cfg, d)
    train_windows = _windows(cfg, train_clips, cfg.examples, engine.size, 0)
    held_windows = _windows(cfg, held_clips, cfg.holdout, engine.size, 1_000_000)
    layout = data.Layout(cfg.batch, cfg.accumulate, d.world)
    meta = {"preset": cfg.preset, "fingerprint": f"{ckpt.config_fingerprint(engine.cfg.model)}-{cfg.identity()}",
            "config": {k: str(v) for k, v in asdict(cfg).items()}}
    task = (_StudentTask if cfg.what == "student" else _DecoderTask)(cfg, d, engine, train_windows, held_windows)
    opt = Optimisation(out, d, task.trainable(), layout, cfg.optim(), meta)
    start, last = opt.resume()
    if last is not None:
        say(f"resuming from {last} (step {start})")
    task.prepare(sorted({i % cfg.examples for step in range(start, cfg.iters) for a in range(cfg.accumulate)
                         for i in layout.micro_batch(step, a, d.rank)}), out, say)
    say(f"distilling {cfg.what} on {len(train_windows)} windows ({len(held_windows)} held out): steps "
        f"{start}->{cfg.iters}, {layout.per_step} windows/step ({cfg.batch} x {cfg.accumulate} x {d.world} "
        f"processes), {engine.size}px")
    scale = 1.0 / (cfg.batch * cfg.accumulate)

    def micro(step: int, index: int) -> torch.Tensor:
        ids = layout.micro_batch(step, index, d.rank)
        return torch.tensor([task.loss_backward(i % cfg.examples, scale) for i in ids]).mean()

    result = opt.run(start, micro, say, stop, result=TrainResult(start, start, checkpoint=last))
    task.done()
    if not d.is_main or result.stopped:
        return None if not d.is_main else {"what": cfg.what, "stopped_at": result.end_step}
    losses = [result.losses[s] for s in sorted(result.losses)]
    info = {"what": cfg.what, "iters": cfg.iters, "examples": cfg.examples, "size": engine.size,
            "first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None,
            "checkpoint": str(result.checkpoint)}
    return task.finish(out, info)


class _StudentTask:
    """Trajectory distillation of the student (engine.distill.frvd): the given engine is trained; a
    teacher engine (the same preset, untouched) is built when a trajectory or the held-out table needs it.
    Source features come from networks the two share unchanged (LivePortrait, the VAE, CLIP)."""

    def __init__(self, cfg: DistillConfig, d: distributed.Dist, student, train: list, held: list) -> None:
        from engine.distill import frvd
        from engine.graphs.mode_modules import DenoiserCondGraph
        from engine.models.approx import kv_downsample

        self.cfg, self.d, self.student, self._teacher = cfg, d, student, None
        self.examples = [frvd.Example(student.set_source(f[0]).features, f, seed) for f, seed in train]
        self.held = [frvd.Example(student.set_source(f[0]).features, f, seed) for f, seed in held]
        self.run_cfg = frvd.knob_cfg(self.student, "exact", sampler="distilled", steps=cfg.k, guidance_mode="none",
                                     kv_downsample=cfg.kv_downsample)
        self.denoiser = self.student.backend.nets.denoiser
        # the conditional-row graph, its keys/values pooled as the mode will run it (built once, parameters shared)
        self.graph = kv_downsample(DenoiserCondGraph(self.student.backend.nets), cfg.kv_downsample)
        self.prepared: dict[int, Any] = {}
        self.trajectories: dict[int, list[torch.Tensor]] = {}
        self.denoiser.requires_grad_(True)

    @property
    def teacher(self):
        if self._teacher is None:
            self._teacher = _engine(self.cfg, self.d)
        return self._teacher

    def trainable(self) -> dict[str, nn.Module]:
        return {"student_denoiser": self.denoiser}

    def prepare(self, ids: list[int], out: Path, say) -> None:
        """The teacher's trajectory of every example this process trains on (cached in RUN/teacher/)."""
        from engine.distill import frvd

        cache = out / "teacher"
        cache.mkdir(parents=True, exist_ok=True)
        for n, i in enumerate(ids):
            ex = self.examples[i]
            path = cache / f"k{self.cfg.k}-{self.cfg.identity()}-{i}.pt"
            if path.exists():
                traj = torch.load(path, weights_only=True)
            else:
                traj = frvd.teacher_trajectory(self.teacher, ex, self.cfg.k)
                tmp = path.with_name(f".{path.name}.{id(self)}.partial")
                torch.save(traj, tmp)
                tmp.replace(path)
                say(f"teacher trajectory {n + 1}/{len(ids)} (example {i})")
            self.trajectories[i] = traj
            self.prepared[i] = frvd.prepare(self.student, self.run_cfg, ex)

    def loss_backward(self, i: int, scale: float) -> float:
        from engine.distill import frvd

        return frvd.train_step(self.student, self.run_cfg, self.prepared[i], self.trajectories[i], self.graph, scale)

    def done(self) -> None:
        self.denoiser.requires_grad_(False)

    def finish(self, out: Path, info: dict[str, Any]) -> dict[str, Any]:
        from engine.distill import frvd
        from engine.models import student as student_file

        cfg = self.cfg
        student_file.save(self.student.backend.nets, out / "student.safetensors", steps=cfg.k,
                          kv_downsample=cfg.kv_downsample, preset=cfg.preset, **info)
        rows = frvd.drift_rows(self.teacher, self.student, cfg.k, cfg.kv_downsample, self.held) if self.held else []
        return {**info, "k": cfg.k, "kv_downsample": cfg.kv_downsample, "drift": rows}


class _DecoderTask:
    """A TAESD decoder regressed on the engine's VAE decoder over the windows' latents."""

    def __init__(self, cfg: DistillConfig, d: distributed.Dist, engine, train: list, held: list) -> None:
        from engine.models import taesd

        vae = engine.cfg.model.vae
        self.cfg, self.engine, self.width = cfg, engine, taesd.width_for(vae)
        torch.manual_seed(cfg.seed)
        self.decoder = taesd.build(int(vae.get("latent_channels", 4)), self.width).to(d.device)
        self.decoder.train().requires_grad_(True)
        self.train_frames, self.held_frames = [f for f, _ in train], [f for f, _ in held]
        self.latents: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def trainable(self) -> dict[str, nn.Module]:
        return {"taesd_decoder": self.decoder}

    def prepare(self, ids: list[int], out: Path, say) -> None:
        for i in ids:
            self.latents[i] = vae_latents(self.engine, self.train_frames[i])

    @torch.enable_grad()  # whatever the caller's mode
    def loss_backward(self, i: int, scale: float) -> float:
        z, target = self.latents[i]
        pred = self.decoder(z)
        loss = (pred - target).abs().mean() + ((pred - target) ** 2).mean()
        (loss * scale).backward()
        return float(loss.detach())

    def done(self) -> None:
        self.decoder.eval().requires_grad_(False)

    def finish(self, out: Path, info: dict[str, Any]) -> dict[str, Any]:
        from engine.distill.frvd import psnr_u8
        from engine.models import taesd

        psnr = None
        if self.held_frames:
            z, full = vae_latents(self.engine, np.concatenate(self.held_frames))
            with torch.no_grad():
                psnr = psnr_u8(_u8(self.decoder(z)), _u8(full))
        report = {**info, "width": self.width, "train_frames": sum(len(f) for f in self.train_frames),
                  "held_out_frames": sum(len(f) for f in self.held_frames), "held_out_psnr_vs_full_decoder": psnr}
        taesd.save(self.decoder, out / "taesd_decoder.safetensors", report)
        return report


def _u8(images: torch.Tensor) -> np.ndarray:
    return ((images / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1) * 255).to(torch.uint8).cpu().numpy()


@torch.no_grad()
def vae_latents(engine, frames_u8: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames -> (the sampler's latents, i.e. posterior mode * scaling factor; the full decoder's frames in [-1, 1])."""
    from engine.diffusion import conditioning

    scale = engine.cfg.model.vae.get("scaling_factor", 0.18215)
    x = conditioning.to_pm1(frames_u8)
    z = torch.cat([engine.backend.run("vae_encoder", image=x[j : j + 1])["latent"] for j in range(len(x))])
    img = torch.cat([engine.backend.run("vae_decoder", latents=z[j : j + 1])["image"].float() for j in range(len(z))])
    return (z * scale).float(), img
