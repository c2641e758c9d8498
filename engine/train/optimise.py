"""What every training loop of the engine shares (``engine.train``, ``engine.distill``): the optimizer and lr
schedule of the trained modules, resume from / atomic save to ``RUN/checkpoint-N`` (``engine.train.checkpoint``),
one optimisation step (gradients averaged over the processes, clipped, AdamW, the schedule), the
``RUN/log.jsonl`` log and the step loop with its stop request (Ctrl-C / SIGTERM / another thread).

A loop supplies only its micro-batch: ``micro(step, index)`` accumulates the gradients of ``loss / accumulate``
in the trained modules and returns the detached loss. Which samples a micro-batch holds is the loop's
``data.Layout`` (a function of step, micro-batch and rank only), so a resumed run continues bit-identically.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.errors import InputError
from engine.train import checkpoint as ckpt
from engine.train import distributed, setup
from engine.train.data import Layout


@dataclass(frozen=True)
class OptimSettings:
    """The optimisation settings a training command exposes (engine.train's defaults)."""

    steps: int = 100  # optimisation steps in total (with resumed ones)
    lr: float = 1e-5
    warmup: int = 0
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    optimizer: str = "adamw"  # adamw | adamw8bit (bitsandbytes)
    checkpoint_every: int = 100
    keep: int = 2
    log_every: int = 1


@dataclass
class TrainResult:
    start_step: int
    end_step: int
    losses: dict[int, float] = field(default_factory=dict)  # step -> loss (mean over the step's samples)
    checkpoint: Path | None = None
    stopped: bool = False
    samples_per_s: float = 0.0
    skipped: dict[str, list[str]] = field(default_factory=dict)


def say_for(quiet: bool, d: distributed.Dist) -> Callable[[str], None]:
    """Progress lines on stderr, from the main process only."""
    if quiet or not d.is_main:
        return lambda _msg: None
    return lambda msg: print(msg, file=sys.stderr, flush=True)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event that Ctrl-C / SIGTERM set while the block runs (a loop then saves a checkpoint and ends);
    the previous handlers come back after it. Off the main thread no handler is installed."""
    stop = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class Optimisation:
    """The trained modules of one run, their optimizer and schedule, and the run folder's checkpoints.

    ``meta`` identifies the run (at least ``preset`` and ``fingerprint``): a checkpoint of another run is
    refused on resume."""

    def __init__(self, out: Path, d: distributed.Dist, trainable: dict[str, nn.Module], layout: Layout,
                 settings: OptimSettings, meta: dict[str, Any]) -> None:
        self.out, self.d, self.trainable, self.layout, self.settings, self.meta = Path(out), d, trainable, layout, \
            settings, meta
        self.params = [p for m in trainable.values() for p in m.parameters()]
        self.optimizer = setup.make_optimizer(self.params, settings.optimizer, settings.lr, settings.weight_decay)
        self.scheduler = setup.constant_with_warmup(self.optimizer, settings.warmup)

    # 1. resume / save
    def resume(self) -> tuple[int, Path | None]:
        """Load the run folder's latest checkpoint, if any: (its step, its folder), else (0, None)."""
        last = ckpt.latest(self.out)
        if last is None:
            return 0, None
        state = ckpt.load(last, self.meta["fingerprint"], self.meta["preset"])
        for name, module in self.trainable.items():
            module.load_state_dict(state["model"][name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        ckpt.set_rng_state(state["rng"])
        if state["data"]["per_step"] != self.layout.per_step:
            raise InputError(f"{last} was trained with {state['data']['per_step']} samples per step "
                             f"(batch x accumulate x processes), this run has {self.layout.per_step}: keep them equal")
        return int(state["step"]), last

    def save(self, step: int) -> Path | None:
        """``RUN/checkpoint-<step>`` (rank 0 writes, every rank waits); its folder on rank 0."""
        path = None
        if self.d.is_main:
            state = {
                "step": step,
                "model": {n: m.state_dict() for n, m in self.trainable.items()},
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": ckpt.rng_state(),
                "data": {"samples_consumed": step * self.layout.per_step, "per_step": self.layout.per_step},
                "meta": self.meta,
            }
            path = ckpt.save(self.out, step, self.trainable, state, self.settings.keep)
        distributed.barrier(self.d)
        return path

    # 2. one optimisation step, after the micro-batches' backward passes
    def update(self) -> tuple[float, float]:
        """Average the gradients over the processes, clip, step the optimizer and the schedule: (lr, grad norm)."""
        distributed.average_gradients(self.params, self.d)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.settings.max_grad_norm)
        lr = float(self.scheduler.get_last_lr()[0])
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return lr, float(grad_norm)

    # 3. the loop
    def run(self, start: int, micro: Callable[[int, int], torch.Tensor], say: Callable[[str], None],
            stop: threading.Event, on_step: Callable[[int, dict], None] | None = None,
            after_step: Callable[[int], None] | None = None, result: TrainResult | None = None) -> TrainResult:
        """Steps ``start`` .. ``settings.steps``: per step ``layout.accumulate`` micro-batches, one update, a
        log line every ``log_every``, a checkpoint every ``checkpoint_every`` (and at the end, and when
        ``stop`` is set on any process: the run ends there), then ``after_step(step)`` (a validation render)."""
        s = self.settings
        result = result or TrainResult(start, start)
        if self.d.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        distributed.barrier(self.d)
        log = RunLog(self.out, self.d.is_main)
        t_start = time.perf_counter()
        try:
            for step in range(start, s.steps):
                t0 = time.perf_counter()
                losses = [micro(step, a) for a in range(self.layout.accumulate)]
                lr, grad_norm = self.update()
                loss = distributed.all_mean(torch.stack(losses).mean(), self.d).item()
                done = step + 1
                result.losses[step], result.end_step = loss, done
                seconds = time.perf_counter() - t0
                record = {"step": done, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                          "samples_per_s": self.layout.per_step / seconds, "seconds": seconds}
                if done % s.log_every == 0 or done == s.steps:
                    eta = (time.perf_counter() - t_start) / (done - start) * (s.steps - done)
                    log.write(record)
                    say(f"step {done}/{s.steps} loss {loss:.5f} lr {lr:.2e} grad-norm {grad_norm:.3f} "
                        f"{record['samples_per_s']:.2f} samples/s eta {eta:.0f}s")
                if on_step is not None:
                    on_step(done, record)
                stopping = distributed.any_flag(stop.is_set(), self.d)
                if done % s.checkpoint_every == 0 or done == s.steps or stopping:
                    result.checkpoint = self.save(done) or result.checkpoint
                if after_step is not None:
                    after_step(done)
                distributed.barrier(self.d)
                if stopping:
                    result.stopped = True
                    say(f"stopped at step {done}: checkpoint {result.checkpoint}")
                    break
        finally:
            log.close()
        total = time.perf_counter() - t_start
        result.samples_per_s = (result.end_step - start) * self.layout.per_step / total if total > 0 else 0.0
        return result


class RunLog:
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
