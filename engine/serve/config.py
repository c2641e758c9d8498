"""What a server is started with: one frozen dataclass, built by ``__main__`` or a test."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_DATA = Path("serve-data")


@dataclass(frozen=True)
class ServeConfig:
    preset: str = "tiny"
    weights: Path | None = None
    size: int | None = None  # engine output side (None: the preset's); jobs may only ask for this one
    device: str = "cpu"
    dtype: str = "float32"
    data: Path = DEFAULT_DATA  # SQLite database + one folder per job + uploaded sources
    api_key: str | None = None  # None: no auth (only sensible on 127.0.0.1)
    cors_origins: tuple[str, ...] = ()  # empty: no CORS headers at all
    max_upload_mb: float = 64.0  # whole request body (all parts) / inline WebSocket source
    max_frames: int = 1000  # driving frames per job
    max_pixels: int = 4096 * 4096  # per driving frame / stream frame / source image
    max_queue: int = 16  # jobs waiting (queued, not running) before 429
    max_streams: int = 2  # concurrent WebSocket sessions (= stream engines in the pool)
    job_engine: bool = True  # False: no engine for offline jobs (Ray Serve replicas, whose /v1/jobs answer 409)
    stream_queue: int = 8  # per-session input frames waiting for the engine (see drop policy)
    idle_timeout: float = 30.0  # seconds without a client message before a stream is closed
    max_attempts: int = 2  # runs of one job across restarts before it is failed (crash-loop guard)
    max_steps: int = 100  # denoising steps one request may ask for (a guard against hogging the worker)
    default_steps: int | None = None  # RunOptions.steps when a client gives none (None: the release's)
    auth_timeout: float = 5.0  # seconds an unauthenticated WebSocket has to send its key
    max_unauthenticated: int = 16  # WebSockets open at once whose key is not yet checked
    header_timeout: float = 10.0  # seconds a connection has to deliver a request's headers
    source_ttl_hours: float = 24.0  # an uploaded source unused this long is removed (0: never)
    max_sources: int = 100  # uploaded sources kept at once (more: 429 until one is deleted or expires)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def db_path(self) -> Path:
        return self.data / "jobs.sqlite3"

    @property
    def jobs_dir(self) -> Path:
        return self.data / "jobs"

    @property
    def sources_dir(self) -> Path:
        return self.data / "sources"

    @property
    def tmp_dir(self) -> Path:
        return self.data / "tmp"
