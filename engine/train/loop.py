"""The training loop: ``train_loop(TrainConfig)``, the same under one process, ``torchrun`` and a Ray Train
worker (a process group already initialised). ``python -m engine.train`` is its command line.

Per optimisation step: ``accumulate`` micro-batches of ``batch`` clips through ``train_step`` (loss /
accumulate, backward), the gradients averaged over processes, clipped at ``max_grad_norm``, AdamW, the lr
schedule. Every ``checkpoint_every`` steps (and at the end, and on Ctrl-C / SIGTERM) a checkpoint;
every ``log_every`` a JSONL line (``RUN/log.jsonl``, TensorBoard when installed) and a progress line; every
``validate_every`` a validation render. Re-running with the same ``out`` resumes from its latest
checkpoint; the losses continue bit-identically (data and draws are functions of the sample index). The
optimizer, checkpoints, log and step loop are ``engine.train.optimise`` (shared with ``engine.distill``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from engine.errors import InputError
from engine.train import checkpoint as ckpt
from engine.train import data, distributed, setup
from engine.train.modules import from_networks
from engine.train.optimise import Optimisation, OptimSettings, TrainResult, say_for
from engine.train.step import DROPOUT_PROB, Draws, set_batch_layout, train_step

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class TrainConfig:
    data: Path
    out: Path
    preset: str = "tiny"
    weights: Path | None = None  # the release's pretrained_weights/ (official), or a folder of our two files
    init: str = "fresh"  # fresh (WFM from the UNet) | weights (fine-tune what --weights holds) | a checkpoint folder
    size: int | None = None  # training resolution (None: the preset's)
    frames: int = 14
    sample_rate: int = 4
    batch: int = 1  # clips per micro-batch and process
    accumulate: int = 1
    steps: int = 100
    lr: float = 1e-5
    warmup: int = 0
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    optimizer: str = "adamw"  # adamw | adamw8bit (bitsandbytes)
    dropout: float = DROPOUT_PROB
    seed: int = 0
    init_seed: int = 0  # seeded frozen networks of tiny (as Reenactor.from_preset builds them)
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 autocast on CUDA (fp16 where bf16 is unsupported), fp32 on CPU
    gradient_checkpointing: bool = False
    workers: int = 2
    align: str = "none"  # none | auto | opencv | insightface: face crop of every clip (engine.face.align)
    checkpoint_every: int = 100
    keep: int = 2
    log_every: int = 1
    validate_every: int = 0
    val_clip: Path | None = None  # held-out clip (default: the last clip, when there are several)
    val_steps: int = 4
    time_context: str = "release"
    quiet: bool = False

    def optim(self) -> OptimSettings:
        return OptimSettings(self.steps, self.lr, self.warmup, self.weight_decay, self.max_grad_norm, self.optimizer,
                             self.checkpoint_every, self.keep, self.log_every)

    def check(self) -> None:
        if self.steps < 1:
            raise InputError(f"--steps must be >= 1, got {self.steps}")
        for name in ("frames", "batch", "accumulate", "sample_rate", "checkpoint_every", "keep", "log_every",
                     "val_steps"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.size is not None and (self.size < 64 or self.size % 64):
            raise InputError(f"--size {self.size} is not a multiple of 64")
        if self.precision not in PRECISIONS:
            raise InputError(f"--precision must be one of {PRECISIONS}")
        if not math.isfinite(self.lr) or self.lr <= 0:
            raise InputError(f"--lr must be a positive number, got {self.lr}")
        if self.optimizer == "adamw8bit" and importlib.util.find_spec("bitsandbytes") is None:
            setup.make_optimizer([], "adamw8bit", self.lr)  # raises the one clear message, before any work


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or precision == "fp32":
        if precision in ("bf16", "fp16") and device.type != "cuda":
            raise InputError(f"--precision {precision} needs CUDA: on CPU training runs in float32")
        return None
    if precision == "fp16" or (precision == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def draws_for(samples: torch.Tensor, cfg: TrainConfig, size: int, latent_channels: int,
              device: torch.device) -> Draws:
    """The micro-batch's random numbers, a function of (seed, its first sample index) only."""
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + int(samples[0]) + 1)
    return Draws.sample(len(samples), cfg.frames, size, latent_channels, gen, device)


