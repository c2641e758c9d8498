"""Prometheus metrics, one registry per app (no process-global state: several apps can share a
process, as the tests do). Job counts by state and the queue depth are read from the store at
scrape time, so they are right after a restart too."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

STAGE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 13, 20, 30)


class _JobsCollector(Collector):
    def __init__(self, counts: Callable[[], dict[str, int]]) -> None:
        self.counts = counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        counts = self.counts()
        jobs = GaugeMetricFamily("frvd_jobs", "Jobs in the store by state", labels=["state"])
        for state, n in counts.items():
            jobs.add_metric([state], n)
        yield jobs
        yield GaugeMetricFamily("frvd_job_queue_depth", "Jobs waiting to run", value=counts.get("queued", 0))


class FpsMeter:
    """Events per second over the last ``window`` seconds (read at scrape time)."""

    def __init__(self, window: float = 2.0) -> None:
        self.window = window
        self._times: deque[float] = deque()
        self._lock = threading.Lock()

    def tick(self) -> None:
        now = time.monotonic()
        with self._lock:
            self._times.append(now)
            self._prune(now)

    def _prune(self, now: float) -> None:
        while self._times and self._times[0] < now - self.window:
            self._times.popleft()

    def rate(self) -> float:
        with self._lock:
            self._prune(time.monotonic())
            return len(self._times) / self.window


class Metrics:
    def __init__(self, job_counts: Callable[[], dict[str, int]]) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        r.register(_JobsCollector(job_counts))
        self.jobs_submitted = Counter("frvd_jobs_submitted", "Jobs accepted (202)", registry=r)
        self.jobs_rejected = Counter("frvd_jobs_rejected", "Job submissions refused", ["status"], registry=r)
        self.jobs_finished = Counter("frvd_jobs_finished", "Jobs that ended", ["state"], registry=r)
        self.stage_seconds = Histogram("frvd_stage_seconds", "Seconds per pipeline stage, per job or stream session",
                                       ["kind", "stage"], buckets=STAGE_BUCKETS, registry=r)
        self.streams_active = Gauge("frvd_stream_sessions_active", "Open stream sessions", registry=r)
        self.streams = Counter("frvd_stream_sessions", "Stream sessions ended, by close code", ["code"], registry=r)
        self.frames_in = Counter("frvd_stream_frames_received", "Driving frames received", registry=r)
        self.frames_out = Counter("frvd_stream_frames_sent", "Result frames sent", registry=r)
        self.frames_dropped = Counter("frvd_stream_frames_dropped",
                                      "Driving frames dropped by the input queue's drop-oldest policy", registry=r)
        self.fps = FpsMeter()
        self.stream_fps = Gauge("frvd_stream_fps", "Result frames per second over the last 2 s, all sessions",
                                registry=r)
        self.stream_fps.set_function(self.fps.rate)
        self.frame_latency = Histogram("frvd_stream_frame_latency_seconds",
                                       "Receipt of a driving frame to its result being sent",
                                       buckets=LATENCY_BUCKETS, registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
