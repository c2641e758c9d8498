"""The access rules, in process: with a key every endpoint but /healthz (and the static page) needs
the bearer token, the WebSocket takes it in a header or its first message; CORS only when asked."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from serve_support import SOURCE, job_files
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from engine.serve.app import create_app
from engine.serve.config import ServeConfig

KEY = "s3cret-key"
GOOD = {"Authorization": f"Bearer {KEY}"}


def _ready(client: TestClient, headers: dict) -> None:
    deadline = time.monotonic() + 120
    while client.get("/readyz", headers=headers).status_code != 200:
        assert time.monotonic() < deadline, "engines never loaded"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    cfg = ServeConfig(size=64, default_steps=1, data=tmp_path_factory.mktemp("auth"), api_key=KEY, max_streams=1)
    with TestClient(create_app(cfg)) as c:
        _ready(c, GOOD)
        yield c


def test_every_endpoint_but_healthz_needs_the_key(client: TestClient) -> None:
    some_id = "00000000-0000-0000-0000-000000000000"
    calls = [("GET", "/readyz"), ("GET", "/metrics"), ("GET", "/v1/jobs"), ("POST", "/v1/jobs"),
             ("GET", f"/v1/jobs/{some_id}"), ("GET", f"/v1/jobs/{some_id}/events"),
             ("GET", f"/v1/jobs/{some_id}/result"), ("DELETE", f"/v1/jobs/{some_id}"), ("POST", "/v1/sources"),
             ("DELETE", f"/v1/sources/{some_id}")]
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}):
        for method, path in calls:
            r = client.request(method, path, headers=headers)
            assert r.status_code == 401, (method, path, headers)
            assert r.json()["error"]["field"] == "authorization" and r.headers["www-authenticate"] == "Bearer"
    assert client.get("/healthz").status_code == 200
    assert client.get("/").status_code == 200 and "getUserMedia" in client.get("/static/app.js").text
    assert client.get("/metrics", headers=GOOD).status_code == 200
    r = client.post("/v1/jobs", headers=GOOD, files=job_files(), data={"max_frames": "1"})
    assert r.status_code == 202


def _start(token: str | None = None) -> dict:
    msg = {"type": "start", "source": {"data": base64.b64encode(SOURCE.read_bytes()).decode()},
           "options": {"steps": 1}}
    if token is not None:
        msg["token"] = token
    return msg


def test_stream_key_in_first_message_or_header(client: TestClient) -> None:
    for token in (None, "wrong"):
        with client.websocket_connect("/v1/stream") as ws:
            ws.send_json(_start(token))
            assert ws.receive_json()["code"] == 4401
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_json()
            assert closed.value.code == 4401
    with client.websocket_connect("/v1/stream") as ws:
        ws.send_json(_start(KEY))
        assert ws.receive_json()["type"] == "ready"
        ws.send_json({"type": "end"})
        assert ws.receive_json()["type"] == "done"
    with client.websocket_connect("/v1/stream", headers=GOOD) as ws:
        ws.send_json(_start())
        assert ws.receive_json()["type"] == "ready"
        ws.send_json({"type": "end"})
        assert ws.receive_json()["type"] == "done"


def test_cors_is_off_unless_configured(client: TestClient, tmp_path: Path) -> None:
    preflight = {"Origin": "https://example.test", "Access-Control-Request-Method": "POST"}
    r = client.options("/v1/jobs", headers=preflight)
    assert "access-control-allow-origin" not in r.headers
    assert "access-control-allow-origin" not in client.get("/healthz", headers={"Origin": "https://example.test"}
                                                           ).headers
    cfg = ServeConfig(size=64, data=tmp_path, cors_origins=("https://example.test",), max_streams=0)
    with TestClient(create_app(cfg)) as other:
        r = other.options("/v1/jobs", headers=preflight)
        assert r.headers["access-control-allow-origin"] == "https://example.test"
        other_origin = other.get("/healthz", headers={"Origin": "https://elsewhere.test"})
        assert "access-control-allow-origin" not in other_origin.headers
