"""The job worker: one thread per server (one device), running queued jobs in submission order on
the jobs engine. Progress goes to memory at once and to SQLite at most once a second (and at
every stage change), so a reader after a crash sees roughly where the job was."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from engine.api import RunControl
from engine.errors import EngineError
from engine.runtime import Cancelled
from engine.serve.config import ServeConfig
from engine.serve.engines import Engines
from engine.serve.metrics import Metrics
from engine.serve.options import JobOptions
from engine.serve.store import Job, JobStore, clean_outputs

log = logging.getLogger("engine.serve")
RESULT = "result.mp4"  # render writes it and result.json atomically (temporary file, then rename)


class JobWorker:
    def __init__(self, config: ServeConfig, store: JobStore, engines: Engines, metrics: Metrics) -> None:
        self.config, self.store, self.engines, self.metrics = config, store, engines, metrics
        self.live: dict[str, tuple[str, int, int]] = {}  # running job -> (stage, done, total)
        self._current: tuple[str, RunControl] | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="frvd-jobs", daemon=True)
        self.completed = 0

    def start(self) -> None:
        self.thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        """Graceful stop: the running job is cancelled and queued again (not counted as a run)."""
        self._stop.set()
        self._wake.set()
        with self._lock:
            if self._current is not None:
                self._current[1].cancel()
        self.thread.join(timeout=60)

    def cancel(self, job_id: str) -> bool:
        with self._lock:
            if self._current is not None and self._current[0] == job_id:
                self._current[1].cancel()
                return True
        return False

    def _run(self) -> None:
        while not self._stop.is_set() and not self.engines.ready.wait(0.2):
            pass
        while not self._stop.is_set():
            job = self.store.next_queued()
            if job is None:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            if self.store.start(job.id):
                self._execute(job)

    def _execute(self, job: Job) -> None:
        folder = self.store.folder(job.id)
        clean_outputs(folder)
        options = JobOptions.from_json(job.options)
        names: dict[str, str] = job.options.get("names", {})
        last_write: list[tuple[float, str]] = [(0.0, "")]

        def progress(stage: str, done: int, total: int) -> None:
            self.live[job.id] = (stage, done, total)
            now = time.monotonic()
            last_time, last_stage = last_write[0]
            if stage != last_stage or now - last_time > 1.0 or done == total:
                last_write[0] = (now, stage)
                self.store.update(job.id, stage=stage, done=done, total=total)

        control = RunControl(progress=progress)
        with self._lock:
            self._current = (job.id, control)
        current = self.store.get(job.id)
        if current is None or current.state != "running":  # deleted between start() and here
            control.cancel()
        limit = min(options.max_frames or self.config.max_frames, self.config.max_frames)
        assert self.engines.jobs is not None
        try:
            result = self.engines.jobs.render(
                folder / "source", folder / "driving", out=folder / RESULT, options=options.run, control=control,
                max_frames=limit, side_by_side_with_inputs=options.side_by_side)
        except Cancelled:
            self._ended(job, "cancelled", None)
        except EngineError as err:
            self._ended(job, "failed", _shown(str(err), folder, names))
        except Exception as err:  # noqa: BLE001 - a job's failure must not stop the worker
            log.exception("job %s failed", job.id)
            self._ended(job, "failed", f"internal error ({type(err).__name__}); the server log has the details")
        else:
            for stage, seconds in result.seconds.items():
                if stage != "total":
                    self.metrics.stage_seconds.labels("job", stage).observe(seconds)
            if self.store.finish(job.id, state="done", finished=time.time(), timings=result.seconds,
                                 num_frames=result.num_frames, stage="done"):
                self.metrics.jobs_finished.labels("done").inc()
                self.completed += 1
            else:
                self.store.remove(job.id)
        finally:
            with self._lock:
                self._current = None
            self.live.pop(job.id, None)

    def _ended(self, job: Job, how: str, error: str | None) -> None:
        if how == "cancelled" and self._stop.is_set():  # server shutting down: run it again next start
            if self.store.finish(job.id, state="queued", attempts=job.attempts, stage="",
                                 note="the server was stopped during this job; queued again"):
                return
        if how == "failed" and self.store.finish(job.id, state="failed", finished=time.time(), error=error):
            self.metrics.jobs_finished.labels("failed").inc()
            return
        self.store.remove(job.id)  # cancelled by DELETE (the row says 'deleting')


def _shown(message: str, folder: Path, names: dict[str, str]) -> str:
    """Server paths in a message replaced by the client's file names (as in the CLI's messages)."""
    for field in ("source", "driving"):
        message = message.replace(str(folder / field), names.get(field, field))
    return message.replace(str(folder), "")
