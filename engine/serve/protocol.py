"""The ``/v1/stream`` wire format, shared by the server, the webcam client and the browser page.

Client -> server
    1. one JSON text message: ``{"type": "start", "source": {"id": UUID} | {"data": BASE64},
       "options": {...}, "queue": "drop_oldest" | "block", "token": KEY?}``
    2. binary driving frames: ``IN_HEADER`` (magic ``FRVI``, float64 capture timestamp in the
       client's clock, milliseconds) followed by a JPEG or WebP image; a bare JPEG/WebP is accepted
       too (its timestamp echoes as NaN)
    3. ``{"type": "end"}`` when no more frames follow (the rest is flushed), or just close. Frames
       that still arrive after it are ignored (counted as ``late``).
Server -> client
    ``{"type": "ready", ..., "controls": {...every motion control in force}}`` once, then binary
    result frames: ``OUT_HEADER`` (magic ``FRVO``,
    uint32 index of the driving frame it answers - counting every frame the client sent, so dropped
    frames show as gaps -, float64 capture timestamp echoed, float32 server latency in ms from
    receiving the driving frame to sending this one) followed by a JPEG; ``{"type": "done",
    "stats": ...}`` and close 1000 after ``end``; ``{"type": "error", ...}`` before an error close.
Little-endian throughout. Close codes: ``CLOSE_CODES``.
"""

from __future__ import annotations

import math
import struct

IN_MAGIC = b"FRVI"
OUT_MAGIC = b"FRVO"
IN_HEADER = struct.Struct("<4sd")  # magic, capture timestamp (ms)
OUT_HEADER = struct.Struct("<4sIdf")  # magic, frame index, capture timestamp echo (ms), latency (ms)

CLOSE_CODES = {
    1000: "done: every frame was sent after the client's end message",
    1012: "the server is stopping or restarting (sent by uvicorn)",
    1009: "a message over the limit (1 MiB until the key is checked: see engine.serve.admission)",
    1011: "internal server error",
    1013: "retry shortly: the engines are not loaded yet, or the disk is full",
    4400: "bad message: the first message must be the JSON start message; later text only end or stats",
    4401: "missing or wrong API key (Authorization header or token in the start message)",
    4404: "no uploaded source with that id",
    4408: "idle timeout: no message from the client for --idle-timeout seconds",
    4413: "too large: a frame, an inline source or a frame's pixel count is over the server's limit",
    4415: "unsupported frame format: send JPEG or WebP",
    4422: "invalid options or source (the message names the field)",
    4429: "every stream slot is busy (--max-streams): retry later",
}


def pack_in(image: bytes, timestamp_ms: float | None) -> bytes:
    return IN_HEADER.pack(IN_MAGIC, math.nan if timestamp_ms is None else timestamp_ms) + image


def unpack_in(data: bytes) -> tuple[float | None, bytes]:
    """-> (capture timestamp or None, image bytes)."""
    if data[:4] == IN_MAGIC and len(data) >= IN_HEADER.size:
        _, stamp = IN_HEADER.unpack_from(data)
        return (None if math.isnan(stamp) else stamp), data[IN_HEADER.size:]
    return None, data


def pack_out(index: int, timestamp_ms: float | None, latency_ms: float, image: bytes) -> bytes:
    return OUT_HEADER.pack(OUT_MAGIC, index, math.nan if timestamp_ms is None else timestamp_ms, latency_ms) + image


def unpack_out(data: bytes) -> tuple[int, float | None, float, bytes]:
    """-> (index, capture timestamp echo or None, server latency in ms, JPEG bytes)."""
    if data[:4] != OUT_MAGIC or len(data) < OUT_HEADER.size:
        raise ValueError("not a result frame (no FRVO header)")
    _, index, stamp, latency = OUT_HEADER.unpack_from(data)
    return index, (None if math.isnan(stamp) else stamp), latency, data[OUT_HEADER.size:]


def image_kind(data: bytes) -> str | None:
    """``jpeg`` / ``webp`` from the magic bytes, else None."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def close_reason(text: str) -> str:
    """A WebSocket close reason is at most 123 bytes of UTF-8."""
    raw = text.encode("utf-8")
    return text if len(raw) <= 123 else raw[:120].decode("utf-8", "ignore") + "..."
