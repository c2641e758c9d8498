"""The state one server holds, passed explicitly (``app.state.ctx``): no module-level globals."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.serve.config import ServeConfig
from engine.serve.engines import Engines
from engine.serve.metrics import Metrics
from engine.serve.store import JobStore

if TYPE_CHECKING:
    from engine.serve.jobs import JobWorker
    from engine.serve.streams import Sessions


@dataclass
class Context:
    config: ServeConfig
    store: JobStore
    engines: Engines
    metrics: Metrics
    worker: JobWorker
    sessions: Sessions
