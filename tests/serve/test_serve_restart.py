"""The restart rule on a real server killed with SIGKILL in the middle of a job: finished results
intact, queued jobs kept, the interrupted job run again (never lost), no half-written file served."""

from __future__ import annotations

import hashlib
import signal
import time
from pathlib import Path

import av
from serve_support import Server, submit, wait_job

ARGS = ["--size", "64", "--default-steps", "1", "--max-frames", "40", "--max-streams", "1"]


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_sigkill_mid_job_then_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = Server(data, ARGS).start()
    try:
        with first.client() as c:
            done_id = submit(c, {"max_frames": "2"}).json()["id"]
            assert wait_job(c, done_id)["state"] == "done"
            done_bytes = c.get(f"/v1/jobs/{done_id}/result").content
            long_id = submit(c, {"max_frames": "28", "steps": "3"}).json()["id"]
            queued_id = submit(c, {"max_frames": "2", "seed": "5"}).json()["id"]
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:  # kill it once the long job is well into its run
                job = c.get(f"/v1/jobs/{long_id}").json()
                if job["state"] == "running" and job["stage"] in ("denoise", "decode"):
                    break
                time.sleep(0.05)
            assert job["state"] == "running", job
            assert c.get(f"/v1/jobs/{queued_id}").json()["state"] == "queued"
    finally:
        first.kill(signal.SIGKILL)

    second = Server(data, ARGS).start()
    try:
        with second.client() as c:
            kept = c.get(f"/v1/jobs/{done_id}").json()
            assert kept["state"] == "done" and kept["attempts"] == 1
            assert _digest(c.get(f"/v1/jobs/{done_id}/result").content) == _digest(done_bytes)
            part = c.get(f"/v1/jobs/{done_id}/result", headers={"Range": "bytes=0-63"})
            assert part.status_code == 206 and part.content == done_bytes[:64]

            again = c.get(f"/v1/jobs/{long_id}").json()
            assert again["state"] in ("queued", "running") and "stopped" in again["note"], again
            served = c.get(f"/v1/jobs/{long_id}/result")  # not done: nothing is served, half-written or not
            assert served.status_code == 409
            finished = wait_job(c, long_id, timeout=180)
            assert finished["state"] == "done" and finished["attempts"] == 2 and finished["num_frames"] == 28
            video = data / "jobs" / long_id / "result.mp4"
            with av.open(str(video)) as v:
                assert sum(1 for _ in v.decode(video=0)) == 28
            assert sorted(p.name for p in video.parent.iterdir()) == ["driving", "result.json", "result.mp4",
                                                                      "source"]
            assert wait_job(c, queued_id, timeout=120)["state"] == "done"
            ids = [j["id"] for j in c.get("/v1/jobs").json()["jobs"]]
            assert sorted(ids) == sorted([done_id, long_id, queued_id])
    finally:
        second.kill(signal.SIGTERM)
