"""The job worker: one thread per server (one device), running queued jobs in submission order on
the jobs engine. Progress goes to memory at once and to SQLite at most once a second (and at
every stage change), so a reader after a crash sees roughly where the job was.

Nothing in one job's life stops the worker: an exception anywhere (a database write on a full disk
included) is logged once, the job is failed with its reason (retried until that write succeeds)
and the loop goes on after a back-off. A supervisor thread restarts the worker thread should it
die anyway, and runs the periodic housekeeping (expired stored sources)."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from engine.api import RunControl
from engine.errors import EngineError
from engine.runtime import Cancelled
from engine.serve.config import ServeConfig
from engine.serve.engines import Engines
from engine.serve.faults import is_disk_full, job_error
from engine.serve.metrics import Metrics
from engine.serve.options import JobOptions
from engine.serve.store import Job, JobStore, clean_outputs

log = logging.getLogger("engine.serve")
RESULT = "result.mp4"  # render writes it and result.json atomically (temporary file, then rename)
BACKOFF = (0.5, 30.0)  # seconds: the first wait after a failure, doubled on each repeat up to the last
SUPERVISE_EVERY = 1.0  # seconds between the supervisor's looks at the worker thread


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
        self.restarts = 0  # worker threads the supervisor restarted
        self.failures = 0  # exceptions the loop survived
        self.last_error: str | None = None  # the last one (cleared by the next job that runs)
        self._job: str | None = None  # the job this worker has taken (started) and not yet ended
        self._unsettled: tuple[str, str] | None = None  # (job, error) whose failure is not yet recorded
        self.housekeeping: list[tuple[float, Callable[[], object]]] = []  # (every s, call) run by the supervisor
        self._supervisor = threading.Thread(target=self._supervise, name="frvd-jobs-supervisor", daemon=True)

    def start(self) -> None:
        self.thread.start()
        self._supervisor.start()

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

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
        if self._supervisor.is_alive():
            self._supervisor.join(timeout=5)

    def cancel(self, job_id: str) -> bool:
        with self._lock:
            if self._current is not None and self._current[0] == job_id:
                self._current[1].cancel()
                return True
        return False

    def _run(self) -> None:
        while not self._stop.is_set() and not self.engines.ready.wait(0.2):
            pass
        delay = 0.0
        while not self._stop.is_set():
            try:
                self._settle()
                job = self.store.next_queued()
                if job is None:
                    self._wake.wait(1.0)
                    self._wake.clear()
                elif self.store.start(job.id):
                    self._job = job.id
                    self._execute(job)
                    self._job = None
                delay, self.last_error = 0.0, None
            except Exception as err:  # noqa: BLE001 - nothing in one job's life may stop the worker
                delay = min(max(2 * delay, BACKOFF[0]), BACKOFF[1])
                self._survived(err, delay)
                self._stop.wait(delay)

    def _survived(self, err: Exception, delay: float) -> None:
        """Log a failure once (repeats while it lasts are counted, not logged) and fail its job."""
        self.failures += 1
        text = f"{type(err).__name__}: {err}"
        if text != self.last_error:
            log.error("job worker: %s (job %s); retrying in %.1f s", text, self._job, delay,
                      exc_info=None if is_disk_full(err) else err)
        self.last_error = text
        if self._job is not None:
            self._unsettled, self._job = (self._job, job_error(err)), None

    def _settle(self) -> None:
        """Record the failure of a job whose end could not be written (raises while it still cannot)."""
        if self._unsettled is None:
            return
        job_id, error = self._unsettled
        clean_outputs(self.store.folder(job_id))  # nothing half-written stays
        if self.store.finish(job_id, state="failed", finished=time.time(), error=error, stage=""):
            self.metrics.jobs_finished.labels("failed").inc()
        elif (job := self.store.get(job_id)) is not None and job.state == "deleting":
            self.store.remove(job_id)
        self._unsettled = None

    def _supervise(self) -> None:
        """Restart the worker thread if it died (it should not: see ``_run``), and run the housekeeping."""
        last: dict[int, float] = {}
        while not self._stop.wait(SUPERVISE_EVERY):
            if not self.thread.is_alive() and not self._stop.is_set():
                self.restarts += 1
                log.error("the job worker thread died; restarting it (restart %d)", self.restarts)
                if self._job is not None:
                    self._unsettled, self._job = (self._job, "internal error: the job worker stopped during "
                                                  "this job; resubmit it"), None
                self.thread = threading.Thread(target=self._run, name="frvd-jobs", daemon=True)
                self.thread.start()
            for i, (every, call) in enumerate(self.housekeeping):
                if time.monotonic() - last.get(i, 0.0) >= every:
                    last[i] = time.monotonic()
                    try:
                        call()
                    except Exception:  # noqa: BLE001 - housekeeping must not stop the supervisor
                        log.exception("housekeeping failed")

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
                try:  # progress is also in memory: a failed write (full disk) must not stop the render
                    self.store.update(job.id, stage=stage, done=done, total=total)
                except sqlite3.Error as err:
                    log.debug("job %s: progress not written (%s)", job.id, err)

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
            clean_outputs(folder)
            self._ended(job, "failed", job_error(err) if is_disk_full(err) else _shown(str(err), folder, names))
        except Exception as err:  # noqa: BLE001 - a job's failure must not stop the worker
            log.error("job %s failed: %s: %s", job.id, type(err).__name__, err,
                      exc_info=None if is_disk_full(err) else err)  # a full disk needs no traceback
            clean_outputs(folder)  # nothing half-written stays
            self._ended(job, "failed", job_error(err))
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
