"""Hostile-but-fair clients on a real server (issue 20): malformed JSON of any shape, malformed
``Range``, the smaller refusals, security headers, a header-read timeout (on the shared server);
unauthenticated WebSockets (memory bound, cap, deadline) and the source quota on a server with a key."""

from __future__ import annotations

import base64
import io
import json
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator

import numpy as np
import pytest
from serve_support import SOURCE, Server, closed_with, error_of, job_files, open_stream, submit, wait_job
from websockets.sync.client import connect

KEY = "hostile-key"


# ------------------------------------------------------------------------------ shared server
def _close_of(server: Server, first: str | bytes, then: str | None = None) -> tuple[int | None, str]:
    with connect(server.ws_url, max_size=None, open_timeout=10, close_timeout=5) as ws:
        ws.send(first)
        if then is not None:
            reply = json.loads(ws.recv(timeout=60))
            assert reply["type"] == "ready", reply
            ws.send(then)
        code, reason, _ = closed_with(ws)
    return code, reason


def test_malformed_json_of_any_shape_is_4400(server: Server) -> None:
    deep = 200_000
    for first in ("[" * deep, '{"a":' * deep, "[" * deep + "]" * deep, "null", '"start"', "12", "{", b"\xff\xd8\xff",
                  json.dumps({"type": ["start"]}), json.dumps({"type": "nope"})):
        code, reason = _close_of(server, first)
        assert code == 4400 and reason, (str(first)[:20], code, reason)
    start = json.dumps({"type": "start", "source": {"data": base64.b64encode(SOURCE.read_bytes()).decode()},
                        "options": {"steps": 1}})
    for later in ("[" * deep, '{"type":' * deep, "[]", json.dumps({"type": {"end": 1}})):
        code, reason = _close_of(server, start, later)
        assert code == 4400 and reason, (later[:20], code, reason)
    nested = {"type": "start", "source": {"id": [[[[]]]]}, "options": {"steps": json.loads("[" * 900 + "]" * 900)},
              "queue": {"a": [1]}, "token": {"x": 1}}
    code, reason = _close_of(server, json.dumps(nested))
    assert code in (4400, 4422) and reason, (code, reason)


def test_malformed_range_is_ignored(server: Server) -> None:
    with server.client() as c:
        job_id = submit(c).json()["id"]
        assert wait_job(c, job_id)["state"] == "done"
        url = f"/v1/jobs/{job_id}/result"
        whole = c.get(url).content
        for bad in ("bytes=100-50", "bytes=abc", "items=0-5", "bytes=", "bytes=1-2-3", "bytes=٣-٤".encode(), "garbage"):
            r = c.get(url, headers={"Range": bad})
            assert r.status_code == 200 and r.content == whole, (bad, r.status_code, r.text[:80])
        ok = c.get(url, headers={"Range": "bytes=0-9"})
        assert ok.status_code == 206 and ok.content == whole[:10]
        assert c.get(url, headers={"Range": "bytes=-5"}).content == whole[-5:]
        assert c.get(url, headers={"Range": f"bytes={len(whole) + 10}-"}).status_code == 416


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (no pixel data: Pillow reads the size from IHDR)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + \
        chunk(b"IEND", b"")


def test_smaller_refusals(server: Server) -> None:
    with server.client() as c:
        huge = {"source": ("big.png", _png_header_only(20000, 10000), "image/png")}  # 200 Mpx
        r = c.post("/v1/jobs", files={**job_files(), **huge}, data={"max_frames": "2"})
        assert r.status_code == 413 and error_of(r)["field"] == "source", r.text
        still = {"driving": ("still.png", SOURCE.read_bytes(), "video/mp4")}
        r = c.post("/v1/jobs", files={**job_files(), **still}, data={"max_frames": "2"})
        assert r.status_code == 415 and error_of(r)["field"] == "driving" and "still image" in r.text, r.text
        for name, value in (("guidance", "-1"), ("guidance", "nan"), ("guidance", "21"), ("guidance", "１.５"),
                            ("steps", "٣"), ("steps", "２"), ("seed", "߁")):
            r = c.post("/v1/jobs", files=job_files(), data={"max_frames": "2", name: value})
            assert r.status_code == 422 and error_of(r)["field"] == name, (name, value, r.text)
        assert c.post("/v1/jobs", files=job_files(), data={"max_frames": "2", "guidance": "2.5"}).status_code == 202


def test_security_headers(server: Server) -> None:
    with server.client() as c:
        page = c.get("/")
        csp = page.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
        for r in (page, c.get("/static/app.js"), c.get("/v1/jobs"), c.get("/v1/jobs/nope")):
            assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"
        job_id = submit(c).json()["id"]
        assert wait_job(c, job_id)["state"] == "done"
        result = c.get(f"/v1/jobs/{job_id}/result")
        assert result.headers["x-content-type-options"] == "nosniff"
        assert "sandbox" in result.headers["content-security-policy"]


