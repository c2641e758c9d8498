"""``WS /v1/stream``: live reenactment over a WebSocket (wire format: ``engine.serve.protocol``).

Per session: the socket is read by an async task into a bounded ``Inbox`` (drop policy there); a
pusher thread decodes frames and pushes them into the engine's ``ReenactStream``; a reader thread
takes finished frames, encodes them and hands them to an async sender. Each session has an engine
of its own from the pool (see ``engines``), so sessions never wait for each other.
"""

from __future__ import annotations

import asyncio
import io
import logging
import shutil
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
from fastapi import APIRouter, WebSocket
from PIL import Image
from starlette.websockets import WebSocketDisconnect, WebSocketState

from engine.api import Reenactor, ReenactStream, RunControl, RunOptions
from engine.errors import EngineError
from engine.runtime import Cancelled
from engine.serve import live
from engine.serve.admission import Refused, admit, message_type, parse_json
from engine.serve.context import Context
from engine.serve.errors import ApiError
from engine.serve.faults import DISK_FULL, is_disk_full
from engine.serve.inbox import POLICIES, Inbox, Item
from engine.serve.options import RUN_FIELDS, parse
from engine.serve.protocol import close_reason, image_kind, pack_out, unpack_in
from engine.serve.sessions import Stats
from engine.serve.sources import inline_source, source_path, touch

log = logging.getLogger("engine.serve")
router = APIRouter()
ENGINE_QUEUE = 16  # frames inside the engine's own stream queues (its backpressure)
OUT_QUEUE = 64  # encoded results waiting for a slow client before the oldest is dropped
MAX_FRAME_BYTES = 16 * 2**20


class Close(Exception):
    def __init__(self, code: int, reason: str, field_name: str = "") -> None:
        super().__init__(reason)
        self.code, self.reason, self.field = code, reason, field_name


def decode_frame(payload: bytes, size: int, max_pixels: int) -> np.ndarray:
    try:
        img = Image.open(io.BytesIO(payload))
        width, height = img.size
    except Exception:  # noqa: BLE001 - Pillow raises many types for bad data
        raise Close(4422, "a frame is not a decodable JPEG/WebP image", "frame") from None
    if width * height > max_pixels:
        raise Close(4413, f"a frame is {width}x{height}, over the server's {max_pixels} pixel limit", "frame")
    try:
        if img.format == "JPEG":
            img.draft("RGB", (size, size))  # decode at reduced scale: the engine only needs size x size
        return np.array(img.convert("RGB"))  # a writeable copy (torch warns on read-only arrays)
    except Exception:  # noqa: BLE001
        raise Close(4422, "a frame is truncated or corrupt", "frame") from None


