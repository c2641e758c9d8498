"""The engines a server runs: one for jobs (its worker runs jobs in order) and a pool of
``max_streams`` for WebSocket sessions.

Why a pool and not one shared engine: a ``Reenactor`` runs one thing at a time and a stream holds
its lock until it is closed, so with one engine a second session (or any job) would wait for the
first to end. Each session therefore takes an engine of its own from the pool, or is refused at
once (close 4429) when all are taken - a live stream that waits in a queue is useless. Jobs never
wait on streams and streams never wait on jobs. The cost is one copy of the networks per slot:
negligible for ``tiny``; with the official weights on one GPU keep ``--max-streams`` small.
"""

from __future__ import annotations

import logging
import threading
import time

from engine.api import EngineOptions, Reenactor
from engine.serve.config import ServeConfig

log = logging.getLogger("engine.serve")


class Engines:
    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.jobs: Reenactor | None = None
        self._free: list[Reenactor] = []
        self._all: list[Reenactor] = []
        self._lock = threading.Lock()
        self.ready = threading.Event()
        self.error: str | None = None
        self.load_seconds = 0.0

    def _build(self) -> Reenactor:
        c = self.config
        return Reenactor.from_preset(c.preset, EngineOptions(size=c.size, device=c.device, dtype=c.dtype),
                                     weights=c.weights)

    def load(self) -> None:
        """Build every engine (blocking: run it in a thread); ``ready`` is set when all are loaded."""
        start = time.perf_counter()
        try:
            if self.config.job_engine:
                self.jobs = self._build()
            for _ in range(self.config.max_streams):
                engine = self._build()
                self._all.append(engine)
                self._free.append(engine)
        except Exception as err:  # noqa: BLE001 - reported by /readyz and in the log
            self.error = f"{type(err).__name__}: {err}"
            log.error("engines failed to load: %s", self.error)
            return
        self.load_seconds = time.perf_counter() - start
        log.info("engines ready: %d for jobs + %d for streams (%s, %dx%d) in %.1f s", int(self.config.job_engine),
                 self.config.max_streams, self.config.preset, self.size, self.size, self.load_seconds)
        self.ready.set()

    @property
    def size(self) -> int:
        engine = self.jobs or (self._all[0] if self._all else None)
        assert engine is not None, "engines not loaded"
        return engine.size

    def acquire_stream(self) -> Reenactor | None:
        """A free stream engine, or None when every slot is taken (never waits)."""
        with self._lock:
            return self._free.pop() if self._free else None

    def release_stream(self, engine: Reenactor) -> None:
        with self._lock:
            self._free.append(engine)

    @property
    def streams_busy(self) -> int:
        with self._lock:
            return len(self._all) - len(self._free)

    def close(self) -> None:
        for engine in [*self._all, *([self.jobs] if self.jobs else [])]:
            engine.close()
