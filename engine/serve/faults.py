"""Faults of the machine the server runs on, named for the client: a full disk (ENOSPC, a quota,
SQLite's "database or disk is full") is not an internal error but 507 with what to do, and a job
it stops fails with "no space left on device"."""

from __future__ import annotations

import errno
import sqlite3

from engine.serve.errors import ApiError

DISK_FULL = "no space left on device"
_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_TEXTS = ("no space left on device", "database or disk is full", "disk quota exceeded")
RETRY_AFTER = 60  # seconds a client is asked to wait before retrying after a 507


def is_disk_full(exc: BaseException | None) -> bool:
    """True when ``exc`` or anything it was raised from is a full disk (or quota)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _ERRNOS:
            return True
        if isinstance(exc, (OSError, sqlite3.Error)) and any(t in str(exc).lower() for t in _TEXTS):
            return True
        if any(t in str(exc).lower() for t in _TEXTS[:1]):  # wrapped by a library (PyAV, the engine)
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def disk_full_error() -> ApiError:
    return ApiError(507, "storage", f"{DISK_FULL}: the server's data folder is full",
                    "retry later; the operator must free space in the server's --data folder",
                    {"Retry-After": str(RETRY_AFTER)})


def job_error(exc: BaseException) -> str:
    """What a job that ended on an unexpected exception says about it."""
    if is_disk_full(exc):
        return f"{DISK_FULL}: the server's data folder filled up during this job; resubmit it once space is freed"
    return f"internal error ({type(exc).__name__}); the server log has the details"
