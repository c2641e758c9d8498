"""``python -m engine.webcam``: drive a portrait live from a camera (or a video file standing in for
one), in this process (``Reenactor.stream``) or through a server (``--server ws://HOST:PORT``).

    python -m engine.webcam --source face.png --camera 0 --show
    python -m engine.webcam --source face.png --camera clip.mp4 --out live.mp4
    python -m engine.webcam --source face.png --camera 0 --server ws://127.0.0.1:8000 --show

A camera feeds frames as they come (through a server: drop-oldest, so latency stays bounded); a
file is read as fast as the engine takes it and every frame is used. Prints one summary line.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from engine.cli.args import Parser, add_knob_arguments, knob_values, positive_int
from engine.config.controls import MotionControls
from engine.config.presets import PRESETS
from engine.errors import EngineError, InputError

DEFAULT_SOURCE = Path(__file__).resolve().parents[1] / "assets" / "source.png"
WINDOW = "frvd-engine webcam"
_ABORT = np.zeros(0, np.uint8)


@dataclass
class Result:
    index: int  # driving frame number
    frame: np.ndarray  # RGB uint8
    latency: float  # seconds from capture to this frame being ready here


@dataclass
class Meter:
    """fps and latency over the last 2 seconds, for the overlay and the summary."""

    times: deque = field(default_factory=deque)
    latencies: list[float] = field(default_factory=list)
    first: float | None = None
    count: int = 0

    def started(self) -> None:
        self.first = self.first or time.perf_counter()

    def add(self, latency: float) -> None:
        now = time.perf_counter()
        self.started()
        self.count += 1
        self.times.append(now)
        while self.times and self.times[0] < now - 2.0:
            self.times.popleft()
        self.latencies.append(latency)

    @property
    def fps(self) -> float:
        return len(self.times) / 2.0 if len(self.times) > 1 else 0.0

    def summary(self) -> str:
        if not self.latencies:
            return "0 frames"
        span = time.perf_counter() - (self.first or 0)
        lat = np.array(self.latencies) * 1000
        fps = self.count / span if span > 0 else 0.0  # from the first capture: throughput, lookahead included
        return (f"{self.count} frames, {fps:.1f} fps, latency p50 {np.percentile(lat, 50):.0f} ms, "
                f"p95 {np.percentile(lat, 95):.0f} ms")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from engine.api import EngineOptions
    from engine.config.modes import RunConfig

    p = Parser(prog="python -m engine.webcam", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="source portrait image")
    p.add_argument("--camera", default="0", help="camera index (0, 1, ...) or a video file standing in for one")
    p.add_argument("--server", default=None, help="ws://HOST:PORT of python -m engine.serve (default: in-process)")
    p.add_argument("--api-key", default=os.environ.get("FRVD_API_KEY"), help="the server's key ($FRVD_API_KEY)")
    p.add_argument("--out", type=Path, default=None, help="also write the result frames to this .mp4")
    p.add_argument("--show", action="store_true", help="show the result with fps and latency (needs a display)")
    p.add_argument("--virtual-camera", action="store_true", help="send the result to a virtual camera (pyvirtualcam)")
    # the run's knobs, declared once (engine.config.modes.RunConfig); one step by default keeps it live
    add_knob_arguments(p.add_argument_group("run"), RunConfig, only=("steps", "seed"), defaults={"steps": 1})
    # the motion controls, declared once (engine.config.controls); a running stream may change them: the
    # server's page does, between frames
    add_knob_arguments(p.add_argument_group("motion controls (docs/controls.md)"), MotionControls)
    p.add_argument("--max-frames", type=positive_int, default=None, help="stop after N captured frames")
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny", help="in-process engine")
    p.add_argument("--weights", type=Path, default=None, help="in-process engine: the release's weights folder")
    add_knob_arguments(p.add_argument_group("in-process engine"), EngineOptions, only=("size", "device"))
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------- capture
def open_capture(camera: str) -> tuple[cv2.VideoCapture, float, bool]:
    """-> (capture, frames per second, is_file). A file is checked like the CLI checks --driving."""
    if camera.isdigit():
        cap = cv2.VideoCapture(int(camera))
        if not cap.isOpened():
            raise InputError(f"camera {camera} cannot be opened; check that it exists (ls /dev/video*) and is free, "
                             "or pass a video file with --camera FILE")
        return cap, cap.get(cv2.CAP_PROP_FPS) or 30.0, False
    from engine.io import probe_video

    info = probe_video(camera)
    cap = cv2.VideoCapture(camera)
    if not cap.isOpened():
        raise InputError(f"driving video '{camera}' cannot be opened by OpenCV; re-encode it as H.264 MP4")
    return cap, info.fps, True


def frames_of(cap: cv2.VideoCapture, max_frames: int | None, stop: threading.Event,
              on_first: Callable[[], None] = lambda: None) -> Iterator[np.ndarray]:
    n = 0
    while not stop.is_set() and (max_frames is None or n < max_frames):
        ok, bgr = cap.read()
        if not ok:
            return
        if n == 0:
            on_first()
        n += 1
        yield np.ascontiguousarray(bgr[..., ::-1])


# ----------------------------------------------------------------------------------- runners
def controls_of(args: argparse.Namespace) -> dict[str, Any]:
    """The motion controls given on the command line (those left out: the defaults)."""
    return knob_values(args, MotionControls)


def run_options_of(args: argparse.Namespace) -> dict[str, Any]:
    """The run's options: steps and seed (this tool's defaults: one step, seed 0) and the motion controls."""
    from engine.config.modes import RunConfig

    return {**knob_values(args, RunConfig), **controls_of(args)}


def run_local(args: argparse.Namespace, frames: Iterator[np.ndarray], emit: Callable[[Result], None]) -> str:
    from engine.api import EngineOptions, Reenactor, RunOptions

    engine = Reenactor.from_preset(args.preset, EngineOptions(**knob_values(args, EngineOptions)),
                                   weights=args.weights)
    with engine:
        source = engine.set_source(args.source)
        captured: dict[int, float] = {}
        failure: list[BaseException] = []
        with engine.stream(source, RunOptions(**run_options_of(args))) as stream:

            def feed() -> None:  # push blocks while the engine is behind: a file loses no frame
                try:
                    for i, frame in enumerate(frames):
                        captured[i] = time.perf_counter()
                        stream.push(frame)
                except BaseException as err:  # noqa: BLE001 - reported after the results loop
                    failure.append(err)
                finally:
                    stream.end()

            feeder = threading.Thread(target=feed, name="frvd-capture", daemon=True)
            feeder.start()
            for out in stream.results():
                emit(Result(out.index, out.frame, time.perf_counter() - captured.pop(out.index)))
            feeder.join()
        if failure:
            raise failure[0]
    return "in-process"


def run_remote(args: argparse.Namespace, frames: Iterator[np.ndarray], emit: Callable[[Result], None],
               is_file: bool) -> str:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    from engine.io import read_rgb
    from engine.serve.protocol import pack_in, unpack_out

    read_rgb(args.source)  # the CLI's check and message for a bad source, before connecting
    url = args.server.rstrip("/") + "/v1/stream"
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else None
    start = {"type": "start", "source": {"data": base64.b64encode(args.source.read_bytes()).decode()},
             "options": run_options_of(args),
             "queue": "block" if is_file else "drop_oldest"}
    try:
        ws = connect(url, additional_headers=headers, max_size=None, open_timeout=10)
    except (OSError, TimeoutError) as err:
        raise InputError(f"cannot connect to {url} ({err}); is python -m engine.serve running there?") from None
    with ws:
        ws.send(json.dumps(start))
        first = ws.recv(timeout=60)
        ready = json.loads(first) if isinstance(first, str) else {}
        if ready.get("type") != "ready":
            raise InputError(f"the server refused the stream: {ready.get('message', first)}")
        origin = time.perf_counter()

        def feed() -> None:
            try:
                for frame in frames:
                    ok, jpg = cv2.imencode(".jpg", frame[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
                    ws.send(pack_in(jpg.tobytes(), (time.perf_counter() - origin) * 1000))
                ws.send(json.dumps({"type": "end"}))
            except ConnectionClosed:
                pass

        feeder = threading.Thread(target=feed, name="frvd-capture", daemon=True)
        feeder.start()
        try:
            for message in ws:
                if isinstance(message, str):
                    msg = json.loads(message)
                    if msg.get("type") == "done":
                        break
                    if msg.get("type") == "error":
                        raise InputError(f"the server closed the stream ({msg['code']}): {msg['message']}")
                    continue
                index, stamp, _, jpg = unpack_out(message)
                bgr = cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR)
                if bgr is None:
                    raise InputError(f"the server sent frame {index} as an image that does not decode")
                rgb = bgr[..., ::-1]
                now_ms = (time.perf_counter() - origin) * 1000
                emit(Result(index, np.ascontiguousarray(rgb), (now_ms - (stamp or now_ms)) / 1000))
        except ConnectionClosed as err:
            raise InputError(f"the server closed the stream ({err.rcvd.code if err.rcvd else 'no code'}): "
                             f"{err.rcvd.reason if err.rcvd else ''}") from None
        feeder.join(timeout=5)
    return args.server


# ----------------------------------------------------------------------------------- sinks
def overlay(frame: np.ndarray, fps: float, latency: float) -> np.ndarray:
    """The frame (BGR for OpenCV windows) with fps and latency written on it."""
    bgr = np.ascontiguousarray(frame[..., ::-1])
    scale = max(bgr.shape[0] / 512, 0.35)
    for color, thick in (((0, 0, 0), 3), ((255, 255, 255), 1)):
        cv2.putText(bgr, f"{fps:.1f} fps  {latency * 1000:.0f} ms", (6, int(22 * scale) + 4),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.6 * scale, color, thick, cv2.LINE_AA)
    return bgr


class Writer:
    """Result frames to an MP4 in a thread (streamed to the encoder, not held in memory)."""

    def __init__(self, path: Path, fps: float) -> None:
        from engine.io import check_output_path, write_video

        self.path = check_output_path(path)
        self.q: queue.Queue = queue.Queue(maxsize=64)
        self.error: list[BaseException] = []

        def frames() -> Iterator[np.ndarray]:
            while (f := self.q.get()) is not None:
                if f is _ABORT:  # write_video removes its temporary file: no partial output is left
                    raise RuntimeError("aborted")
                yield f

        def work() -> None:
            try:
                write_video(self.path, frames(), Fraction(fps).limit_denominator(1001))
            except BaseException as err:  # noqa: BLE001 - re-raised by close()
                self.error.append(err)
                while self.q.get() is not None:  # keep draining so the producer never blocks
                    pass

        self.thread = threading.Thread(target=work, name="frvd-writer", daemon=True)
        self.thread.start()

    def put(self, frame: np.ndarray) -> None:
        self.q.put(frame)

    def close(self) -> None:
        self.q.put(None)
        self.thread.join()
        if self.error:
            raise self.error[0]

    def abort(self) -> None:
        self.q.put(_ABORT)
        self.q.put(None)
        self.thread.join()


def make_display(enabled: bool) -> Callable[[np.ndarray], None] | None:
    if not enabled:
        return None
    try:
        cv2.namedWindow(WINDOW, cv2.WINDOW_AUTOSIZE)
    except cv2.error:
        raise InputError("--show needs an OpenCV build with a GUI and a display (this one is headless: "
                         "pip install opencv-python, or drop --show and use --out)") from None

    def show(bgr: np.ndarray) -> None:
        cv2.imshow(WINDOW, bgr)
        cv2.waitKey(1)

    return show


def make_virtual_camera(enabled: bool, fps: float) -> Callable[[np.ndarray], None] | None:
    if not enabled:
        return None
    try:
        import pyvirtualcam
    except ImportError:
        raise InputError("--virtual-camera needs pyvirtualcam: pip install -e '.[webcam]' (and v4l2loopback on "
                         "Linux)") from None
    cams: list = []

    def send(rgb: np.ndarray) -> None:
        if not cams:
            cams.append(pyvirtualcam.Camera(rgb.shape[1], rgb.shape[0], fps))
        cams[0].send(rgb)
        cams[0].sleep_until_next_frame()

    return send


def run(args: argparse.Namespace) -> str:
    cap, fps, is_file = open_capture(args.camera)
    show = make_display(args.show)
    vcam = make_virtual_camera(args.virtual_camera, fps)
    writer = Writer(args.out, fps) if args.out is not None else None
    meter = Meter()
    stop = threading.Event()

    def emit(result: Result) -> None:
        meter.add(result.latency)
        if writer is not None:
            writer.put(result.frame)
        if show is not None:
            show(overlay(result.frame, meter.fps, result.latency))
        if vcam is not None:
            vcam(result.frame)

    try:
        frames = frames_of(cap, args.max_frames, stop, meter.started)
        where = run_remote(args, frames, emit, is_file) if args.server else run_local(args, frames, emit)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        stop.set()
        cap.release()
    if writer is not None:
        writer.close()
    dest = f" -> {args.out}" if args.out else ""
    return f"webcam: {meter.summary()} [{where}]{dest}"


def main(argv: list[str] | None = None) -> int:
    # OMP_WAIT_POLICY=PASSIVE (idle OpenMP teams sleep) is set once, by engine/__init__.py
    args = parse_args(argv)
    try:
        print(run(args))
    except EngineError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
