"""The open stream sessions of one server and their counters (held by the context, filled by streams)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from engine.serve.admission import Gate


@dataclass
class Stats:
    received: int = 0
    pushed: int = 0
    dropped: int = 0  # input frames dropped by the drop-oldest policy
    sent: int = 0
    dropped_out: int = 0  # results dropped because the client did not read them
    late: int = 0  # frames that arrived after the end message (ignored)
    started: float = field(default_factory=time.monotonic)
    first_sent: float | None = None
    latencies: list[float] = field(default_factory=list)  # seconds, last 1000

    def public(self) -> dict:
        lat = np.array(self.latencies) if self.latencies else None
        span = time.monotonic() - (self.first_sent or self.started)
        return {"received": self.received, "pushed": self.pushed, "dropped": self.dropped, "sent": self.sent,
                "dropped_out": self.dropped_out, "late": self.late,
                "seconds": round(time.monotonic() - self.started, 3),
                "fps": round((self.sent - 1) / span, 3) if self.sent > 1 and span > 0 else 0.0,
                "latency_p50_ms": round(float(np.percentile(lat, 50)) * 1000, 1) if lat is not None else None,
                "latency_p95_ms": round(float(np.percentile(lat, 95)) * 1000, 1) if lat is not None else None}


class Sessions:
    """The open sessions of one server (for stats and tests)."""

    def __init__(self, max_unauthenticated: int = 16) -> None:
        self.active: dict[str, Stats] = {}
        self.total = 0
        self.gate = Gate(max_unauthenticated)  # sockets not yet authenticated (see admission)
