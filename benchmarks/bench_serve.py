"""The server against the engine in process, on the same clip and options (tiny preset, 1 step):

- job throughput: N jobs of the bundled 28-frame clip submitted at once to ``python -m engine.serve``
  vs N ``Reenactor.render`` calls in this process;
- stream fps and latency: the clip pushed as fast as the engine takes it (``block`` policy) and
  paced like a camera (``--pace`` fps), through ``WS /v1/stream`` vs ``Reenactor.stream``.

    python benchmarks/bench_serve.py [--jobs 4] [--size 128] [--pace 6] [--json out.json]

Latency is capture (push) to result; through the server it is measured by the client, so it
includes JPEG coding and the socket. Loopback only.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # the server's setting (engine.serve.__main__)

import argparse  # noqa: E402
import json  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import httpx  # noqa: E402
import numpy as np  # noqa: E402
from websockets.sync.client import connect  # noqa: E402

from engine.api import EngineOptions, Reenactor, RunOptions  # noqa: E402
from engine.cli.reenact import DEFAULT_DRIVING, DEFAULT_SOURCE  # noqa: E402
from engine.io import read_video  # noqa: E402
from engine.serve.protocol import pack_in, unpack_out  # noqa: E402


def _pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)) * 1000, 1)


def in_process(args: argparse.Namespace, frames: np.ndarray) -> dict:
    engine = Reenactor.from_preset("tiny", EngineOptions(size=args.size))
    source = engine.set_source(DEFAULT_SOURCE)
    options = RunOptions(steps=1)
    engine.render(source, frames[:2], options=options)  # warm-up
    start = time.perf_counter()
    out = Path(tempfile.mkdtemp())
    for i in range(args.jobs):
        engine.render(source, DEFAULT_DRIVING, out=out / f"{i}.mp4", options=RunOptions(steps=1, seed=i))
    jobs_s = time.perf_counter() - start
    result = {"jobs_seconds": round(jobs_s, 2), "jobs_per_minute": round(60 * args.jobs / jobs_s, 1)}
    for pace in (None, args.pace):
        lat, done_at = [], []
        with engine.stream(source, options) as s:
            t0 = time.perf_counter()

            def feed(s=s, pace=pace, t0=t0) -> None:
                for i, f in enumerate(frames):
                    if pace:
                        time.sleep(max(0.0, t0 + i / pace - time.perf_counter()))
                    s.push(f)
                s.end()

            feeder = threading.Thread(target=feed)
            feeder.start()
            for r in s.results():
                lat.append(r.latency)
                done_at.append(time.perf_counter())
            feeder.join()
        key = "paced" if pace else "max"
        result[f"stream_{key}"] = {"fps": round(len(lat) / (done_at[-1] - t0), 2), "p50_ms": _pct(lat, 50),
                                   "p95_ms": _pct(lat, 95)}
    engine.close()
    return result


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def through_server(args: argparse.Namespace, frames: np.ndarray) -> dict:
    port = _free_port()
    data = Path(tempfile.mkdtemp())
    cmd = [sys.executable, "-m", "engine.serve", "--port", str(port), "--data", str(data), "--size", str(args.size),
           "--max-streams", "1", "--log-level", "warning", "--max-queue", str(args.jobs + 1)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        files = {"source": DEFAULT_SOURCE.read_bytes(), "driving": DEFAULT_DRIVING.read_bytes()}
        with httpx.Client(base_url=url, timeout=120) as c:
            warm = c.post("/v1/jobs", files=files, data={"steps": "1", "max_frames": "2"}).json()["id"]
            while c.get(f"/v1/jobs/{warm}").json()["state"] != "done":
                time.sleep(0.1)
            start = time.perf_counter()
            ids = [c.post("/v1/jobs", files=files, data={"steps": "1", "seed": str(i)}).json()["id"]
                   for i in range(args.jobs)]
            while any(c.get(f"/v1/jobs/{i}").json()["state"] not in ("done", "failed") for i in ids):
                time.sleep(0.1)
            jobs_s = time.perf_counter() - start
        result = {"jobs_seconds": round(jobs_s, 2), "jobs_per_minute": round(60 * args.jobs / jobs_s, 1)}
        jpegs = [cv2.imencode(".jpg", f[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes() for f in frames]
        for pace in (None, args.pace):
            result["stream_paced" if pace else "stream_max"] = _stream(port, jpegs, pace)
        return result
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _stream(port: int, jpegs: list[bytes], pace: float | None) -> dict:
    import base64

    start = {"type": "start", "source": {"data": base64.b64encode(DEFAULT_SOURCE.read_bytes()).decode()},
             "options": {"steps": 1}, "queue": "block"}
    lat, server_lat, done_at = [], [], []
    with connect(f"ws://127.0.0.1:{port}/v1/stream", max_size=None) as ws:
        ws.send(json.dumps(start))
        assert json.loads(ws.recv())["type"] == "ready"
        t0 = time.perf_counter()

        def feed() -> None:
            for i, data in enumerate(jpegs):
                if pace:
                    time.sleep(max(0.0, t0 + i / pace - time.perf_counter()))
                ws.send(pack_in(data, (time.perf_counter() - t0) * 1000))
            ws.send(json.dumps({"type": "end"}))

        feeder = threading.Thread(target=feed)
        feeder.start()
        for msg in ws:
            if isinstance(msg, str):
                if json.loads(msg)["type"] == "done":
                    break
                continue
            _, stamp, server_ms, _ = unpack_out(msg)
            now = time.perf_counter()
            done_at.append(now)
            lat.append((now - t0) - stamp / 1000)
            server_lat.append(server_ms / 1000)
        feeder.join()
    return {"fps": round(len(lat) / (done_at[-1] - t0), 2), "p50_ms": _pct(lat, 50), "p95_ms": _pct(lat, 95),
            "server_p95_ms": _pct(server_lat, 95)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=4)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--pace", type=float, default=6.0, help="camera-like sending rate (frames per second)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    frames = read_video(DEFAULT_DRIVING, args.size).frames
    report = {"size": args.size, "frames": len(frames), "steps": 1, "jobs": args.jobs, "pace_fps": args.pace,
              "in_process": in_process(args, frames), "server": through_server(args, frames)}
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
