"""Helpers for the server tests: a real ``python -m engine.serve`` on 127.0.0.1 in a subprocess,
HTTP and WebSocket clients, media made from the bundled clip. Loopback only; every wait bounded."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import httpx
import numpy as np
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from engine.serve.protocol import pack_in, unpack_out

REPO = Path(__file__).resolve().parents[2]
ASSETS = REPO / "engine" / "assets"
SOURCE = ASSETS / "source.png"
DRIVING = ASSETS / "driving.mp4"
ARTIFACTS = Path(os.environ.get("FRVD_TEST_ARTIFACTS", REPO / "outputs" / "test-artifacts"))
START_TIMEOUT = 120.0  # a cold start imports torch and builds the engines; CI's 2 cores are shared


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    data: Path
    args: list[str] = field(default_factory=list)
    port: int = 0
    proc: subprocess.Popen | None = None
    log: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/stream"

    def start(self) -> Server:
        self.port = free_port()
        self.log = self.data.parent / f"{self.data.name}-server-{self.port}.log"
        cmd = [sys.executable, "-m", "engine.serve", "--host", "127.0.0.1", "--port", str(self.port),
               "--data", str(self.data), "--log-level", "warning", *self.args]
        env = dict(os.environ, OMP_NUM_THREADS="2")
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=self.log.open("w"), stderr=subprocess.STDOUT, env=env)
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                if httpx.get(self.url + "/readyz", headers=self.headers(), timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise TimeoutError(f"server not ready after {timeout} s:\n{self.log_text()}")

    def headers(self) -> dict[str, str]:
        key = next((self.args[i + 1] for i, a in enumerate(self.args) if a == "--api-key"), None)
        return {"Authorization": f"Bearer {key}"} if key else {}

    def log_text(self) -> str:
        return self.log.read_text()[-4000:] if self.log and self.log.exists() else ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def rss_mib(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers(), timeout=kw.pop("timeout", 60), **kw)


def job_files(source: Path = SOURCE, driving: Path = DRIVING) -> dict:
    return {"source": (source.name, source.read_bytes(), "image/png"),
            "driving": (driving.name, driving.read_bytes(), "video/mp4")}


def submit(client: httpx.Client, data: dict | None = None, **files) -> httpx.Response:
    return client.post("/v1/jobs", files=files or job_files(), data={"max_frames": "2", **(data or {})})


def wait_job(client: httpx.Client, job_id: str, timeout: float = 120, states: tuple = ("done", "failed")) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job.get("state") in states:
            return job
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} not {states} after {timeout} s: {job}")


def error_of(response: httpx.Response) -> dict:
    return response.json()["error"]


# ----------------------------------------------------------------------------------- media
def clip_frames(n: int, size: int = 160) -> list[np.ndarray]:
    """The first ``n`` frames of the bundled clip, RGB, resized (what a small camera would give)."""
    import av

    out = []
    with av.open(str(DRIVING)) as c:
        for frame in c.decode(video=0):
            out.append(cv2.resize(frame.to_ndarray(format="rgb24"), (size, size), interpolation=cv2.INTER_AREA))
            if len(out) == n:
                break
    return out


def jpeg(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 85])
    assert ok
    return buf.tobytes()


def png_bytes(size: tuple[int, int]) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, (120, 90, 60)).save(buf, "PNG")
    return buf.getvalue()


def write_y4m(path: Path, frames: list[np.ndarray], fps: int = 25) -> Path:
    """A YUV4MPEG2 file (what Chromium's fake camera plays) from RGB frames."""
    h, w = frames[0].shape[:2]
    with path.open("wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for rgb in frames:
            f.write(b"FRAME\n")
            f.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420).tobytes())
    return path


# ----------------------------------------------------------------------------------- streams
def open_stream(server: Server, source: dict | None = None, options: dict | None = None, queue: str = "block",
                token: str | None = None, headers: dict | None = None) -> tuple[ClientConnection, dict]:
    """Connect and send the start message -> (connection, the server's first reply)."""
    ws = connect(server.ws_url, additional_headers=headers, max_size=None, open_timeout=10, close_timeout=5)
    ws.__enter__()  # the callers close it (websockets >= 17.1 warns about a connection used without `with`)
    start = {"type": "start", "source": source or {"data": _b64(SOURCE)}, "options": options or {"steps": 1},
             "queue": queue}
    if token is not None:
        start["token"] = token
    ws.send(json.dumps(start))
    return ws, json.loads(ws.recv(timeout=60))


def _b64(path: Path) -> str:
    import base64

    return base64.b64encode(path.read_bytes()).decode()


@dataclass
class StreamRun:
    results: list[tuple[int, float | None, float, np.ndarray]]  # index, timestamp echo, server ms, RGB
    done: dict | None
    close_code: int | None
    seconds: float


def run_stream(ws: ClientConnection, frames: list[np.ndarray], timeout: float = 120) -> StreamRun:
    """Send every frame (with its number as the capture timestamp), end, and read to the close."""
    start = time.monotonic()
    for i, f in enumerate(frames):
        ws.send(pack_in(jpeg(f), float(i)))
    ws.send(json.dumps({"type": "end"}))
    results, done = [], None
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            msg = ws.recv(timeout=max(0.1, deadline - time.monotonic()))
            if isinstance(msg, str):
                parsed = json.loads(msg)
                if parsed["type"] == "done":
                    done = parsed
                continue
            index, stamp, latency, data = unpack_out(msg)
            rgb = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
            results.append((index, stamp, latency, rgb))
    except (ConnectionClosed, TimeoutError):  # the close, or the deadline, ends the read; nothing else
        pass
    code = ws.close_code
    ws.close()
    return StreamRun(results, done, code if code is not None else ws.close_code, time.monotonic() - start)


def closed_with(ws: ClientConnection, timeout: float = 30) -> tuple[int | None, str, list]:
    """Read until the server closes -> (close code, reason, text messages seen)."""
    texts = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            msg = ws.recv(timeout=max(0.1, deadline - time.monotonic()))
            if isinstance(msg, str):
                texts.append(json.loads(msg))
    except (ConnectionClosed, TimeoutError):
        pass
    return ws.close_code, ws.close_reason or "", texts


__all__ = ["Server", "os", "signal"]