def _seconds_until_closed(s: socket.socket, limit: float = 8) -> float:
    """Trickle header lines (one every ~0.5 s) until the server closes -> seconds it took."""
    start = time.monotonic()
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    while time.monotonic() - start < limit:
        try:
            s.sendall(b"X-Slow: 1\r\n")
            s.settimeout(0.5)
            if s.recv(1) == b"":
                break
        except TimeoutError:
            continue
        except OSError:
            break
    return time.monotonic() - start


def test_header_read_timeout(server: Server) -> None:
    """A client trickling header bytes is cut off (the shared server runs with --header-timeout 2),
    on a fresh connection and on a kept-alive one after a response."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        assert _seconds_until_closed(s) < 6
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = b""
        while b'"ok"' not in reply:
            reply += s.recv(4096)
        assert reply.startswith(b"HTTP/1.1 200")
        assert _seconds_until_closed(s) < 6
    with server.client() as c:
        assert c.get("/healthz").status_code == 200


# ------------------------------------------------------------------------------ a server with a key
@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("keyed") / "data",
                 ["--size", "64", "--default-steps", "1", "--max-streams", "1", "--api-key", KEY,
                  "--auth-timeout", "2", "--max-unauthenticated", "3", "--max-sources", "2"]).start()
    yield srv
    srv.kill()


def test_unauthenticated_messages_do_not_grow_memory(keyed: Server) -> None:
    """8 clients without the key each send a 24 MiB start message: the server reads at most 1 MiB of
    each before refusing it, so its RSS may not grow by more than 64 MiB (it grew by ~85 MiB per
    client when the whole message was read before the key was checked)."""
    big = json.dumps({"type": "start", "source": {"data": "A" * (24 << 20)}})
    base, peak, codes = keyed.rss_mib(), [0.0], []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], keyed.rss_mib())
            time.sleep(0.02)

    def client() -> None:
        try:
            with connect(keyed.ws_url, max_size=None, open_timeout=10, close_timeout=5) as ws:
                try:
                    ws.send(big)
                except Exception:  # noqa: BLE001 - the server may close while we send
                    pass
                codes.append(closed_with(ws, timeout=20)[0])
        except Exception as err:  # noqa: BLE001
            codes.append(repr(err))

    sampler = threading.Thread(target=sample)
    sampler.start()
    clients = [threading.Thread(target=client) for _ in range(8)]
    for t in clients:
        t.start()
    for t in clients:
        t.join(timeout=60)
    time.sleep(0.5)
    done.set()
    sampler.join()
    assert peak[0] - base < 64, (base, peak[0], codes)
    assert all(code in (1009, 4429, 4401) for code in codes), codes
    with keyed.client() as c:
        assert c.get("/readyz").status_code == 200


def _noisy_png(side: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_key_first_then_a_large_start(keyed: Server) -> None:
    """The ways to authenticate: the header (any size at once), or a small auth message first."""
    big = _noisy_png(700)  # ~1.4 MiB: over the pre-authentication message limit
    assert len(big) > 1 << 20
    data = base64.b64encode(big).decode()
    ws, reply = open_stream(keyed, source={"data": data}, headers=keyed.headers())
    assert reply["type"] == "ready", reply
    ws.close()
    with connect(keyed.ws_url, max_size=None, open_timeout=10, close_timeout=5) as ws:
        ws.send(json.dumps({"type": "auth", "token": KEY}))
        assert json.loads(ws.recv(timeout=30)) == {"type": "authenticated"}
        ws.send(json.dumps({"type": "start", "source": {"data": data}, "options": {"steps": 1}}))
        assert json.loads(ws.recv(timeout=60))["type"] == "ready"
    ws, reply = open_stream(keyed, token=KEY)  # the key inside a small start message
    assert reply["type"] == "ready", reply
    ws.close()
    ws, reply = open_stream(keyed, token="wrong")
    assert closed_with(ws)[0] == 4401
    ws.close()


def test_unauthenticated_sockets_are_capped_and_timed_out(keyed: Server) -> None:
    opened = [connect(keyed.ws_url, open_timeout=10, close_timeout=5) for _ in range(3)]
    for ws in opened:
        ws.__enter__()  # closed below (websockets warns about a connection used without `with`)
    try:
        time.sleep(0.3)
        with connect(keyed.ws_url, open_timeout=10, close_timeout=5) as extra:
            assert closed_with(extra, timeout=5)[0] == 4429
        start = time.monotonic()
        assert [closed_with(ws, timeout=10)[0] for ws in opened] == [4408] * 3
        assert time.monotonic() - start < 6
    finally:
        for ws in opened:
            ws.close()


def test_source_quota(keyed: Server) -> None:
    with keyed.client() as c:
        files = {"source": ("face.png", SOURCE.read_bytes(), "image/png")}
        ids = [c.post("/v1/sources", files=files).json()["id"] for _ in range(2)]
        r = c.post("/v1/sources", files=files)
        assert r.status_code == 429 and error_of(r)["field"] == "source" and "retry-after" in r.headers
        assert c.delete(f"/v1/sources/{ids[0]}").status_code == 200
        assert c.post("/v1/sources", files=files).status_code == 201