def encode_frame(frame: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(frame[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


class Session:
    def __init__(self, ws: WebSocket, ctx: Context, engine: Reenactor, source: Path, options: RunOptions,
                 policy: str) -> None:
        self.ws, self.ctx, self.engine, self.source, self.options = ws, ctx, engine, source, options
        self.id = str(uuid.uuid4())
        self.inbox = Inbox(ctx.config.stream_queue, policy)
        self.stats = Stats()
        self.control = RunControl()
        self.meta: dict[int, Item] = {}  # engine push index -> the client's frame
        self.out: asyncio.Queue = asyncio.Queue()
        self.ended = False
        self.aborted = threading.Event()  # stop now: the client left, or a frame was bad
        self.seconds: dict[str, float] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stream: ReenactStream | None = None  # the engine's stream once open (live changes go to it)

    # -- threads -----------------------------------------------------------------------------
    def _post(self, item: object) -> None:
        assert self.loop is not None
        try:
            self.loop.call_soon_threadsafe(self._enqueue, item)
        except RuntimeError:  # the event loop is gone (server stopping): nobody to tell
            self.aborted.set()

    def _enqueue(self, item: object) -> None:
        if isinstance(item, bytes) and self.out.qsize() >= OUT_QUEUE:
            try:  # the client is not reading: drop the oldest result (never a control message)
                oldest = self.out.get_nowait()
                if isinstance(oldest, bytes):
                    self.stats.dropped_out += 1
                else:
                    self.out.put_nowait(oldest)
            except asyncio.QueueEmpty:
                pass
        self.out.put_nowait(item)

    def _push_loop(self, stream) -> None:
        size, limit = self.engine.size, self.ctx.config.max_pixels
        try:
            while (item := self.inbox.get()) is not None:
                rgb = decode_frame(item.payload, size, limit)
                self.meta[stream.pushed] = item
                stream.push(rgb)
                self.stats.pushed += 1
            stream.end()
        except Close as err:
            self.aborted.set()
            self._post(err)
        except Cancelled:
            self.aborted.set()
        except EngineError as err:
            self.aborted.set()
            self._post(Close(4422, str(err), "frame"))
        except Exception:  # noqa: BLE001 - reported to the client; the server goes on
            log.exception("stream %s: push failed", self.id)
            self.aborted.set()
            self._post(Close(1011, "internal error while reading frames"))

    def _read_loop(self, stream) -> None:
        m = self.ctx.metrics
        try:
            for result in stream.results():
                item = self.meta.pop(result.index)
                data = encode_frame(result.frame)
                latency = time.monotonic() - item.received
                self._post(pack_out(item.seq, item.timestamp, latency * 1000, data))
                m.frame_latency.observe(latency)
                lat = self.stats.latencies
                lat.append(latency)
                if len(lat) > 1000:
                    del lat[:500]
            self._post("done")
        except Cancelled:
            pass
        except EngineError as err:
            self._post(Close(4422, str(err)))
        except Exception:  # noqa: BLE001
            log.exception("stream %s: engine failed", self.id)
            self._post(Close(1011, "internal error in the engine"))

    # -- async side ---------------------------------------------------------------------------
    async def _receive_loop(self) -> None:
        cfg, m = self.ctx.config, self.ctx.metrics
        while True:
            try:
                msg = await asyncio.wait_for(self.ws.receive(), None if self.ended else cfg.idle_timeout)
            except asyncio.TimeoutError:
                raise Close(4408, f"no frame for {cfg.idle_timeout:g} s (idle timeout)") from None
            if msg["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(msg.get("code", 1000))
            if msg.get("bytes") is not None:
                data = msg["bytes"]
                if self.ended:  # a client's encoder may still deliver a frame after its end: ignored
                    self.stats.late += 1
                    continue
                if len(data) > MAX_FRAME_BYTES:
                    raise Close(4413, f"a frame is over {MAX_FRAME_BYTES >> 20} MiB", "frame")
                stamp, payload = unpack_in(data)
                if image_kind(payload) is None:
                    raise Close(4415, "frames must be JPEG or WebP (optionally after an FRVI header)", "frame")
                item = Item(self.stats.received, stamp, payload, time.monotonic())
                self.stats.received += 1
                m.frames_in.inc()
                accepted, dropped = self.inbox.offer(item)
                while not accepted and not self.ended:  # block policy: stop reading the socket until room
                    await asyncio.sleep(0.005)
                    accepted, dropped = self.inbox.offer(item)
                if dropped:
                    self.stats.dropped += dropped
                    m.frames_dropped.inc(dropped)
            else:
                try:
                    kind = message_type(parse_json(msg.get("text")))
                except ValueError:  # malformed JSON of any shape (deeply nested too): 4400 below
                    kind = None
                if kind == "end":
                    self.ended = True
                    self.inbox.close()
                elif kind == "stats":
                    self._enqueue(("json", {"type": "stats", "stats": self.stats.public()}))
                elif kind in live.MESSAGES and not self.ended:  # between frames (engine.serve.live)
                    await live.apply(self, msg.get("text"))
                else:
                    raise Close(4400, "text messages after start must be {\"type\": \"end\"} or {\"type\": \"stats\"}")

    async def _send_loop(self) -> tuple[int, str]:
        m = self.ctx.metrics
        while True:
            item = await self.out.get()
            if isinstance(item, bytes):
                await self.ws.send_bytes(item)
                self.stats.sent += 1
                self.stats.first_sent = self.stats.first_sent or time.monotonic()
                m.frames_out.inc()
                m.fps.tick()
            elif item == "done":
                await self.ws.send_json({"type": "done", "session": self.id, "stats": self.stats.public()})
                return 1000, "done"
            elif isinstance(item, Close):
                raise item
            else:
                await self.ws.send_json(item[1])

    def _own(self, opened: Future) -> None:
        """The session's owner thread: opens the engine stream, pushes, and closes it - all on one
        thread, because the engine's lock is an RLock that only its acquiring thread may release."""
        try:
            handle = self.engine.set_source(self.source)
            stream = self.engine.stream(handle, self.options, self.control, ENGINE_QUEUE)
        except BaseException as err:  # noqa: BLE001 - handed to the async side
            opened.set_exception(err)
            return
        reader = threading.Thread(target=self._read_loop, args=(stream,), name="frvd-session-read", daemon=True)
        self.stream = stream
        try:
            opened.set_result(stream)
            reader.start()
            self._push_loop(stream)  # until the end message, an abort, or a bad frame
            while reader.is_alive() and not self.aborted.is_set():  # the flush after the end message
                reader.join(timeout=0.1)
        finally:
            if self.aborted.is_set():
                self.control.cancel()
            self.seconds = stream.stage_seconds()
            stream.close()  # stops the engine's workers; the reader then sees the end marker
            reader.join(timeout=30)
            if reader.is_alive():
                log.error("stream %s: reader thread did not stop", self.id)

    async def run(self) -> tuple[int, str]:
        """-> (close code, reason); raises Close for errors and WebSocketDisconnect when the client left."""
        self.loop = asyncio.get_running_loop()
        opened: Future = Future()
        owner = threading.Thread(target=self._own, args=(opened,), name="frvd-session", daemon=True)
        owner.start()
        tasks: list[asyncio.Task] = []
        finished = False
        try:
            stream = await asyncio.wrap_future(opened)
            await self.ws.send_json({"type": "ready", "session": self.id, "size": self.engine.size,
                                     "lookahead": stream.lookahead, "steady_lookahead": stream.steady_lookahead,
                                     "queue": self.inbox.policy, "max_queue": self.inbox.maxlen,
                                     "controls": asdict(stream.controls)})
            tasks = [asyncio.create_task(self._receive_loop()), asyncio.create_task(self._send_loop())]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            result = next(iter(done)).result()  # raises Close / WebSocketDisconnect
            finished = True
            return result
        finally:
            for task in tasks:
                task.cancel()
            if not finished:
                self.aborted.set()
                self.control.cancel()
            self.inbox.abort()
            await asyncio.to_thread(owner.join, 60)
            if owner.is_alive():
                log.error("stream %s: owner thread did not stop", self.id)
            for stage, value in self.seconds.items():
                self.ctx.metrics.stage_seconds.labels("stream", stage).observe(value)


async def _start(ws: WebSocket, ctx: Context) -> tuple[Path, RunOptions, str, Path | None]:
    """Read and check the start message -> (source file, options, queue policy, temporary folder)."""
    cfg = ctx.config
    try:  # the key is checked before anything large is read (see admission)
        start = await admit(ws, ctx.sessions.gate, cfg.api_key, cfg.auth_timeout, cfg.idle_timeout)
    except Refused as err:
        raise Close(err.code, err.reason, err.field) from None
    if not ctx.engines.ready.is_set():
        raise Close(1013, "the server is still loading its engines; retry shortly")
    policy = start.get("queue", "drop_oldest")
    if policy not in POLICIES:
        raise Close(4422, f"queue must be one of {', '.join(POLICIES)}", "queue")
    raw = start.get("options") or {}
    if not isinstance(raw, dict):
        raise Close(4422, "options must be a JSON object", "options")
    try:
        options = parse(raw, cfg, ctx.engines.size, (*RUN_FIELDS, "size", "absolute_motion")).run
        source = start.get("source")
        if isinstance(source, dict) and isinstance(source.get("id"), str):
            path = source_path(cfg, source["id"])
            if path is None:
                raise Close(4404, "no uploaded source with that id (POST /v1/sources first)", "source.id")
            touch(path)
            return path, options, policy, None
        if isinstance(source, dict) and isinstance(source.get("data"), str):
            tmp = cfg.tmp_dir / str(uuid.uuid4())
            try:
                return await inline_source(cfg, ctx.engines.size, source["data"], tmp), options, policy, tmp
            except BaseException:
                _rmtree(tmp)
                raise
        raise Close(4422, "source must be {\"id\": UUID} or {\"data\": BASE64}", "source")
    except ApiError as err:
        code = {413: 4413, 415: 4415}.get(err.status, 4422)
        raise Close(code, f"{err.field}: {err.message}", err.field) from None
    except RecursionError:  # an option nested too deeply to be shown
        raise Close(4422, "options: a value is nested too deeply", "options") from None


def _rmtree(path: Path | None) -> None:
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)


@router.websocket("/v1/stream")
async def stream_endpoint(ws: WebSocket) -> None:
    ctx: Context = ws.app.state.ctx
    code, reason, field_name = 1000, "done", ""
    engine, tmp, session = None, None, None
    try:
        source, options, policy, tmp = await _start(ws, ctx)
        engine = ctx.engines.acquire_stream()
        if engine is None:
            n = ctx.config.max_streams
            raise Close(4429, f"all {n} stream slots are busy (--max-streams {n}); retry later", "session")
        session = Session(ws, ctx, engine, source, options, policy)
        ctx.sessions.active[session.id] = session.stats
        ctx.sessions.total += 1
        ctx.metrics.streams_active.inc()
        code, reason = await session.run()
    except Close as err:
        code, reason, field_name = err.code, err.reason, err.field
    except WebSocketDisconnect as err:
        code, reason = -1, f"client left ({err.code})"
    except EngineError as err:
        code, reason = 4422, str(err)
    except Exception as err:  # noqa: BLE001 - one session's failure must not take the server down
        if is_disk_full(err):  # an inline source could not be stored: try again later
            log.warning("stream refused: %s", err)
            code, reason = 1013, f"{DISK_FULL} on the server; retry later"
        else:
            log.exception("stream failed")
            code, reason = 1011, "internal server error"
    finally:
        if session is not None:
            ctx.sessions.active.pop(session.id, None)
            ctx.metrics.streams_active.dec()
        if engine is not None:
            ctx.engines.release_stream(engine)
        await asyncio.to_thread(_rmtree, tmp)
    ctx.metrics.streams.labels(str(code if code > 0 else "client_left")).inc()
    if code > 0 and ws.client_state == WebSocketState.CONNECTED:
        try:
            if code != 1000:
                await ws.send_json({"type": "error", "code": code, "field": field_name, "message": reason})
            await ws.close(code, close_reason(reason))
        except Exception:  # noqa: BLE001 - the client may be gone already
            pass
