"""The training loop: ``train_loop(TrainConfig)``, the same under one process, ``torchrun`` and a Ray Train
worker (a process group already initialised). ``python -m engine.train`` is its command line.

Per optimisation step: ``accumulate`` micro-batches of ``batch`` clips through ``train_step`` (loss /
accumulate, backward), the gradients averaged over processes, clipped at ``max_grad_norm``, AdamW, the lr
schedule. Every ``checkpoint_every`` steps (and at the end, and on Ctrl-C / SIGTERM) a checkpoint;
every ``log_every`` a JSONL line (``RUN/log.jsonl``, TensorBoard when installed) and a progress line; every
``validate_every`` a validation render. Re-running with the same ``out`` resumes from its latest
checkpoint; the losses continue bit-identically (data and draws are functions of the sample index).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from engine.errors import InputError
from engine.train import checkpoint as ckpt
from engine.train import data, distributed, setup
from engine.train.modules import from_networks
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


@dataclass
class TrainResult:
    start_step: int
    end_step: int
    losses: dict[int, float] = field(default_factory=dict)  # step -> loss (mean over the step's samples)
    checkpoint: Path | None = None
    stopped: bool = False
    samples_per_s: float = 0.0
    skipped: dict[str, list[str]] = field(default_factory=dict)


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
    say = (lambda msg: None) if (cfg.quiet or not d.is_main) else (lambda msg: print(msg, file=sys.stderr, flush=True))
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
    params = [p for m in modules.trainable().values() for p in m.parameters()]
    optimizer = setup.make_optimizer(params, cfg.optimizer, cfg.lr, cfg.weight_decay)
    scheduler = setup.constant_with_warmup(optimizer, cfg.warmup)
    fingerprint = ckpt.config_fingerprint(model)
    layout = data.Layout(cfg.batch, cfg.accumulate, d.world)

    # 3. resume
    start = 0
    last = ckpt.latest(out)
    if last is not None:
        state = ckpt.load(last, fingerprint, cfg.preset)
        for name, module in modules.trainable().items():
            module.load_state_dict(state["model"][name])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        ckpt.set_rng_state(state["rng"])
        start = int(state["step"])
        if state["data"]["per_step"] != layout.per_step:
            raise InputError(f"{last} was trained with {state['data']['per_step']} samples per step "
                             f"(batch x accumulate x processes), this run has {layout.per_step}: keep them equal")
        say(f"resuming from {last} (step {start})")
    result = TrainResult(start, start, skipped=report.skipped)
    if start >= cfg.steps:
        say(f"{out} is already at step {start} >= --steps {cfg.steps}: nothing to do")
        result.checkpoint = last
        return result

    if d.is_main:
        out.mkdir(parents=True, exist_ok=True)
    distributed.barrier(d)
    dataset = data.ClipDataset(clips, cfg.frames, size, cfg.sample_rate, cfg.seed)
    batches = iter(data.loader(dataset, layout, d.rank, start, cfg.steps, cfg.workers))
    logger = _Logger(out, d.is_main)
    say(f"training {cfg.preset} on {report.summary()}: steps {start}->{cfg.steps}, {layout.per_step} samples/step "
        f"({cfg.batch} x {cfg.accumulate} x {d.world} processes), {size}px, {cfg.frames} frames, {d.device}")

    def save(step: int) -> Path | None:
        path = None
        if d.is_main:
            state = {
                "step": step,
                "model": {n: m.state_dict() for n, m in modules.trainable().items()},
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": ckpt.rng_state(),
                "data": {"samples_consumed": step * layout.per_step, "per_step": layout.per_step},
                "meta": {"preset": cfg.preset, "fingerprint": fingerprint,
                         "config": {k: str(v) for k, v in asdict(cfg).items()}},
            }
            path = ckpt.save(out, step, modules.trainable(), state, cfg.keep)
        distributed.barrier(d)
        return path

    # 4. the loop
    t_start = time.perf_counter()
    step = start
    latent_channels = int(model.vae.get("latent_channels", 4))
    autocast = (torch.autocast(device_type="cuda", dtype=amp) if amp is not None else contextlib.nullcontext())
    for step in range(start, cfg.steps):
        t0 = time.perf_counter()
        losses = []
        for _ in range(cfg.accumulate):
            batch = next(batches)
            draws = draws_for(batch["sample"], cfg, size, latent_channels, d.device)
            vid = batch["pixel_values_vid"].to(d.device, non_blocking=True)
            ref = batch["pixel_values_ref_img"].to(d.device, non_blocking=True)
            with autocast:
                output = train_step(modules, vid, ref, draws, cfg.dropout)
            (output.loss / cfg.accumulate).backward()
            losses.append(output.loss.detach().float())
        distributed.average_gradients(params, d)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss = distributed.all_mean(torch.stack(losses).mean(), d).item()
        done = step + 1
        result.losses[step], result.end_step = loss, done
        seconds = time.perf_counter() - t0
        record = {"step": done, "loss": loss, "lr": lr, "grad_norm": float(grad_norm),
                  "samples_per_s": layout.per_step / seconds, "seconds": seconds}
        if done % cfg.log_every == 0 or done == cfg.steps:
            elapsed = time.perf_counter() - t_start
            eta = elapsed / (done - start) * (cfg.steps - done)
            logger.write(record)
            say(f"step {done}/{cfg.steps} loss {loss:.5f} lr {lr:.2e} grad-norm {float(grad_norm):.3f} "
                f"{record['samples_per_s']:.2f} samples/s eta {eta:.0f}s")
        if on_step is not None:
            on_step(done, record)
        stopping = distributed.any_flag(stop.is_set(), d)
        if done % cfg.checkpoint_every == 0 or done == cfg.steps or stopping:
            result.checkpoint = save(done) or result.checkpoint
        if cfg.validate_every and val_clip is not None and done % cfg.validate_every == 0 and d.is_main:
            from engine.train.validate import render_validation

            target = out / "validation" / f"step-{done}.mp4"
            path = render_validation(nets, model, modules, cfg, size, Path(val_clip), target)
            say(f"validation render: {path}")
        distributed.barrier(d)
        if stopping:
            result.stopped = True
            say(f"stopped at step {done}: checkpoint {result.checkpoint}")
            break
    total = time.perf_counter() - t_start
    result.samples_per_s = (result.end_step - start) * layout.per_step / total if total > 0 else 0.0
    logger.close()
    if report.skipped:
        say(f"data: {report.summary()}")
    return result


class _Logger:
    """``RUN/log.jsonl`` (one object per logged step, appended across resumes) and TensorBoard if installed."""

    def __init__(self, out: Path, active: bool) -> None:
        self.active = active
        self.file = None
        self.tb = None
        if not active:
            return
        self.file = open(out / "log.jsonl", "a")  # noqa: SIM115 - closed in close()
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tensorboard"))
        except ImportError:
            self.tb = None

    def write(self, record: dict) -> None:
        if self.file is not None:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        if self.tb is not None:
            for key in ("loss", "lr", "grad_norm", "samples_per_s"):
                self.tb.add_scalar(f"train/{key}", record[key], record["step"])

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.tb is not None:
            self.tb.close()
