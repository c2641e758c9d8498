"""Progress, cancellation and stage timing: the small objects a scheduler reports through."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

import torch

from engine.errors import EngineError

ProgressFn = Callable[[str, int, int], None]  # (stage, done, total)
T = TypeVar("T")


class Cancelled(EngineError):
    """The run was cancelled through its RunControl; nothing was written."""

    exit_code = 130


@dataclass
class RunControl:
    """Progress reporting and cancellation for one run (``render``) or one stream.

    ``progress(stage, done, total)`` is called from whichever thread does the work; ``cancel()``
    may be called from any thread and takes effect at the next stage boundary or sampler step.
    """

    progress: ProgressFn | None = None
    _cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def check(self) -> None:
        if self._cancelled.is_set():
            raise Cancelled("cancelled: no output was written")

    def report(self, stage: str, done: int, total: int) -> None:
        self.check()
        if self.progress is not None:
            self.progress(stage, done, total)


class StageTimer:
    """Seconds per stage, summed over calls, from any thread.

    On a GPU a host clock would time only kernel launches, so there each interval is a pair of
    CUDA events recorded on the current stream (no host synchronisation on the hot path); they are
    resolved, with one synchronisation, when ``seconds`` is read.
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self._seconds: dict[str, float] = {}
        self._events: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []
        self._lock = threading.Lock()

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            try:
                yield
            finally:
                end.record()
                with self._lock:
                    self._events.append((stage, start, end))
            return
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - t0)

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self._seconds[stage] = self._seconds.get(stage, 0.0) + seconds

    @property
    def seconds(self) -> dict[str, float]:
        with self._lock:
            events, self._events = self._events, []
        for stage, start, end in events:
            end.synchronize()
            self.add(stage, start.elapsed_time(end) / 1000.0)
        with self._lock:
            return dict(self._seconds)


def prefetch(items: Iterator[T], control: RunControl, depth: int) -> Iterator[T]:
    """Run the producer ``items`` in a worker thread up to ``depth`` items ahead of the consumer
    (e.g. decoding overlaps video encoding). Errors and cancellation reach the consumer; a consumer
    that stops early stops the worker."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()
    failure: list[BaseException] = []

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
            failure.append(exc)
        finally:
            put(done)

    worker = threading.Thread(target=work, name="frvd-prefetch", daemon=True)
    worker.start()
    try:
        while (item := q.get()) is not done:
            yield item
        if failure:
            raise failure[0]
        control.check()
    finally:
        stop.set()
        worker.join()