def train_loop(cfg: TrainConfig, stop: threading.Event | None = None,
               on_step: Callable[[int, dict], None] | None = None) -> TrainResult:
    """Train (or resume) the run in ``cfg.out``. ``stop`` (set from a signal handler or another thread)
    ends the run after the current step, with a checkpoint. ``on_step(step, record)`` sees every log
    record (Ray Train's ``report``, a progress bar)."""
    cfg.check()
    d = distributed.setup(cfg.device)
    try:
        return _train(cfg, d, stop or threading.Event(), on_step)
    finally:
        distributed.teardown(d)


def _train(cfg: TrainConfig, d: distributed.Dist, stop: threading.Event,
           on_step: Callable[[int, dict], None] | None) -> TrainResult:
    say = say_for(cfg.quiet, d)
    out = Path(cfg.out)
    # 1. data (every rank scans: cheap, and every rank needs the clip list)
    report = data.scan(Path(cfg.data), cfg.frames, cfg.align, cfg.weights)
    if not report.clips:
        raise InputError(f"no readable clip of at least {cfg.frames} frames in --data {cfg.data} ({report.summary()})")
    val_clip = cfg.val_clip
    clips = report.clips
    if cfg.validate_every and val_clip is None and len(clips) > 1:
        val_clip, clips = clips[-1].path, clips[:-1]  # held out

    # 2. networks and the starting point
    model, nets = setup.build(cfg.preset, cfg.weights, cfg.init, cfg.seed, cfg.init_seed, cfg.time_context)
    size = cfg.size or model.image_size
    nets.to(d.device)
    modules = from_networks(nets, model)
    modules.prepare_for_training()
    set_batch_layout(modules, cfg.batch, cfg.time_context)
    amp = _autocast_dtype(cfg.precision, d.device)
    if amp is not None:  # the frozen diffusion networks in half precision, as the release casts them
        for module in (modules.unet, modules.vae, modules.image_encoder):
            module.to(dtype=amp)
    if cfg.gradient_checkpointing:
        setup.enable_gradient_checkpointing(modules.wfm)
        setup.enable_gradient_checkpointing(modules.unet)
    layout = data.Layout(cfg.batch, cfg.accumulate, d.world)
    meta = {"preset": cfg.preset, "fingerprint": ckpt.config_fingerprint(model),
            "config": {k: str(v) for k, v in asdict(cfg).items()}}
    opt = Optimisation(out, d, modules.trainable(), layout, cfg.optim(), meta)

    # 3. resume
    start, last = opt.resume()
    if last is not None:
        say(f"resuming from {last} (step {start})")
    result = TrainResult(start, start, skipped=report.skipped)
    if start >= cfg.steps:
        say(f"{out} is already at step {start} >= --steps {cfg.steps}: nothing to do")
        result.checkpoint = last
        return result

    dataset = data.ClipDataset(clips, cfg.frames, size, cfg.sample_rate, cfg.seed)
    batches = iter(data.loader(dataset, layout, d.rank, start, cfg.steps, cfg.workers))
    say(f"training {cfg.preset} on {report.summary()}: steps {start}->{cfg.steps}, {layout.per_step} samples/step "
        f"({cfg.batch} x {cfg.accumulate} x {d.world} processes), {size}px, {cfg.frames} frames, {d.device}")

    # 4. the loop: the micro-batch is this loop's own, the rest engine.train.optimise's
    latent_channels = int(model.vae.get("latent_channels", 4))
    autocast = (torch.autocast(device_type="cuda", dtype=amp) if amp is not None else contextlib.nullcontext())

    def micro(_step: int, _index: int) -> torch.Tensor:
        batch = next(batches)
        draws = draws_for(batch["sample"], cfg, size, latent_channels, d.device)
        vid = batch["pixel_values_vid"].to(d.device, non_blocking=True)
        ref = batch["pixel_values_ref_img"].to(d.device, non_blocking=True)
        with autocast:
            output = train_step(modules, vid, ref, draws, cfg.dropout)
        (output.loss / cfg.accumulate).backward()
        return output.loss.detach().float()

    def validate(done: int) -> None:
        if cfg.validate_every and val_clip is not None and done % cfg.validate_every == 0 and d.is_main:
            from engine.train.validate import render_validation

            target = out / "validation" / f"step-{done}.mp4"
            path = render_validation(nets, model, modules, cfg, size, Path(val_clip), target)
            say(f"validation render: {path}")

    opt.run(start, micro, say, stop, on_step, validate, result)
    if report.skipped:
        say(f"data: {report.summary()}")
    return result
