"""PENDING (not collected: the file name does not start with ``test_``): the Ray Serve and Ray Train
cluster tests of issue 18. They were written against a live cluster but never seen passing here: the
shared 2-core machine ran at load 20-40 while they ran, Ray's raylet missed its 30 s registration, Serve's
proxy its 60 s start, and the Train run its 600 s test limit (its 2-worker fit itself completed). Once one
passes on a quiet machine (``pytest tests/pending_ray_serve_train.py``), move it into ``test_ray.py``.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from test_ray import ASSETS, ray_cluster  # noqa: F401, F811 - the session's one local cluster

ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")


def test_ray_train_two_workers_equal_one_with_twice_the_accumulation(ray_cluster: str, tmp_path: Path) -> None:  # noqa: F811
    """TorchTrainer, 2 CPU workers (gloo), batch 1 each == the plain loop accumulating 2 micro-batches."""
    import numpy as np

    from engine.train.loop import TrainConfig, train_loop
    from engine.train.ray_train import fit

    small = dict(data=ASSETS, preset="tiny", size=64, frames=2, batch=1, workers=0, quiet=True, lr=1e-3, steps=2)
    two = fit(TrainConfig(out=tmp_path / "ray", accumulate=1, **small), workers=2)  # type: ignore[arg-type]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = train_loop(TrainConfig(out=tmp_path / "one", accumulate=2, **small))  # type: ignore[arg-type]
    finally:
        torch.set_num_threads(threads)
    assert len(two) == 2
    np.testing.assert_allclose(two, [one.losses[0], one.losses[1]], rtol=1e-5)
    a = torch.load(tmp_path / "ray" / "checkpoint-2" / "warping_feature_mapper.pth", weights_only=True)
    b = torch.load(tmp_path / "one" / "checkpoint-2" / "warping_feature_mapper.pth", weights_only=True)
    worst = max(((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-12)).item() for k in a)
    assert worst < 1e-4, worst


def _replicas(url: str, tries: int = 30) -> dict[str, dict]:
    """Every replica the proxy reaches (asked repeatedly: each request goes to one of them)."""
    import httpx

    seen: dict[str, dict] = {}
    for _ in range(tries):
        r = httpx.get(url + "/v1/replica", timeout=30).json()
        seen[r["replica"]] = r
    return seen


def test_serve_replicas_spread_sessions_and_survive_a_replica(ray_cluster: str, tmp_path: Path) -> None:  # noqa: F811
    """2 replicas on loopback: two concurrent WS sessions land on different replicas; SIGKILL the
    replica of one: that session gets a close frame, the other goes on, a new session is served."""
    import base64
    import socket

    import cv2
    import httpx
    import numpy as np
    from ray import serve
    from websockets.sync.client import connect

    from engine.serve.config import ServeConfig
    from engine.serve.protocol import pack_in, unpack_out
    from engine.serve.ray_serve import run

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    config = ServeConfig(size=64, default_steps=1, max_streams=1, data=tmp_path / "data")
    run(config, 2, "127.0.0.1", port, cpus_per_replica=0.5, blocking=False)
    source = base64.b64encode((ASSETS / "source.png").read_bytes()).decode()
    frame = cv2.imencode(".jpg", np.full((96, 96, 3), 128, np.uint8))[1].tobytes()

    def session():
        ws = connect(url.replace("http", "ws") + "/v1/stream", max_size=None, open_timeout=60, close_timeout=10)
        ws.send(json.dumps({"type": "start", "source": {"data": source}, "options": {"steps": 1}, "queue": "block"}))
        assert json.loads(ws.recv(timeout=120))["type"] == "ready"
        return ws

    def serves(ws) -> bool:  # 16 frames in, one result frame out (the first window is 14 frames)
        for i in range(16):
            ws.send(pack_in(frame, float(i)))
        while isinstance(msg := ws.recv(timeout=120), str):
            pass
        return unpack_out(msg)[0] == 0

    try:
        assert httpx.get(url + "/v1/jobs", timeout=30).status_code == 409  # jobs: the batch runner
        a, b = session(), session()
        busy = {k: v for k, v in _replicas(url).items() if v["streams"]}
        assert len(busy) == 2, busy  # one session on each replica
        victim = next(iter(busy.values()))
        os.kill(victim["pid"], signal.SIGKILL)
        codes = []
        for ws in (a, b):
            try:
                codes.append(("served", serves(ws)))
            except Exception:  # noqa: BLE001 - the killed replica's session ends here
                codes.append(("closed", ws.close_code))
        assert sorted(kind for kind, _ in codes) == ["closed", "served"], codes
        closed = next(code for kind, code in codes if kind == "closed")
        assert closed == 1012, codes  # a close frame ("reconnect"), not a dropped connection (1006)
        c = session()  # a new session is served (by the live replica, or its restarted peer)
        assert serves(c)
        for ws in (a, b, c):
            ws.close()
    finally:
        serve.shutdown()
