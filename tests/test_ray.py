"""Scale-out on a real local Ray cluster (2 CPUs, started once per session): the batch runner, and the
close frame Serve replicas give a session whose replica died. Every process Ray starts is stopped at the
end. The Serve and Train cluster tests are in ``pending_ray_serve_train.py`` (see its docstring)."""

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


def test_replica_loss_middleware_sends_a_close_frame() -> None:
    """What Serve's proxy does when a replica dies mid-session (the handler ends, with an error or
    not, without a close) becomes close 1012; a session the app closed itself is left alone."""
    import asyncio

    from engine.serve.ray_serve import REPLICA_LOST, ReplicaLossClose

    async def dies(scope, receive, send) -> None:
        await send({"type": "websocket.accept"})
        raise ConnectionError("replica died")

    async def closes(scope, receive, send) -> None:
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 1000})

    def run(app) -> list[dict]:
        sent: list[dict] = []

        async def send(message: dict) -> None:
            sent.append(message)

        async def receive() -> dict:
            return {"type": "websocket.receive", "text": "{}"}

        try:
            asyncio.run(ReplicaLossClose(app)({"type": "websocket"}, receive, send))
        except ConnectionError:
            pass
        return sent

    assert run(dies)[-1] == {"type": "websocket.close", "code": REPLICA_LOST,
                             "reason": "the replica serving this session stopped: reconnect"}
    assert [m["type"] for m in run(closes)] == ["websocket.accept", "websocket.close"]
    assert run(closes)[-1]["code"] == 1000
