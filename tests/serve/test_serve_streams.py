"""``WS /v1/stream`` on a real server: frames in, frames out with their headers, the drop policy and
its counters, every close code, four concurrent sessions, and memory over 50 sessions."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
from serve_support import (
    SOURCE,
    Server,
    clip_frames,
    closed_with,
    jpeg,
    open_stream,
    png_bytes,
    run_stream,
)

from engine.serve.protocol import pack_in


def _source_id(server: Server) -> str:
    with server.client() as c:
        r = c.post("/v1/sources", files={"source": ("face.png", SOURCE.read_bytes(), "image/png")})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def test_stream_round_trip_with_an_uploaded_source(server: Server) -> None:
    frames = clip_frames(10)
    ws, ready = open_stream(server, source={"id": _source_id(server)}, options={"steps": 1, "seed": 2})
    assert ready["type"] == "ready" and ready["size"] == 64 and ready["queue"] == "block"
    run = run_stream(ws, frames)
    assert run.close_code == 1000, run
    assert [r[0] for r in run.results] == list(range(10))  # every frame, in order, each once
    assert [r[1] for r in run.results] == [float(i) for i in range(10)]  # capture timestamps echoed
    assert all(r[2] > 0 for r in run.results)  # server latency in ms
    assert all(r[3].shape == (64, 64, 3) and r[3].std() > 1 for r in run.results)
    stats = run.done["stats"]
    assert stats["received"] == stats["pushed"] == stats["sent"] == 10 and stats["dropped"] == 0


def test_inline_source_and_bare_jpeg_frames(server: Server) -> None:
    ws, ready = open_stream(server)  # the source inline, base64
    assert ready["type"] == "ready"
    for f in clip_frames(3):
        ws.send(jpeg(f))  # no FRVI header: the timestamp echoes as NaN
    ws.send(json.dumps({"type": "end"}))
    code, _, texts = closed_with(ws)
    assert code == 1000 and texts[-1]["type"] == "done" and texts[-1]["stats"]["sent"] == 3


def test_drop_oldest_bounds_the_queue_and_counts_drops(server: Server) -> None:
    frames = clip_frames(28) + clip_frames(12)
    ws, ready = open_stream(server, queue="drop_oldest")
    assert ready["queue"] == "drop_oldest" and ready["max_queue"] == 4
    run = run_stream(ws, frames)  # sent at once: far faster than the engine takes them
    stats = run.done["stats"]
    assert stats["received"] == 40 and stats["dropped"] > 0
    assert stats["pushed"] == stats["sent"] == 40 - stats["dropped"] == len(run.results)
    indices = [r[0] for r in run.results]
    assert indices == sorted(set(indices)) and indices[-1] == 39  # the newest frame always survives
    with server.client() as c:
        text = c.get("/metrics").text
    dropped = next(line for line in text.splitlines() if line.startswith("frvd_stream_frames_dropped_total"))
    assert float(dropped.split()[-1]) >= stats["dropped"]


def test_bad_start_messages_close_with_their_codes(server: Server) -> None:
    cases = [
        ({"source": {"id": "00000000-0000-0000-0000-000000000000"}}, 4404),
        ({"options": {"steps": 0}}, 4422),
        ({"options": {"colour": "blue"}}, 4422),
        ({"queue": "lifo"}, 4422),
        ({"source": {"data": "%%%not base64"}}, 4422),
    ]
    for change, code in cases:
        kwargs = {"source": change.get("source"), "options": change.get("options"), "queue": change.get("queue",
                                                                                                        "block")}
        ws, first = open_stream(server, **kwargs)
        assert first["type"] == "error" and first["code"] == code, (change, first)
        assert closed_with(ws)[0] == code
    from websockets.sync.client import connect

    with connect(server.ws_url) as ws:
        ws.send("hello")
        assert closed_with(ws)[0] == 4400
    with connect(server.ws_url) as ws:  # no start message at all: idle timeout (6 s here)
        assert closed_with(ws, timeout=20)[0] == 4408


def test_bad_frames_close_with_their_codes(server: Server) -> None:
    ws, _ = open_stream(server)
    ws.send(pack_in(png_bytes((80, 80)), 0.0))  # PNG: not JPEG/WebP
    code, reason, texts = closed_with(ws)
    assert code == 4415 and texts[-1]["field"] == "frame" and "JPEG" in reason
    ws, _ = open_stream(server)
    ws.send(b"\xff\xd8\xff\xe0" + b"\0" * 100)  # a JPEG signature over garbage
    assert closed_with(ws)[0] == 4422
    ws, _ = open_stream(server)
    ws.send(jpeg(np.zeros((800, 800, 3), np.uint8)))  # 640,000 px > --max-pixels 600,000
    assert closed_with(ws)[0] == 4413


def test_idle_stream_is_closed(server: Server) -> None:
    ws, ready = open_stream(server)
    assert ready["type"] == "ready"
    ws.send(pack_in(jpeg(clip_frames(1)[0]), 0.0))
    code, reason, _ = closed_with(ws, timeout=30)  # then silence: --idle-timeout 6
    assert code == 4408 and "idle" in reason


def test_four_concurrent_streams_and_the_session_limit(server: Server) -> None:
    frames = clip_frames(14)
    source = {"id": _source_id(server)}  # cheaper to start than an inline source: all 4 open well within
    opened = [open_stream(server, source=source) for _ in range(4)]  # the idle timeout
    assert all(ready["type"] == "ready" for _, ready in opened)
    ws5, first = open_stream(server)  # --max-streams 4: a fifth is refused at once, not queued
    assert first["type"] == "error" and first["code"] == 4429 and first["field"] == "session"
    assert closed_with(ws5)[0] == 4429
    runs: list = [None] * 4

    def go(i: int) -> None:
        runs[i] = run_stream(opened[i][0], frames, timeout=180)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=200)
    for run in runs:
        assert run.close_code == 1000 and [r[0] for r in run.results] == list(range(14))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # every slot is free again
        with server.client() as c:
            if c.get("/readyz").json()["streams"]["busy"] == 0:
                break
        time.sleep(0.1)
    ws, ready = open_stream(server)
    assert ready["type"] == "ready"
    ws.close()


def test_client_leaving_mid_stream_frees_its_slot(server: Server) -> None:
    for _ in range(2):
        ws, _ = open_stream(server)
        for f in clip_frames(6):
            ws.send(pack_in(jpeg(f), 0.0))
        ws.close()  # gone without an end message
    deadline = time.monotonic() + 30
    busy = None
    while time.monotonic() < deadline:
        with server.client() as c:
            busy = c.get("/readyz").json()["streams"]["busy"]
        if busy == 0:
            break
        time.sleep(0.2)
    assert busy == 0


def test_memory_after_50_sessions_is_back_within_10_percent(server: Server) -> None:
    frame = clip_frames(1)
    rss = []
    for i in range(50):
        ws, ready = open_stream(server, options={"steps": 1, "seed": i})
        run = run_stream(ws, frame)
        assert run.close_code == 1000 and len(run.results) == 1
        if i == 0:
            time.sleep(0.3)
            rss.append(server.rss_mib())
    time.sleep(0.3)
    rss.append(server.rss_mib())
    print(f"server RSS after session 1: {rss[0]:.0f} MiB, after 50: {rss[1]:.0f} MiB")
    assert rss[0] > 100, rss  # a live server process (torch alone is more), not a failed read
    assert rss[1] <= rss[0] * 1.10, rss
