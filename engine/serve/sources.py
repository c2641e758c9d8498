"""``/v1/sources``: upload a source portrait once, start any number of streams with its id.

An upload is received under ``DATA/tmp`` and renamed into ``DATA/sources/ID`` once complete and
valid (a crash mid-upload leaves nothing but ``tmp``, cleared at start-up). At most
``--max-sources`` are kept (more: 429); one unused for ``--source-ttl-hours`` is removed (its
folder's modification time is its last use: set at upload and at each stream start)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import os
import shutil
import time
import uuid
from pathlib import Path

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from engine.serve import auth, uploads
from engine.serve.config import ServeConfig
from engine.serve.errors import busy, invalid, not_found, too_large
from engine.serve.jobs import check_source, ctx_of, not_ready
from engine.serve.store import parse_id

router = APIRouter(prefix="/v1", dependencies=[Depends(auth.require)])
log = logging.getLogger("engine.serve")


def source_path(config: ServeConfig, raw_id: str) -> Path | None:
    """The stored file of an uploaded source, or None (ids are the server's UUIDs, never paths)."""
    source_id = parse_id(raw_id)
    path = config.sources_dir / source_id / "source" if source_id else None
    return path if path is not None and path.is_file() else None


def touch(path: Path) -> None:
    """Mark a stored source as used now (its expiry counts from its last use)."""
    try:
        os.utime(path.parent)
    except OSError:
        pass  # removed meanwhile, or a read-only disk: the stream has its file open already


def expire_sources(config: ServeConfig, now: float | None = None) -> int:
    """Remove the sources unused for ``source_ttl_hours`` (0: never) -> how many."""
    if config.source_ttl_hours <= 0 or not config.sources_dir.is_dir():
        return 0
    cutoff = (time.time() if now is None else now) - config.source_ttl_hours * 3600
    removed = 0
    for folder in config.sources_dir.iterdir():
        try:
            if folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
        except FileNotFoundError:
            continue
    if removed:
        log.info("removed %d uploaded sources unused for %g hours", removed, config.source_ttl_hours)
    return removed


def _quota_full(config: ServeConfig) -> bool:
    expire_sources(config)
    return sum(1 for _ in config.sources_dir.iterdir()) >= config.max_sources


@router.post("/sources", status_code=201)
async def upload_source(request: Request) -> JSONResponse:
    ctx = ctx_of(request)
    if not ctx.engines.ready.is_set():
        raise not_ready()
    cfg = ctx.config
    if await asyncio.to_thread(_quota_full, cfg):
        raise busy("source", f"this server keeps at most {cfg.max_sources} uploaded sources",
                   "delete one you no longer need (DELETE /v1/sources/ID), or retry once one expires "
                   f"({cfg.source_ttl_hours:g} h unused)", 60)
    source_id = str(uuid.uuid4())
    folder = cfg.tmp_dir / f"source-{source_id}"  # renamed into sources/ once complete and valid
    folder.mkdir(parents=True)
    try:
        up = await uploads.receive(request, folder, {"source": ("image/",)}, (), cfg.max_upload_bytes)
        size, limit = ctx.engines.size, cfg.max_pixels
        await uploads.validate(lambda p: check_source(p, size, limit), up.files["source"], up.names["source"],
                               "source")
        os.replace(folder, cfg.sources_dir / source_id)
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
