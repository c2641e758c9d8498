"""The state one server holds, passed explicitly (``app.state.ctx``): no module-level globals."""

from __future__ import annotations

from dataclasses import dataclass

from engine.serve.config import ServeConfig
from engine.serve.engines import Engines
from engine.serve.metrics import Metrics
from engine.serve.sessions import Sessions
from engine.serve.store import JobStore
from engine.serve.worker import JobWorker


@dataclass
class Context:
    config: ServeConfig
    store: JobStore
    engines: Engines
    metrics: Metrics
    worker: JobWorker
    sessions: Sessions
