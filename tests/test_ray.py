"""Scale-out on a real local Ray cluster (2 CPUs, one for this module: every Ray test is here, so that
pytest-xdist's ``--dist loadfile`` runs them on one worker, one cluster at a time): the batch runner,
Ray Train (2 workers == 1 worker accumulating 2), Serve replicas (a replica killed mid-session), and the
close frame the proxy gives a session whose replica died. Every process Ray starts is stopped at the end."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")
REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "engine" / "assets"


# Ray's processes read these when the cluster starts. Serve's proxy has 5 s to answer a ready check and
# 10 s a health check by default; on 2 cores shared with other jobs a slow answer would get it restarted.
SLOW_MACHINE_ENV = {"RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60", "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "60"}


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """A local cluster of 2 CPUs; yields its address for subprocesses (``--address``)."""
    from engine.serve.ray_serve import PROXY_CALLBACK, PROXY_CALLBACK_ENV

    with pytest.MonkeyPatch.context() as env:
        # Serve's proxy (a process of this cluster) loads our middleware: set before the cluster starts
        env.setenv(PROXY_CALLBACK_ENV, PROXY_CALLBACK)
        for name, value in SLOW_MACHINE_ENV.items():
            env.setenv(name, value)
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


def _references(items: list[tuple[str, str, int, int, dict]], folder: Path) -> dict[str, bytes]:
    """What ``python -m engine.reenact`` writes for each item (the same API calls: one engine,
    ``set_source`` and ``render`` per item), in this process, with the actors' one thread."""
    from engine.api import Reenactor, RunOptions

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad(), Reenactor.from_preset("tiny") as engine:
            for name, driving, steps, seed, face in items:
                source = engine.set_source(ASSETS / "source.png", face.get("align", "none"))
                engine.render(source, ASSETS / driving, folder / f"{name}.mp4", max_frames=4,
                              options=RunOptions(steps=steps, seed=seed, guidance=2.5),
                              paste_back=face.get("paste_back", False))
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
    pasted = {"align": "opencv", "paste_back": True}  # the face crop, pasted back into the 512x512 photo
    items = [("a", "driving.mp4", 1, 0, {}), ("b", "driving_audio.mp4", 2, 1, {}), ("c", "driving.mp4", 1, 7, {}),
             ("d", "driving.mp4", 2, 3, pasted)]
    rows = [{"source": str(ASSETS / "source.png"), "driving": str(ASSETS / d), "out": n, "steps": s, "seed": seed,
             "max_frames": 4, **face} for n, d, s, seed, face in items]
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
    import av

    for name, side in (("a", 128), ("d", 512)):  # the tiny engine's output; the photo, pasted back
        with av.open(str(out / f"{name}.mp4")) as video:
            assert (video.streams.video[0].width, video.streams.video[0].height) == (side, side), name
    assert results["d"]["face"] == pasted and "face" not in results["a"]

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


def test_ray_train_two_workers_equal_one_with_twice_the_accumulation(ray_cluster: str, tmp_path: Path) -> None:
    """TorchTrainer, 2 CPU workers (gloo), 1 clip per step each == the plain loop accumulating 2 micro-batches
    of 1 clip: the same losses and the same trained weights after 2 steps (float rounding apart)."""
    import numpy as np

    from engine.train.loop import TrainConfig, train_loop
    from engine.train.ray_train import fit

    small = dict(data=ASSETS, preset="tiny", size=64, frames=2, batch=1, workers=0, quiet=True, lr=1e-3, steps=2)
    two = fit(TrainConfig(out=tmp_path / "ray", accumulate=1, **small), workers=2)  # type: ignore[arg-type]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each Ray worker (cpus_per_worker=1)
    try:
        one = train_loop(TrainConfig(out=tmp_path / "one", accumulate=2, **small))  # type: ignore[arg-type]
    finally:
        torch.set_num_threads(threads)
    state = torch.load(tmp_path / "ray" / "checkpoint-2" / "state.pt", weights_only=False)
    assert state["data"]["per_step"] == 2  # batch 1 x accumulate 1 x 2 processes: both workers trained
    assert len(two) == 2
    np.testing.assert_allclose(two, [one.losses[0], one.losses[1]], rtol=1e-5)
    name = "warping_feature_mapper.pth"
    a = torch.load(tmp_path / "ray" / "checkpoint-2" / name, weights_only=True)
    b = torch.load(tmp_path / "one" / "checkpoint-2" / name, weights_only=True)
    assert a.keys() == b.keys()
    worst = max(((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-12)).item() for k in a)
    assert worst < 1e-4, worst


def test_ray_train_runs_engine_distill(ray_cluster: str, tmp_path: Path) -> None:
    """``engine.distill --ray 2`` (the vae-decoder, the cheapest) == the plain run accumulating 2: the same
    losses and decoder weights; the main worker's report comes back to the CLI (report.json)."""
    import numpy as np

    from engine.cli import distill as distill_cli
    from engine.models import taesd

    common = ["--what", "vae-decoder", "--data", str(ASSETS), "--size", "64", "--frames", "2", "--examples", "2",
              "--holdout", "0", "--iters", "2", "--threads", "1", "--quiet"]
    threads = torch.get_num_threads()
    try:
        assert distill_cli.main([*common, "--ray", "2", "--out", str(tmp_path / "ray")]) == 0
        assert distill_cli.main([*common, "--accumulate", "2", "--out", str(tmp_path / "one")]) == 0
    finally:
        torch.set_num_threads(threads)
    losses = {run: [json.loads(line)["loss"] for line in (tmp_path / run / "log.jsonl").read_text().splitlines()]
              for run in ("ray", "one")}
    assert len(losses["ray"]) == 2
    np.testing.assert_allclose(losses["ray"], losses["one"], rtol=1e-5)
    report = json.loads((tmp_path / "ray" / "report.json").read_text())
    assert report["what"] == "vae-decoder" and report["train_frames"] == 4 and report["final_loss"] == losses["ray"][-1]
    a = taesd.load(tmp_path / "ray" / "taesd_decoder.safetensors", 4, 16).state_dict()
    b = taesd.load(tmp_path / "one" / "taesd_decoder.safetensors", 4, 16).state_dict()
    assert max(float((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-12)) for k in a) < 1e-4


