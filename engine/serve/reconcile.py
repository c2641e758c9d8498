"""Start-up: open the jobs database, then make the disk and the database agree.

- A database that cannot be opened (garbage, half-truncated: SQLite's ``quick_check`` fails), or an
  empty/missing one beside existing job folders (its rows are lost), is **moved aside** with the
  job folders into ``DATA/aside-<UTC time>/`` with a warning naming both and what to do; the
  server then starts clean. Nothing is deleted: the operator can inspect or restore it.
- A job folder without a row (an upload cut off by a crash, before its row was written) is removed.
- A row whose inputs are gone (or a done job whose result is gone) is failed with the reason.
- Uploaded sources are written under ``DATA/tmp`` and renamed into ``DATA/sources`` when complete,
  so ``tmp`` (cleared here) holds every incomplete upload; a source folder without its file is removed.
Each count is logged (a warning when anything was found).
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import time
from pathlib import Path

from engine.serve.config import ServeConfig
from engine.serve.store import INPUTS, JobStore

log = logging.getLogger("engine.serve")
RESULT = "result.mp4"


def _unreadable(db: Path) -> str | None:
    """Why the database cannot be used (None: it can, or it does not exist yet)."""
    if not db.exists():
        return None
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            rows = con.execute("PRAGMA quick_check").fetchall()
        finally:
            con.close()
    except sqlite3.Error as err:
        return f"{type(err).__name__}: {err}"
    problems = [r[0] for r in rows if r[0] != "ok"]
    return f"quick_check: {'; '.join(problems[:3])}" if problems else None


def _has_jobs_table(db: Path) -> bool:
    if not db.exists() or db.stat().st_size == 0:
        return False
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'jobs'").fetchone() is not None
    finally:
        con.close()


def _move_aside(config: ServeConfig, why: str) -> Path:
    aside = config.data / time.strftime("aside-%Y%m%dT%H%M%SZ", time.gmtime())
    aside.mkdir(parents=True, exist_ok=True)
    db = config.db_path
    for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm"), config.jobs_dir):
        if path.exists():
            shutil.move(str(path), str(aside / path.name))
    config.jobs_dir.mkdir(parents=True, exist_ok=True)
    log.warning("%s: %s. Moved it and the job folders to %s; the server starts with no jobs. Inspect or restore "
                "them from there (e.g. sqlite3 %s '.recover'), or delete that folder once not needed.",
                db, why, aside, aside / db.name)
    return aside


def open_store(config: ServeConfig) -> JobStore:
    """The jobs database, opened; an unusable one is moved aside first (see the module docstring)."""
    config.jobs_dir.mkdir(parents=True, exist_ok=True)
    why = _unreadable(config.db_path)
    if why is None and not _has_jobs_table(config.db_path):
        folders = sum(1 for _ in config.jobs_dir.iterdir())
        if folders:
            why = f"the database is missing or empty but {folders} job folders exist (their records are lost)"
    if why is not None:
        _move_aside(config, f"cannot be used ({why})")
    return JobStore(config.db_path, config.jobs_dir)


def sweep(config: ServeConfig, store: JobStore) -> dict[str, int]:
    """Make the disk and the database agree (after ``store.recover``); -> counts per action."""
    counts = {"incomplete_uploads": 0, "orphan_folders": 0, "lost_jobs": 0, "broken_sources": 0}
    if config.tmp_dir.exists():
        counts["incomplete_uploads"] = sum(1 for _ in config.tmp_dir.iterdir())
        shutil.rmtree(config.tmp_dir, ignore_errors=True)
    config.tmp_dir.mkdir(parents=True, exist_ok=True)
    jobs = {job.id: job for job in store.list(2**62)}
    for folder in config.jobs_dir.iterdir():
        if folder.name not in jobs:
            shutil.rmtree(folder, ignore_errors=True) if folder.is_dir() else folder.unlink(missing_ok=True)
            counts["orphan_folders"] += 1
    for job in jobs.values():
        folder = store.folder(job.id)
        missing = [name for name in INPUTS if not (folder / name).is_file()]
        if job.state == "done" and not (folder / RESULT).is_file():
            missing.append(RESULT)
        if job.state in ("queued", "done") and missing:
            store.update(job.id, state="failed", finished=time.time(), stage="",
                         error=f"its files ({', '.join(missing)}) were gone when the server started (removed "
                               "outside the server?); resubmit it")
            counts["lost_jobs"] += 1
    for folder in config.sources_dir.iterdir():
        if not (folder / "source").is_file():
            shutil.rmtree(folder, ignore_errors=True) if folder.is_dir() else folder.unlink(missing_ok=True)
            counts["broken_sources"] += 1
    (log.warning if any(counts.values()) else log.info)(
        "start-up sweep: %d incomplete uploads, %d job folders without a record removed; %d jobs whose files "
        "were gone failed; %d broken sources removed", counts["incomplete_uploads"], counts["orphan_folders"],
        counts["lost_jobs"], counts["broken_sources"])
    return counts
