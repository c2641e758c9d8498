"""Progress for the CLIs: tqdm bars on a terminal, plain ``stage done/total eta`` lines in a log."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, TextIO

PROGRESS_MODES = ("auto", "bar", "plain", "none")
PLAIN_EVERY = 2.0  # seconds between plain lines per stage (the last line of a stage always prints)


class Progress:
    """A ``(stage, done, total)`` callback, safe to call from worker threads."""

    def __init__(self, mode: str, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "bar" if self.stream.isatty() else "plain"
        if mode not in PROGRESS_MODES:
            raise ValueError(f"progress mode must be one of {PROGRESS_MODES}, got {mode!r}")
        self.mode = mode
        self._bars: dict[str, Any] = {}
        self._started: dict[str, float] = {}
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.mode == "none":
            return
        with self._lock:
            if self.mode == "bar":
                self._bar(stage, done, total)
            else:
                self._plain(stage, done, total)

    def _bar(self, stage: str, done: int, total: int) -> None:
        from tqdm import tqdm

        bar = self._bars.get(stage)
        if bar is None:
            bar = self._bars[stage] = tqdm(total=total, desc=f"{stage:>8}", leave=False, file=self.stream)
        bar.total = max(total, done)
        bar.n = done
        bar.refresh()

    def _plain(self, stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        start = self._started.setdefault(stage, now)
        finished = done >= total
        if not finished and now - self._last.get(stage, 0.0) < PLAIN_EVERY:
            return
        self._last[stage] = now
        elapsed = now - start
        eta = elapsed / done * (total - done) if done else float("nan")
        print(f"{stage} {done}/{total} elapsed {elapsed:.1f} s eta {eta:.1f} s", file=self.stream, flush=True)

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()


def make_progress(mode: str) -> Progress:
    return Progress(mode)
