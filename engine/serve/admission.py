"""Who may open a stream, checked before anything large is read.

A WebSocket is *unauthenticated* until its key is checked: from the ``Authorization`` header at
the handshake, or from a small first message (``{"type": "auth", "token"}`` or the start
message's ``token``). Until then

- each message may be at most ``PREAUTH_MAX_BYTES`` (enforced by the WebSocket parser, see
  ``protocols``: a larger one is refused with close 1009 as it arrives, never buffered whole);
- at most ``--max-unauthenticated`` such sockets are open at once (more: close 4429 at once);
- the first message must come within ``--auth-timeout`` seconds (else close 4408).

Once the key is checked the socket's limit is raised to the server's (inline sources, frames).
A client sending an inline source larger than ``PREAUTH_MAX_BYTES`` with the key in a message
sends ``{"type": "auth", "token"}`` first and waits for ``{"type": "authenticated"}``.

Every text message is parsed by ``parse_json``: malformed JSON of any shape (deeply nested
included) is a ``ValueError`` the caller turns into close 4400, never an internal error.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from engine.serve import auth

PREAUTH_MAX_BYTES = 1 << 20  # a start message with a typical inline portrait fits; 16 sockets x 1 MiB is bounded
LIMIT_EXTENSION = "frvd.message_limit"  # scope extension set by protocols.GuardedWebSocket


class Refused(Exception):
    """Close the socket with ``code`` (after sending the error message)."""

    def __init__(self, code: int, reason: str, field_name: str = "") -> None:
        super().__init__(reason)
        self.code, self.reason, self.field = code, reason, field_name


def parse_json(text: str | None) -> Any:
    """JSON -> a Python value; ValueError for anything that is not valid JSON of a sane depth."""
    try:
        return json.loads(text or "")
    except RecursionError:
        raise ValueError("the JSON is nested too deeply") from None


def message_type(value: Any) -> str | None:
    """The ``type`` of a JSON object message, or None for any other shape."""
    kind = value.get("type") if isinstance(value, dict) else None
    return kind if isinstance(kind, str) else None


def _raise_limit(ws: WebSocket) -> None:
    """Authenticated: the socket may now receive messages up to the server's full limit."""
    limit: dict[str, Callable[[], None]] | None = ws.scope.get("extensions", {}).get(LIMIT_EXTENSION)
    if limit is not None:
        limit["raise"]()


class Gate:
    """Counts the unauthenticated sockets of one server (the event loop's thread only)."""

    def __init__(self, max_unauthenticated: int) -> None:
        self.max = max_unauthenticated
        self.waiting = 0
        self.refused = 0


async def _receive(ws: WebSocket, timeout: float, what: str) -> dict:
    try:
        msg = await asyncio.wait_for(ws.receive(), timeout)
    except asyncio.TimeoutError:
        raise Refused(4408, f"no {what} within {timeout:g} s") from None
    if msg["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(msg.get("code", 1000))
    return dict(msg)


async def admit(ws: WebSocket, gate: Gate, api_key: str | None, auth_timeout: float, idle_timeout: float) -> dict:
    """Accept the socket, authenticate it, and return its start message (a dict); raises Refused."""
    by_header = auth.token_ok(api_key, auth.bearer(ws))
    if by_header:
        _raise_limit(ws)  # before accepting: the client cannot send before the handshake answer
    await ws.accept()
    if by_header:
        return await _start_message(ws, idle_timeout)
    if gate.waiting >= gate.max:
        gate.refused += 1
        raise Refused(4429, f"{gate.max} connections are already waiting to authenticate; retry shortly",
                      "session")
    gate.waiting += 1
    try:
        msg = await _receive(ws, auth_timeout, "start or auth message (unauthenticated socket)")
        first = _object(msg)
        token = first.get("token")
        if not auth.token_ok(api_key, token if isinstance(token, str) else None):
            raise Refused(4401, "missing or wrong API key", "token")
    finally:
        gate.waiting -= 1
    _raise_limit(ws)
    if message_type(first) != "auth":
        return first
    await ws.send_json({"type": "authenticated"})
    return await _start_message(ws, idle_timeout)


async def _start_message(ws: WebSocket, timeout: float) -> dict:
    start = _object(await _receive(ws, timeout, "start message"))
    if message_type(start) == "auth":  # a client that sends the key both ways: harmless
        await ws.send_json({"type": "authenticated"})
        start = _object(await _receive(ws, timeout, "start message"))
    return start


def _object(msg: dict) -> dict:
    try:
        value = parse_json(msg.get("text"))
    except ValueError as err:
        raise Refused(4400, f"the first message must be the JSON start message ({err})") from None
    kind = value.get("type", "start") if isinstance(value, dict) else None
    if kind not in ("start", "auth"):
        raise Refused(4400, "the first message must be the JSON start message (see docs/serving.md)")
    return value
