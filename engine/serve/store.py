"""Jobs persisted in SQLite (WAL, one connection behind a lock) beside one folder per job.

A job's row is written before ``202`` is answered, so an accepted job survives a crash. The
restart rule (``recover``) runs once at start-up, before the worker: a job found ``running`` was
interrupted - it is queued again while it has runs left (``max_attempts``), else failed with the
reason; a job found ``deleting`` is finished off (files and row removed).
"""

from __future__ import annotations

import builtins
import json
import shutil
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STATES = ("queued", "running", "done", "failed", "deleting")
TERMINAL = ("done", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    state TEXT NOT NULL,
    stage TEXT NOT NULL DEFAULT '',
    done INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    options TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    timings TEXT NOT NULL DEFAULT '{}',
    error TEXT,
    note TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    num_frames INTEGER
)"""


@dataclass
class Job:
    id: str
    state: str
    options: dict[str, Any]
    created: float
    stage: str = ""
    done: int = 0
    total: int = 0
    started: float | None = None
    finished: float | None = None
    timings: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    note: str | None = None
    attempts: int = 0
    num_frames: int | None = None

    def public(self) -> dict[str, Any]:
        """What ``GET /v1/jobs/{id}`` answers."""
        out = {k: getattr(self, k) for k in ("id", "state", "stage", "done", "total", "created", "started",
                                              "finished", "timings", "error", "note", "attempts", "num_frames")}
        out["options"] = self.options
        if self.state == "done":
            out["result"] = f"/v1/jobs/{self.id}/result"
        return out


def parse_id(text: str) -> str | None:
    """The canonical form of a UUID the server made, or None (never a path taken from a client)."""
    try:
        return str(uuid.UUID(text))
    except (ValueError, AttributeError, TypeError):
        return None


class JobStore:
    def __init__(self, db: Path, jobs_dir: Path) -> None:
        self.jobs_dir = jobs_dir
        jobs_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(db), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")  # committed rows survive SIGKILL of the process
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def folder(self, job_id: str) -> Path:
        return self.jobs_dir / job_id

    # -- reads --------------------------------------------------------------------------------
    def get(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

    def list(self, limit: int = 100) -> list[Job]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs ORDER BY seq DESC LIMIT ?", (limit,)).fetchall()
        return [_job(r) for r in rows]

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        out = dict.fromkeys(STATES, 0)
        out.update({r[0]: r[1] for r in rows})
        return out

    def next_queued(self) -> Job | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE state = 'queued' ORDER BY seq LIMIT 1").fetchone()
        return _job(row) if row else None

    # -- writes -------------------------------------------------------------------------------
    def add(self, job_id: str, options: dict[str, Any], max_queue: int) -> int | None:
        """Insert a queued job unless ``max_queue`` jobs already wait; -> its queue position or None.
        Count and insert under one lock, so concurrent submissions cannot overshoot the limit."""
        with self._lock:
            waiting = self._db.execute("SELECT COUNT(*) FROM jobs WHERE state = 'queued'").fetchone()[0]
            if waiting >= max_queue:
                return None
            self._db.execute("INSERT INTO jobs (id, state, options, created) VALUES (?, 'queued', ?, ?)",
                             (job_id, json.dumps(options), time.time()))
            return waiting + 1

    def waiting(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM jobs WHERE state = 'queued'").fetchone()[0]

    def update(self, job_id: str, **values: Any) -> None:
        for key in ("timings",):
            if key in values:
                values[key] = json.dumps(values[key])
        cols = ", ".join(f"{k} = ?" for k in values)  # keys are ours, never a client's
        with self._lock:
            self._db.execute(f"UPDATE jobs SET {cols} WHERE id = ?", (*values.values(), job_id))

    def start(self, job_id: str) -> bool:
        """queued -> running (attempts + 1); False if it is no longer queued (deleted meanwhile)."""
        with self._lock:
            cur = self._db.execute(
                "UPDATE jobs SET state = 'running', started = ?, attempts = attempts + 1, stage = '', done = 0,"
                " total = 0 WHERE id = ? AND state = 'queued'", (time.time(), job_id))
            return cur.rowcount == 1

    def finish(self, job_id: str, **values: Any) -> bool:
        """running -> an end state; False when the job is no longer running (a DELETE marked it
        ``deleting`` meanwhile: the caller then removes it)."""
        if "timings" in values:
            values["timings"] = json.dumps(values["timings"])
        cols = ", ".join(f"{k} = ?" for k in values)
        with self._lock:
            cur = self._db.execute(f"UPDATE jobs SET {cols} WHERE id = ? AND state = 'running'",
                                   (*values.values(), job_id))
            return cur.rowcount == 1

    def mark_deleting(self, job_id: str) -> str | None:
        """-> the state the job was in (None if unknown); the row stays until ``remove``."""
        with self._lock:
            row = self._db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            self._db.execute("UPDATE jobs SET state = 'deleting' WHERE id = ?", (job_id,))
            return row[0]

    def remove(self, job_id: str) -> None:
        """Files first, then the row: a crash in between leaves a 'deleting' row that ``recover`` finishes."""
        shutil.rmtree(self.folder(job_id), ignore_errors=True)
        with self._lock:
            self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def recover(self, max_attempts: int) -> dict[str, builtins.list[str]]:
        """The restart rule (see the module docstring); -> ids per outcome."""
        out: dict[str, builtins.list[str]] = {"requeued": [], "failed": [], "removed": []}
        with self._lock:
            rows = self._db.execute("SELECT id, state, attempts FROM jobs WHERE state IN ('running', 'deleting') "
                                    "ORDER BY seq").fetchall()
        for job_id, state, attempts in rows:
            if state == "deleting":
                self.remove(job_id)
                out["removed"].append(job_id)
                continue
            clean_outputs(self.folder(job_id))  # a half-written result is never served
            if attempts < max_attempts:
                self.update(job_id, state="queued", stage="", done=0, total=0,
                            note=f"the server stopped during run {attempts}; queued again")
                out["requeued"].append(job_id)
            else:
                self.update(job_id, state="failed", finished=time.time(),
                            error=f"the server stopped while this job was running, {attempts} times; it is not "
                                  "retried again - resubmit it, perhaps with fewer frames or steps")
                out["failed"].append(job_id)
        return out


INPUTS = ("source", "driving")  # the upload files kept in a job's folder


def clean_outputs(folder: Path) -> None:
    """Remove everything in a job's folder but its inputs (results, temporary files of a killed run)."""
    if not folder.is_dir():
        return
    for p in folder.iterdir():
        if p.name not in INPUTS:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def _job(row: sqlite3.Row) -> Job:
    return Job(id=row["id"], state=row["state"], options=json.loads(row["options"]), created=row["created"],
               stage=row["stage"], done=row["done"], total=row["total"], started=row["started"],
               finished=row["finished"], timings=json.loads(row["timings"]), error=row["error"], note=row["note"],
               attempts=row["attempts"], num_frames=row["num_frames"])
