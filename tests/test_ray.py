"""Scale-out on a real local Ray cluster (2 CPUs, started once for this module): the batch runner,
Serve replicas and Ray Train. Every process Ray starts is stopped at the end of the module."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")
REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "engine" / "assets"


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """A local cluster of 2 CPUs; yields its address for subprocesses (``--address``)."""
    from engine.serve.ray_serve import proxy_env

    proxy_env()  # Serve's proxy (a process of this cluster) loads our middleware: before the cluster starts
    for attempt in (1, 2):  # a raylet has 30 s to register: on a machine busy with other jobs, try twice
        try:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            break
        except Exception:  # noqa: BLE001 - Ray raises a bare Exception for this
            ray.shutdown()
            if attempt == 2:
                raise
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def _references(items: list[tuple[str, str, int, int]], folder: Path) -> dict[str, bytes]:
    """What ``python -m engine.reenact`` writes for each item (the same API calls: one engine, one
    ``render`` per item), in this process, with the actors' one thread."""
    from engine.api import Reenactor, RunOptions

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad(), Reenactor.from_preset("tiny") as engine:
            for name, driving, steps, seed in items:
                engine.render(ASSETS / "source.png", ASSETS / driving, folder / f"{name}.mp4",
                              options=RunOptions(steps=steps, seed=seed, guidance=2.5), max_frames=4)
    finally:
        torch.set_num_threads(threads)
    return {name: (folder / f"{name}.mp4").read_bytes() for name, *_ in items}


class _Log(logging.Handler):
    """The driver's log lines; SIGKILLs the actor of the first good item 1 s after it is handed out."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []
        self.killed: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        line = record.getMessage()
        self.lines.append(line)
        m = re.search(r"item (a|b|c|d) -> actor \d \(pid (\d+)", line)
        if m and not self.killed:
            self.killed.append(m.group(1))
            threading.Timer(1.0, os.kill, (int(m.group(2)), signal.SIGKILL)).start()


def test_batch_runner(ray_cluster: str, tmp_path: Path) -> None:
    """4 good items + 2 bad ones on 2 actors; one actor SIGKILLed during an item. Every good item is
    committed exactly once and equals the single-process render; the bad ones are reported; a second
    run (the CLI) skips everything."""
    from engine.batch.runner import BatchConfig, run_batch
    from engine.cli.batch import main

    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "broken.mp4").write_bytes(b"not a video")
    items = [("a", "driving.mp4", 1, 0), ("b", "driving_audio.mp4", 2, 1), ("c", "driving.mp4", 1, 7),
             ("d", "driving.mp4", 2, 3)]
    rows = [{"source": str(ASSETS / "source.png"), "driving": str(ASSETS / d), "out": n, "steps": s, "seed": seed,
             "max_frames": 4} for n, d, s, seed in items]
    rows.insert(2, {"source": str(ASSETS / "source.png"), "driving": "broken.mp4", "out": "bad", "steps": 1})
    rows.append({"source": "nowhere.png", "driving": str(ASSETS / "driving.mp4"), "out": "missing"})
    manifest = inputs / "items.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"

    handler = _Log()
    logger = logging.getLogger("engine.batch")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        outcomes = run_batch(manifest, BatchConfig(out=out, actors=2))
    finally:
        logger.removeHandler(handler)
    text = "\n".join(handler.lines)
    assert [o.status for o in outcomes] == ["done", "done", "failed", "done", "done", "failed"], text
    killed = handler.killed[0]
    assert f"during item {killed}" in text, text
    results = {r["name"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert len(results) == 6
    assert results[killed]["attempts"] == 2 and results[killed]["status"] == "done"
    assert results["bad"]["status"] == "failed" and "broken.mp4" in results["bad"]["error"]
    assert results["missing"]["status"] == "failed" and "nowhere.png" in results["missing"]["error"]
    refs = _references(items, tmp_path / "ref")
    for name, *_ in items:
        assert results[name]["status"] == "done" and results[name]["output"] == str(out / f"{name}.mp4")
        assert len(re.findall(rf"item {name} committed", text)) == 1, text  # written exactly once
        assert (out / f"{name}.mp4").read_bytes() == refs[name], name  # bit for bit
    assert not [p for p in out.iterdir() if "partial" in p.name]

    assert main([str(manifest), "--out", str(out), "--address", ray_cluster]) == 1  # 2 items still fail
    results = [json.loads(r) for r in (out / "results.jsonl").read_text().splitlines()]
    assert [r["status"] for r in results] == ["skipped", "skipped", "failed", "skipped", "skipped", "failed"]


def test_ray_train_two_workers_equal_one_with_twice_the_accumulation(ray_cluster: str, tmp_path: Path) -> None:
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


def test_serve_replicas_spread_sessions_and_survive_a_replica(ray_cluster: str, tmp_path: Path) -> None:
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
