"""Jobs over HTTP on a real server: the happy path of every endpoint, each refusal's status and
JSON body, range requests, SSE, deletion."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
import uuid
from pathlib import Path

import av
import httpx
import pytest
from serve_support import DRIVING, SOURCE, Server, error_of, job_files, png_bytes, submit, wait_job

from engine.errors import InputError
from engine.io import iter_video_frames, probe_video


def test_health_ready_and_metrics(server: Server) -> None:
    with server.client() as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        ready = c.get("/readyz").json()
        assert ready["ready"] is True and ready["size"] == 64 and ready["streams"]["max"] == 4
        text = c.get("/metrics").text
    for name in ("frvd_jobs{state=\"done\"}", "frvd_job_queue_depth", "frvd_stream_fps", "frvd_stage_seconds",
                 "frvd_stream_frames_dropped_total", "frvd_stream_sessions_active"):
        assert name in text


def test_job_happy_path_events_result_range_delete(server: Server) -> None:
    with server.client() as c:
        r = submit(c, {"seed": "3", "side_by_side": "true", "mode": "exact"})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        assert r.headers["location"] == f"/v1/jobs/{job_id}"
        events = []
        with c.stream("GET", f"/v1/jobs/{job_id}/events") as sse:
            assert sse.headers["content-type"].startswith("text/event-stream")
            for line in sse.iter_lines():
                if line.startswith("event: "):
                    events.append(line[7:])
        assert events[0] == "progress" and events[-1] == "done" and "failed" not in events
        job = c.get(f"/v1/jobs/{job_id}").json()
        assert job["state"] == "done" and job["num_frames"] == 2 and job["attempts"] == 1
        assert job["options"]["run"]["seed"] == 3 and job["timings"]["total"] > 0
        assert any(j["id"] == job_id for j in c.get("/v1/jobs").json()["jobs"])

        whole = c.get(f"/v1/jobs/{job_id}/result")
        assert whole.status_code == 200 and whole.headers["content-type"] == "video/mp4"
        part = c.get(f"/v1/jobs/{job_id}/result", headers={"Range": "bytes=10-109"})
        assert part.status_code == 206 and part.content == whole.content[10:110]
        assert part.headers["content-range"] == f"bytes 10-109/{len(whole.content)}"
        path = server.data / "result.mp4"
        path.write_bytes(whole.content)
        with av.open(str(path)) as v:
            frame = next(v.decode(video=0))
            assert (frame.width, frame.height) == (3 * 64, 64)  # side by side: source | driving | result

        folder = server.data / "jobs" / job_id
        assert folder.is_dir()
        assert c.delete(f"/v1/jobs/{job_id}").json() == {"id": job_id, "state": "deleted"}
        assert not folder.exists()
        assert c.get(f"/v1/jobs/{job_id}").status_code == 404
        assert c.delete(f"/v1/jobs/{job_id}").status_code == 404


def test_delete_cancels_a_running_job_and_removes_its_files(server: Server) -> None:
    with server.client() as c:
        # 100 steps: minutes of work, so the job is surely still running when the delete arrives
        r = submit(c, {"max_frames": "20", "steps": "100"})
        job_id = r.json()["id"]
        wait_job(c, job_id, states=("running",))
        d = c.delete(f"/v1/jobs/{job_id}")
        assert d.status_code == 202, d.text  # cancelling: shown as 'deleting' until the run has stopped
        assert d.json()["state"] == "deleting"
        assert c.get(f"/v1/jobs/{job_id}/result").status_code in (404, 409)
        deadline = time.monotonic() + 60
        while c.get(f"/v1/jobs/{job_id}").status_code != 404 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert c.get(f"/v1/jobs/{job_id}").status_code == 404
        assert not (server.data / "jobs" / job_id).exists()


def test_unknown_and_malformed_ids_are_404_never_a_path(server: Server) -> None:
    with server.client() as c:
        for raw in ("00000000-0000-0000-0000-000000000000", "..%2F..%2Fetc%2Fpasswd", "not-a-uuid"):
            r = c.get(f"/v1/jobs/{raw}")
            assert r.status_code == 404 and error_of(r)["field"] in ("id", "path")
        assert c.get("/v1/jobs/00000000-0000-0000-0000-000000000000/result").status_code == 404


def test_result_before_done_is_409(server: Server) -> None:
    with server.client() as c:
        job_id = submit(c, {"max_frames": "8", "steps": "2"}).json()["id"]
        r = c.get(f"/v1/jobs/{job_id}/result")
        if r.status_code != 200:  # the job may (rarely) already be done on a fast machine
            assert r.status_code == 409 and error_of(r)["field"] == "state"
        wait_job(c, job_id)


def test_415_not_multipart_and_wrong_part_type(server: Server) -> None:
    with server.client() as c:
        r = c.post("/v1/jobs", json={"source": "x"})
        assert r.status_code == 415 and error_of(r)["field"] == "body"
        files = job_files()
        files["driving"] = ("clip.mp4", DRIVING.read_bytes(), "text/plain")
        r = c.post("/v1/jobs", files=files)
        assert r.status_code == 415 and error_of(r)["field"] == "driving"


def test_413_declared_size_frames_and_pixels(server: Server) -> None:
    with server.client() as c:
        big = {"source": ("s.png", SOURCE.read_bytes(), "image/png"),
               "driving": ("d.mp4", b"\0" * (3 << 19), "video/mp4")}  # 1.5 MiB > --max-upload-mb 1
        r = c.post("/v1/jobs", files=big)
        assert r.status_code == 413 and error_of(r)["field"] == "body"
        r = c.post("/v1/jobs", files=job_files())  # 28 frames > --max-frames 20
        e = error_of(r)
        assert r.status_code == 413 and e["field"] == "driving" and "28 frames" in e["message"]
        assert "max_frames" in e["hint"]
        r = c.post("/v1/jobs", files=job_files(), data={"max_frames": "21"})
        assert r.status_code == 413 and error_of(r)["field"] == "max_frames"
        files = job_files()
        files["source"] = ("wide.png", png_bytes((1000, 700)), "image/png")  # 700,000 px > 600,000
        r = c.post("/v1/jobs", files=files, data={"max_frames": "2"})
        assert r.status_code == 413 and error_of(r)["field"] == "source"


def test_413_while_receiving_a_chunked_body(server: Server) -> None:
    """No Content-Length: the server must answer once the limit is passed, not wait for the end."""
    boundary = "frvdtestboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"driving\"; filename=\"d.mp4\"\r\n"
            "Content-Type: video/mp4\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall((f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
                   f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n").encode())
        chunk = b"\0" * 65536
        s.sendall(b"%x\r\n%s\r\n" % (len(head), head))
        for _ in range(24):  # 1.5 MiB, then stop sending without ever finishing the body
            s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        reply = b""
        while b"\r\n\r\n" not in reply or b"}}" not in reply:
            data = s.recv(65536)
            if not data:
                break
            reply += data
    status = reply.split(b"\r\n", 1)[0]
    assert b" 413 " in status, reply[:300]
    body = json.loads(reply.split(b"\r\n\r\n", 1)[1].split(b"\r\n", 1)[-1].rsplit(b"}}", 1)[0] + b"}}")
    assert body["error"]["field"] == "driving"


def _cli_error(path: Path) -> str:
    """What the CLI says about a bad driving video: its header check, then its decoder."""
    with pytest.raises(InputError) as err:
        probe_video(path)
        sum(1 for _ in iter_video_frames(path, 64))
    return str(err.value)


def test_422_corrupt_video_has_the_cli_message(server: Server, tmp_path: Path) -> None:
    truncated = tmp_path / "broken.mp4"
    truncated.write_bytes(DRIVING.read_bytes()[: 20000])  # the index points past the end
    damaged = tmp_path / "damaged.mp4"  # a good header, garbage in the middle of the stream
    data = bytearray(DRIVING.read_bytes())
    data[len(data) // 2: len(data) // 2 + 4000] = b"\xff" * 4000
    damaged.write_bytes(bytes(data))
    for bad, word in ((truncated, "truncated"), (damaged, "corrupt")):
        with server.client() as c:
            r = c.post("/v1/jobs", files=job_files(driving=bad), data={"max_frames": "20"})
        e = error_of(r)
        assert r.status_code == 422 and e["field"] == "driving", r.text
        assert e["message"] == _cli_error(bad).replace(str(bad), bad.name)
        assert word in e["message"] and str(server.data) not in e["message"]


def test_422_names_the_bad_field(server: Server) -> None:
    cases = {"steps": "zero", "guidance": "nan", "seed": "-1", "sampler": "heun2", "size": "128",
             "side_by_side": "maybe", "colour": "blue"}
    with server.client() as c:
        for name, value in cases.items():
            r = submit(c, {name: value})
            assert r.status_code == 422, (name, r.text)
            assert error_of(r)["field"] == name, (name, r.text)
        files = job_files()
        files["source"] = ("notes.png", b"this is not an image", "image/png")
        r = c.post("/v1/jobs", files=files, data={"max_frames": "2"})
        assert r.status_code == 422 and error_of(r)["field"] == "source" and "notes.png" in error_of(r)["message"]
        r = c.post("/v1/jobs", files={"source": job_files()["source"]})
        assert r.status_code == 422 and error_of(r)["field"] == "driving"


def test_client_file_names_never_become_paths(server: Server) -> None:
    with server.client() as c:
        files = job_files()
        evil = f"evil-{uuid.uuid4().hex}.png"
        files["source"] = (f"../../../../{evil}", SOURCE.read_bytes(), "image/png")
        job_id = c.post("/v1/jobs", files=files, data={"max_frames": "2"}).json()["id"]
        wait_job(c, job_id)
    folder = server.data / "jobs" / job_id
    assert sorted(p.name for p in folder.iterdir()) == ["driving", "result.json", "result.mp4", "source"]
    # where the name would land if it were joined to the job's folder (four levels up), and anywhere
    # below that folder: no file of that name
    landing = Path(os.path.normpath(folder / f"../../../../{evil}"))
    assert not landing.exists(), landing
    assert not list(landing.parent.rglob(evil))


def test_load_20_concurrent_submissions_complete_or_429(server: Server) -> None:
    """Every submission is accepted and completes, or is refused with 429; none lost or duplicated."""
    from concurrent.futures import ThreadPoolExecutor

    with server.client() as c:
        before = {j["id"] for j in c.get("/v1/jobs", params={"limit": 1000}).json()["jobs"]}

    def one(i: int) -> tuple[int, str | None]:
        with server.client() as c:
            r = submit(c, {"seed": str(i), "max_frames": "1"})
            return r.status_code, r.json().get("id")

    with ThreadPoolExecutor(20) as pool:
        replies = list(pool.map(one, range(20)))
    statuses = [s for s, _ in replies]
    accepted = [i for s, i in replies if s == 202]
    assert set(statuses) <= {202, 429} and statuses.count(429) >= 1 and accepted, statuses
    assert len(set(accepted)) == len(accepted)
    with server.client() as c:
        for job_id in accepted:
            assert wait_job(c, job_id, timeout=180)["state"] == "done"
        after = [j["id"] for j in c.get("/v1/jobs", params={"limit": 1000}).json()["jobs"] if j["id"] not in before]
        metrics = c.get("/metrics").text
    assert sorted(after) == sorted(accepted)  # none lost, none made up, none twice
    assert 'frvd_jobs_rejected_total{status="429"}' in metrics
    digests = set()
    for job_id in accepted:
        digests.add(hashlib.sha256((server.data / "jobs" / job_id / "result.mp4").read_bytes()).hexdigest())
    assert len(digests) == len(accepted)  # each its own seed, its own result


def test_429_with_retry_after_when_the_queue_is_full(server: Server) -> None:
    with server.client() as c:
        ids = []
        for i in range(12):  # the worker takes one; --max-queue 4 wait; the rest are refused
            r = submit(c, {"seed": str(100 + i), "max_frames": "4"})
            if r.status_code == 429:
                e = error_of(r)
                assert e["field"] == "queue" and r.headers["retry-after"]
                break
            ids.append(r.json()["id"])
        else:
            pytest.fail("the queue never filled")
        for job_id in ids:
            wait_job(c, job_id, timeout=180)


def test_http_errors_are_json_not_html(server: Server) -> None:
    with httpx.Client(base_url=server.url) as c:
        r = c.get("/v1/jobs", params={"limit": "many"})
        assert r.status_code == 422 and error_of(r)["field"] == "limit"
