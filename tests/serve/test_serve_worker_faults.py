"""The job worker in process, with real engines (tiny, 64 px) and a real SQLite store, and a fault
injected at the exact call the probe found failing (issue 20, defect 1): the worker survives, the
job is failed with its reason, later jobs run; a dead worker thread is restarted by its supervisor;
``readiness`` names what is not alive. Also the full-disk classification and source expiry."""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from serve_support import DRIVING, SOURCE

from engine.serve.app import readiness
from engine.serve.config import ServeConfig
from engine.serve.context import Context
from engine.serve.engines import Engines
from engine.serve.faults import DISK_FULL, is_disk_full, job_error
from engine.serve.metrics import Metrics
from engine.serve.options import JOB_FIELDS, parse
from engine.serve.sessions import Sessions
from engine.serve.sources import expire_sources
from engine.serve.store import JobStore
from engine.serve.worker import JobWorker

DISK_FULL_DB = sqlite3.OperationalError("database or disk is full")


@pytest.fixture(scope="module")
def engines() -> Iterator[Engines]:
    e = Engines(ServeConfig(size=64, default_steps=1, max_streams=0))
    e.load()
    assert e.ready.is_set(), e.error
    yield e
    e.close()


def _setup(tmp_path: Path, engines: Engines) -> tuple[ServeConfig, JobStore, JobWorker]:
    cfg = ServeConfig(size=64, default_steps=1, max_streams=0, data=tmp_path)
    store = JobStore(cfg.db_path, cfg.jobs_dir)
    worker = JobWorker(cfg, store, engines, Metrics(store.counts))
    return cfg, store, worker


def _add(cfg: ServeConfig, store: JobStore, engines: Engines, job_id: str) -> None:
    folder = store.folder(job_id)
    folder.mkdir(parents=True)
    shutil.copy(SOURCE, folder / "source")
    shutil.copy(DRIVING, folder / "driving")
    options = parse({"max_frames": "2"}, cfg, engines.size, JOB_FIELDS)
    assert store.add(job_id, {**options.to_json(), "names": {}}, 16) is not None


def _wait(store: JobStore, job_id: str, states: tuple[str, ...], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = store.get(job_id)
        if job is not None and job.state in states:
            return job.state
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} is {store.get(job_id)}, not {states} after {timeout} s")


def test_worker_survives_a_failed_finish_write(tmp_path: Path, engines: Engines) -> None:
    cfg, store, worker = _setup(tmp_path, engines)
    real_finish, calls = store.finish, []

    def finish(job_id: str, **values: object) -> bool:
        calls.append(values.get("state"))
        if len(calls) == 1:  # the first job's 'done' write hits a full disk (worker.py's finish path)
            raise DISK_FULL_DB
        return real_finish(job_id, **values)

    store.finish = finish  # type: ignore[method-assign]
    a, b = "00000000-0000-4000-8000-00000000000a", "00000000-0000-4000-8000-00000000000b"
    _add(cfg, store, engines, a)
    _add(cfg, store, engines, b)
    worker.start()
    try:
        assert _wait(store, b, ("done", "failed")) == "done"  # the loop went on
        job = store.get(a)
        assert job is not None and job.state == "failed" and job.error is not None and DISK_FULL in job.error
        assert sorted(p.name for p in store.folder(a).iterdir()) == ["driving", "source"]  # nothing half-written
        assert worker.alive and worker.failures == 1 and worker.restarts == 0
    finally:
        worker.stop()
        store.close()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the injected death
def test_dead_worker_is_restarted_and_reported(tmp_path: Path, engines: Engines) -> None:
    cfg, store, worker = _setup(tmp_path, engines)
    ctx = Context(cfg, store, engines, Metrics(store.counts), worker, Sessions())
    assert any("job worker is not running" in why for why in readiness(ctx))  # not started: not ready
    real_next, calls = store.next_queued, []

    def next_queued():  # the thread dies the first time: a BaseException escapes any worker loop
        calls.append(1)
        if len(calls) == 1:
            raise SystemExit("injected")
        return real_next()

    store.next_queued = next_queued  # type: ignore[method-assign]
    job_id = "00000000-0000-4000-8000-00000000000c"
    _add(cfg, store, engines, job_id)
    worker.start()
    try:
        assert _wait(store, job_id, ("done", "failed"), timeout=30) == "done"
        assert worker.restarts == 1 and worker.alive and readiness(ctx) == []
    finally:
        worker.stop()
        store.close()


def test_full_disk_is_recognised_through_wrappers() -> None:
    assert is_disk_full(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    assert is_disk_full(DISK_FULL_DB)
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("could not write the result") from inner
    except RuntimeError as outer:
        assert is_disk_full(outer) and DISK_FULL in job_error(outer)
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not is_disk_full(sqlite3.OperationalError("database is locked"))
    assert "internal error (ValueError)" in job_error(ValueError("x"))


def test_unused_sources_expire(tmp_path: Path) -> None:
    cfg = ServeConfig(data=tmp_path, source_ttl_hours=1.0)
    old, new = cfg.sources_dir / "old", cfg.sources_dir / "new"
    for folder in (old, new):
        folder.mkdir(parents=True)
        (folder / "source").write_bytes(b"x")
    hours_ago = time.time() - 2 * 3600
    os.utime(old, (hours_ago, hours_ago))
    assert expire_sources(cfg) == 1 and not old.exists() and new.exists()
    assert expire_sources(ServeConfig(data=tmp_path, source_ttl_hours=0), now=time.time() + 10**6) == 0
