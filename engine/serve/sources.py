"""``/v1/sources``: upload a source portrait once, start any number of streams with its id."""

from __future__ import annotations

import asyncio
import base64
import binascii
import shutil
import uuid
from pathlib import Path

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from engine.serve import auth, uploads
from engine.serve.config import ServeConfig
from engine.serve.errors import invalid, not_found, too_large
from engine.serve.jobs import check_source, ctx_of, not_ready
from engine.serve.store import parse_id

router = APIRouter(prefix="/v1", dependencies=[Depends(auth.require)])


def source_path(config: ServeConfig, raw_id: str) -> Path | None:
    """The stored file of an uploaded source, or None (ids are the server's UUIDs, never paths)."""
    source_id = parse_id(raw_id)
    path = config.sources_dir / source_id / "source" if source_id else None
    return path if path is not None and path.is_file() else None


@router.post("/sources", status_code=201)
async def upload_source(request: Request) -> JSONResponse:
    ctx = ctx_of(request)
    if not ctx.engines.ready.is_set():
        raise not_ready()
    source_id = str(uuid.uuid4())
    folder = ctx.config.sources_dir / source_id
    folder.mkdir(parents=True)
    try:
        up = await uploads.receive(request, folder, {"source": ("image/",)}, (), ctx.config.max_upload_bytes)
        size, limit = ctx.engines.size, ctx.config.max_pixels
        await uploads.validate(lambda p: check_source(p, size, limit), up.files["source"], up.names["source"],
                               "source")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return JSONResponse({"id": source_id, "url": f"/v1/sources/{source_id}"}, status_code=201)


@router.delete("/sources/{source_id}")
async def delete_source(source_id: str, request: Request) -> JSONResponse:
    ctx = ctx_of(request)
    path = source_path(ctx.config, source_id)
    if path is None:
        raise not_found("source")
    await asyncio.to_thread(shutil.rmtree, path.parent, True)
    return JSONResponse({"id": path.parent.name, "state": "deleted"})


async def inline_source(config: ServeConfig, size: int, data: str, folder: Path) -> Path:
    """A base64 image from a stream's start message, stored and checked like an upload."""
    if len(data) * 3 // 4 > config.max_upload_bytes:
        raise too_large("source", f"the inline source is over this server's {config.max_upload_mb:g} MiB limit",
                        "send a smaller image, or upload it with POST /v1/sources and send its id")
    try:
        raw = base64.b64decode(data.split(",", 1)[-1] if data.startswith("data:") else data, validate=True)
    except (binascii.Error, ValueError):
        raise invalid("source", "source.data is not valid base64", "send the image file's bytes, base64-encoded"
                      ) from None
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "source"
    path.write_bytes(raw)
    limit = config.max_pixels
    await uploads.validate(lambda p: check_source(p, size, limit), path, "source", "source")
    return path


__all__ = ["inline_source", "router", "source_path"]