class _Serve:
    """A client of the Serve deployment on loopback: replicas by ``GET /v1/replica``, WS sessions."""

    def __init__(self, port: int) -> None:
        import base64

        import cv2
        import numpy as np

        self.url = f"http://127.0.0.1:{port}"
        self.source = base64.b64encode((ASSETS / "source.png").read_bytes()).decode()
        self.frame = cv2.imencode(".jpg", np.full((96, 96, 3), 128, np.uint8))[1].tobytes()

    def replicas(self, until: Callable[[dict[str, dict]], bool], timeout: float = 180.0) -> dict[str, dict]:
        """``GET /v1/replica`` (each request reaches one replica) every 0.2 s until ``until`` holds for the
        latest answer of every replica seen; every request must succeed."""
        import time

        import httpx

        seen: dict[str, dict] = {}
        deadline = time.monotonic() + timeout
        while not until(seen):
            assert time.monotonic() < deadline, f"replicas as last seen: {seen}"
            r = httpx.get(self.url + "/v1/replica", timeout=30)
            assert r.status_code == 200, r.text  # a dead replica's requests go to a live one
            seen[r.json()["replica"]] = r.json()
            time.sleep(0.2)
        return seen

    def session(self, tries: int = 20) -> Any:
        """An open WS session that said ``ready``. A refusal a client is told to retry (1013 engines
        loading, 4429 every slot of that replica busy, 1012 its replica died) is retried: Serve's proxy
        may send the new connection to another replica."""
        from websockets.exceptions import ConnectionClosed
        from websockets.sync.client import connect

        refusals = []
        for _ in range(tries):
            ws = connect(self.url.replace("http", "ws") + "/v1/stream", max_size=None, open_timeout=60,
                         close_timeout=10)
            ws.send(json.dumps({"type": "start", "source": {"data": self.source}, "options": {"steps": 1},
                                "queue": "block"}))
            try:
                reply = json.loads(ws.recv(timeout=120))
            except ConnectionClosed:
                reply = {"type": "error", "code": ws.close_code}
            if reply["type"] == "ready":
                return ws
            ws.close()
            refusals.append(reply)
            assert reply["code"] in (1012, 1013, 4429), reply
        raise AssertionError(f"no session after {tries} tries: {refusals}")

    def send(self, ws: Any, frames: range) -> None:
        from engine.serve.protocol import pack_in

        for i in frames:
            ws.send(pack_in(self.frame, float(i)))

    def first_result(self, ws: Any) -> int:
        """The index of the first result frame (status messages before it are skipped)."""
        from engine.serve.protocol import unpack_out

        while isinstance(msg := ws.recv(timeout=120), str):
            pass
        return unpack_out(msg)[0]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_replicas_spread_sessions_and_survive_a_replica(ray_cluster: str, tmp_path: Path) -> None:
    """2 replicas (one stream slot each) behind Serve's proxy: two concurrent WS sessions are both served,
    so one on each replica. SIGKILL one replica mid-session: its session gets close 1012 (not a dropped
    connection), the other's frames still come back, HTTP requests keep succeeding, Serve starts a
    replacement, and a new session is served by it."""
    import httpx
    from ray import serve
    from websockets.exceptions import ConnectionClosed

    from engine.serve.config import ServeConfig
    from engine.serve.ray_serve import REPLICA_LOST, run

    port = _free_port()
    client = _Serve(port)
    config = ServeConfig(size=64, default_steps=1, max_streams=1, idle_timeout=600, data=tmp_path / "data")
    run(config, 2, "127.0.0.1", port, cpus_per_replica=0.5, blocking=False)
    opened: list[Any] = []
    try:
        first = client.replicas(lambda seen: sum(r["ready"] for r in seen.values()) == 2)
        assert httpx.get(client.url + "/v1/jobs", timeout=30).status_code == 409  # jobs: the batch runner
        opened += [client.session(), client.session()]
        busy = client.replicas(lambda seen: sum(r["streams"] for r in seen.values()) == 2)
        assert all(r["streams"] == 1 for r in busy.values()), busy  # one session on each replica
        for ws in opened:
            client.send(ws, range(8))  # mid-traffic: half of the first window sent
        victim = busy[next(iter(first))]
        os.kill(victim["pid"], signal.SIGKILL)
        outcomes = []
        for ws in opened:
            try:
                client.send(ws, range(8, 16))
                outcomes.append(("served", client.first_result(ws)))
            except ConnectionClosed:  # the killed replica's session ends here
                outcomes.append(("closed", ws.close_code))
        assert sorted(outcomes) == [("closed", REPLICA_LOST), ("served", 0)], outcomes
        # every request answered meanwhile (by the survivor), until a replacement is up and loaded
        now = client.replicas(lambda seen: any(r["ready"] for k, r in seen.items() if k not in first))
        assert victim["replica"] not in now, now
        replacement = next(k for k in now if k not in first)
        opened.append(client.session())  # the survivor's slot is taken: this one goes to the replacement
        client.replicas(lambda seen: seen.get(replacement, {}).get("streams") == 1, timeout=60)
        client.send(opened[-1], range(16))
        assert client.first_result(opened[-1]) == 0
    finally:
        for ws in opened:
            ws.close()
        serve.shutdown()
