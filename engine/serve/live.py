"""Changes to a running ``/v1/stream`` session between frames (``session``: an
``engine.serve.streams.Session``; wire format: ``engine.serve.protocol``).

    {"type": "controls", "controls": {"smooth": 0.4, "lock_pose": true, ...}}
        -> {"type": "controls", "controls": {...every control now in force}}
    {"type": "source", "source": {"id": UUID} | {"data": BASE64}}
        -> {"type": "source", "session": ID}  once the new source's features are ready

Each applies from the next frame the engine takes (frames already in the engine keep the old
ones). A bad request is answered ``{"type": "error", "code": 4404/4413/4415/4422, "field", "message",
"fatal": false}`` and changes nothing: the session goes on.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid
from dataclasses import asdict
from typing import Any

from engine.errors import EngineError
from engine.serve.errors import ApiError
from engine.serve.sources import inline_source, source_path

MESSAGES = ("controls", "source")


class Refusal(Exception):
    def __init__(self, code: int, field: str, message: str) -> None:
        super().__init__(message)
        self.code, self.field, self.message = code, field, message


async def apply(session: Any, text: str | None) -> None:
    """One ``controls`` or ``source`` message; the answer (or a non-fatal error) is queued to the client."""
    try:
        message = json.loads(text or "")
        if not isinstance(message, dict):
            raise Refusal(4400, "message", "a message must be a JSON object")
        stream = session.stream
        if stream is None:
            raise Refusal(4422, message.get("type", ""), "the stream is not open yet")
        if message.get("type") == "controls":
            reply = await _controls(stream, message.get("controls"))
        else:
            reply = await _source(session, stream, message.get("source"))
    except Refusal as err:
        reply = {"type": "error", "code": err.code, "field": err.field, "message": err.message, "fatal": False}
    except (ValueError, RecursionError):
        reply = {"type": "error", "code": 4400, "field": "message", "message": "not valid JSON", "fatal": False}
    session._enqueue(("json", reply))


async def _controls(stream: Any, raw: Any) -> dict:
    if not isinstance(raw, dict) or not raw:
        raise Refusal(4422, "controls", "controls must be a JSON object of controls to change")
    try:
        now = stream.set_controls(**raw)
    except (EngineError, TypeError) as err:
        raise Refusal(4422, "controls", str(err)) from None
    return {"type": "controls", "controls": asdict(now)}


async def _source(session: Any, stream: Any, raw: Any) -> dict:
    cfg = session.ctx.config
    tmp = None
    try:
        if isinstance(raw, dict) and isinstance(raw.get("id"), str):
            path = source_path(cfg, raw["id"])
            if path is None:
                raise Refusal(4404, "source.id", "no uploaded source with that id (POST /v1/sources first)")
        elif isinstance(raw, dict) and isinstance(raw.get("data"), str):
            tmp = cfg.tmp_dir / str(uuid.uuid4())
            path = await inline_source(cfg, session.engine.size, raw["data"], tmp)
        else:
            raise Refusal(4422, "source", "source must be {\"id\": UUID} or {\"data\": BASE64}")
        # the features are computed off the event loop; the engine's workers go on meanwhile
        await asyncio.to_thread(stream.switch_source, path)
    except ApiError as err:
        raise Refusal({413: 4413, 415: 4415}.get(err.status, 4422), err.field, f"{err.field}: {err.message}"
                      ) from None
    except EngineError as err:
        raise Refusal(4422, "source", str(err)) from None
    finally:
        if tmp is not None:  # the features are cached; the file is no longer needed
            await asyncio.to_thread(shutil.rmtree, tmp, True)
    return {"type": "source", "session": session.id}
