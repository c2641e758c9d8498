"""Crashes, corrupt state and a full disk on a real server (issue 20): the start-up sweep after a
SIGKILL in the middle of uploads, an unusable database moved aside, and a full disk on a small
tmpfs the test mounts (root only; the worker's exact database call is covered in process by
test_serve_worker_faults.py)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from serve_support import DRIVING, SOURCE, Server, error_of, submit, wait_job

from engine.serve.config import ServeConfig

ARGS = ["--size", "64", "--default-steps", "1", "--max-streams", "1"]
BOUNDARY = "frvd-test-boundary"


def _part_head(name: str, filename: str, ctype: str) -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: {ctype}\r\n\r\n").encode()


def _stalled_upload(server: Server, path: str, body: bytes, total: int) -> socket.socket:
    """Send the headers and ``body`` (the start of a ``total``-byte multipart body), then stall."""
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    s.sendall((f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
               f"Content-Length: {total}\r\n\r\n").encode() + body)
    return s


def _wait_for(predicate, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_sweep_after_sigkill_mid_upload_and_a_database_moved_aside(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = Server(data, ARGS).start()
    sockets = []
    try:
        with first.client() as c:
            done_id = submit(c).json()["id"]
            assert wait_job(c, done_id)["state"] == "done"
        drv = DRIVING.read_bytes()
        job_body = _part_head("source", "face.png", "image/png") + SOURCE.read_bytes() + b"\r\n" + \
            _part_head("driving", "clip.mp4", "video/mp4") + drv[: len(drv) // 2]
        sockets.append(_stalled_upload(first, "/v1/jobs", job_body, len(job_body) + len(drv)))
        src_body = _part_head("source", "face.png", "image/png") + SOURCE.read_bytes()[:50_000]
        sockets.append(_stalled_upload(first, "/v1/sources", src_body, len(src_body) + 300_000))
        jobs_dir, tmp_dir = data / "jobs", data / "tmp"
        _wait_for(lambda: any((f / "driving").is_file() and (f / "driving").stat().st_size > 0
                              for f in jobs_dir.iterdir() if f.name != done_id))
        _wait_for(lambda: any(tmp_dir.iterdir()))
    finally:
        first.kill(signal.SIGKILL)
        for s in sockets:
            s.close()
    assert len(list(jobs_dir.iterdir())) == 2  # the done job and the cut-off upload (no row)
    (jobs_dir / done_id / "result.mp4").unlink(missing_ok=True)  # its result gone (removed outside)

    second = Server(data, ARGS).start()
    try:
        assert [f.name for f in jobs_dir.iterdir()] == [done_id]
        assert list(tmp_dir.iterdir()) == [] and list((data / "sources").iterdir()) == []
        with second.client() as c:
            job = c.get(f"/v1/jobs/{done_id}").json()
            assert job["state"] == "failed" and "result.mp4" in job["error"] and "gone" in job["error"], job
    finally:
        second.kill(signal.SIGTERM)
    log = second.log_text()
    assert "1 incomplete uploads, 1 job folders without a record removed; 1 jobs whose files were gone" in log, log

    (data / "jobs.sqlite3").write_bytes(b"this is not a database " * 200)  # garbage
    third = Server(data, ARGS).start()  # starts clean, with a warning naming the file and where it went
    try:
        with third.client() as c:
            assert c.get("/v1/jobs").json()["jobs"] == []
    finally:
        third.kill(signal.SIGTERM)
    asides = list(data.glob("aside-*"))
    assert len(asides) == 1 and (asides[0] / "jobs.sqlite3").is_file() and (asides[0] / "jobs" / done_id).is_dir()
    assert "jobs.sqlite3: cannot be used" in third.log_text() and str(asides[0]) in third.log_text()


def _db_with_jobs(data: Path, n: int = 3) -> ServeConfig:
    from engine.serve.reconcile import open_store

    cfg = ServeConfig(data=data)
    store = open_store(cfg)
    for i in range(n):
        job_id = f"00000000-0000-4000-8000-{i:012d}"
        store.add(job_id, {"x": "y" * 3000}, 100)
        store.folder(job_id).mkdir()
    store.close()
    return cfg


@pytest.mark.parametrize("damage", ["half", "empty"])
def test_an_unusable_database_is_moved_aside(tmp_path: Path, damage: str) -> None:
    from engine.serve.reconcile import open_store

    cfg = _db_with_jobs(tmp_path)
    raw = cfg.db_path.read_bytes()
    cfg.db_path.write_bytes(raw[: len(raw) // 2] if damage == "half" else b"")
    store = open_store(cfg)
    try:
        assert store.list() == [] and list(cfg.jobs_dir.iterdir()) == []
    finally:
        store.close()
    (aside,) = tmp_path.glob("aside-*")
    assert len(list((aside / "jobs").iterdir())) == 3 and (aside / "jobs.sqlite3").exists()
    store = open_store(cfg)  # a healthy database is left alone
    store.close()
    assert len(list(tmp_path.glob("aside-*"))) == 1


# ------------------------------------------------------------------------------ a full disk
@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs (needs root: skipped otherwise)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(folder: Path) -> Path:
    filler = folder / "filler"
    with filler.open("wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 16))
                f.flush()
        except OSError:
            pass
    for i in range(64):  # and the last partial blocks
        try:
            (folder / f"filler-{i}").write_bytes(b"\0" * 512)
        except OSError:
            break
    return filler


def _unfill(folder: Path) -> None:
    for p in folder.glob("filler*"):
        p.unlink()


def test_full_disk(small_disk: Path) -> None:
    server = Server(small_disk / "data", [*ARGS, "--max-frames", "40"]).start()
    try:
        with server.client() as c:
            long_id = submit(c, {"max_frames": "30", "steps": "2"}).json()["id"]
            short_id = submit(c).json()["id"]
            _fill(small_disk)
            r = submit(c)
            assert r.status_code == 507 and error_of(r)["field"] == "storage", r.text
            assert "no space left on device" in error_of(r)["message"] and r.headers["retry-after"]
            r = c.post("/v1/sources", files={"source": ("face.png", SOURCE.read_bytes(), "image/png")})
            assert r.status_code == 507, r.text
            ready = c.get("/readyz")
            assert ready.status_code == 503 and any("no space" in why for why in ready.json()["reasons"])
            time.sleep(3)  # the jobs meet the full disk
            _unfill(small_disk)
            ends = {i: wait_job(c, i, timeout=120) for i in (long_id, short_id)}
            failed = [j for j in ends.values() if j["state"] == "failed"]
            assert failed, ends  # at least one job ran into the full disk
            for job in failed:
                assert "no space left on device" in job["error"], job
                assert sorted(p.name for p in (small_disk / "data" / "jobs" / job["id"]).iterdir()) == \
                    ["driving", "source"]
            ids = {j["id"] for j in c.get("/v1/jobs").json()["jobs"]}
            assert ids == {long_id, short_id}  # the refused uploads left nothing
            assert list((small_disk / "data" / "tmp").iterdir()) == []
            assert c.get("/readyz").status_code == 200
            again = submit(c).json()["id"]  # work resumes once space is back
            assert wait_job(c, again)["state"] == "done"
    finally:
        server.kill(signal.SIGKILL)
    assert "Traceback" not in server.log_text() or "no space" in server.log_text()
