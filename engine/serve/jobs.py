"""``/v1/jobs``: submit (multipart), read, follow (Server-Sent Events), download (with ranges),
delete (cancels a running job and removes its files)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from PIL import Image

from engine.io import iter_video_frames, load_image, probe_video
from engine.serve import auth, uploads
from engine.serve.context import Context
from engine.serve.errors import ApiError, busy, invalid, not_found, too_large, unsupported
from engine.serve.options import JOB_FIELDS, parse
from engine.serve.store import TERMINAL, Job, parse_id
from engine.serve.worker import RESULT

router = APIRouter(prefix="/v1", dependencies=[Depends(auth.require)])
SSE_POLL = 0.25  # seconds between looks at a job's state
SSE_KEEPALIVE = 15.0
_RANGE_SPEC = re.compile(r"^(\d+)-(\d*)$|^-(\d+)$")
STILL_IMAGE_FORMATS = ("image2", "apng")  # plus every "*_pipe" demuxer (png_pipe, jpeg_pipe, webp_pipe, ...)


class ResultFile(FileResponse):
    """A result download. A syntactically invalid ``Range`` (``bytes=100-50``, ``bytes=abc``,
    ``items=0-5``) is ignored and the whole file sent (RFC 9110 14.2); starlette answers 400."""

    @classmethod
    def _parse_range_header(cls, http_range: str, file_size: int) -> list[tuple[int, int]]:
        units, _, specs = http_range.partition("=")
        if units.strip().lower() != "bytes" or not _valid_specs(specs):
            return []  # no ranges: the whole file, 200
        return super()._parse_range_header(http_range, file_size)


def _valid_specs(specs: str) -> bool:
    parts = [p.strip() for p in specs.split(",")]
    for part in parts:
        m = _RANGE_SPEC.match(part) if part.isascii() else None
        if m is None or (m.group(2) and int(m.group(2)) < int(m.group(1))):
            return False
    return bool(parts)


def ctx_of(request: Request) -> Context:
    return request.app.state.ctx


def not_ready() -> ApiError:
    return ApiError(503, "server", "the server is still loading its engines", "retry in a few seconds (see /readyz)",
                    {"Retry-After": "5"})


def check_source(path: Path, size: int, max_pixels: int) -> None:
    try:
        with Image.open(path) as img:  # the header only: refuse a huge image before decoding it
            w, h = img.size
    except Image.DecompressionBombError as err:  # over Pillow's own limit (2 x 89.5 Mpx): too large, not bad
        raise too_large("source", f"the source image is too large ({err})", "downscale it (e.g. to 1024x1024)"
                        ) from None
    except Exception:  # noqa: BLE001 - not an image: load_image below says so in the CLI's words
        w = h = 0
    if w * h > max_pixels:
        raise too_large("source", f"the source image is {w}x{h}, over this server's {max_pixels:,} pixel limit",
                        "downscale it (e.g. to 1024x1024)")
    load_image(path, size)


def check_is_video(path: Path) -> None:
    """A still image (PNG, JPEG, ...) is not a driving video: FFmpeg would read it as one frame."""
    import av

    try:
        with av.open(str(path)) as container:
            name = container.format.name
    except Exception:  # noqa: BLE001 - not readable at all: probe_video says so in the CLI's words
        return
    if any(n in STILL_IMAGE_FORMATS or n.endswith("_pipe") for n in name.split(",")):
        raise unsupported("driving", f"the driving file is a still image ({name.split(',')[0].removesuffix('_pipe')}"
                          "), not a video", "send a video clip (MP4, WebM, MOV, ...): a still image has no motion")


def _count_frames(path: Path, limit: int) -> int:
    """Decode up to ``limit`` frames (at a small size: decoding is the cost) -> how many there were.
    The container's frame count is only a hint, and a clip can be corrupt past a good header; both
    are found here, at submission, rather than by a failed job later."""
    count = sum(1 for _ in iter_video_frames(path, 64, limit))
    if count == 0:
        raise invalid("driving", "the driving video has no frames", "pass a clip with at least one frame")
    return count


@router.post("/jobs", status_code=202)
async def submit(request: Request) -> JSONResponse:
    ctx = ctx_of(request)
    cfg = ctx.config
    try:
        if not ctx.engines.ready.is_set():
            raise not_ready()
        if ctx.store.waiting() >= cfg.max_queue:  # before reading the body: no upload wasted
            raise _queue_full(cfg.max_queue)
        job_id = str(uuid.uuid4())
        folder = ctx.store.folder(job_id)
        folder.mkdir(parents=True)
        try:
            up = await uploads.receive(request, folder, {"source": ("image/",), "driving": ("video/",)},
                                       JOB_FIELDS, cfg.max_upload_bytes)
            options = parse(up.texts, cfg, ctx.engines.size, JOB_FIELDS)
            size = ctx.engines.size
            await _validate(up, cfg.max_pixels, cfg.max_frames, options.max_frames, size)
            record = {**options.to_json(), "names": up.names}
            position = ctx.store.add(job_id, record, cfg.max_queue)
            if position is None:
                raise _queue_full(cfg.max_queue)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
    except ApiError as err:
        ctx.metrics.jobs_rejected.labels(str(err.status)).inc()
        raise
    ctx.metrics.jobs_submitted.inc()
    ctx.worker.wake()
    return JSONResponse({"id": job_id, "state": "queued", "position": position, "url": f"/v1/jobs/{job_id}"},
                        status_code=202, headers={"Location": f"/v1/jobs/{job_id}"})


async def _validate(up: uploads.Upload, max_pixels: int, max_frames: int, asked: int | None, size: int) -> None:
    src, drv = up.files["source"], up.files["driving"]
    await uploads.validate(lambda p: check_source(p, size, max_pixels), src, up.names["source"], "source")
    await uploads.validate(check_is_video, drv, up.names["driving"], "driving")
    info = await uploads.validate(probe_video, drv, up.names["driving"], "driving")
    if info.width * info.height > max_pixels:
        raise too_large("driving", f"the driving video is {info.width}x{info.height}, over this server's "
                        f"{max_pixels:,} pixel limit per frame", "downscale it (e.g. to 512x512)")
    hint = f"trim it, or send max_frames={max_frames} to use only its start"
    if asked and asked > max_frames:
        raise too_large("max_frames", f"max_frames {asked} is over this server's limit of {max_frames}", hint)
    if not asked and info.frame_count > max_frames:  # refused from the header, before decoding
        raise too_large("driving", f"the driving video has {info.frame_count} frames, over this server's limit "
                        f"of {max_frames}", hint)
    limit = min(asked, max_frames) if asked else max_frames + 1
    frames = await uploads.validate(lambda p: _count_frames(p, limit), drv, up.names["driving"], "driving")
    if frames > max_frames:
        raise too_large("driving", f"the driving video has more than {max_frames} frames, this server's limit",
                        hint)


def _queue_full(limit: int) -> ApiError:
    return busy("queue", f"{limit} jobs are already waiting", "retry later (Retry-After says when to try)", 10)


def _job(ctx: Context, raw_id: str) -> Job:
    job_id = parse_id(raw_id)
    job = ctx.store.get(job_id) if job_id else None
    if job is None:
        raise not_found()
    return job  # a 'deleting' job (DELETE accepted, its run not yet stopped) is shown until it is gone


def _view(ctx: Context, job: Job) -> dict:
    out = job.public()
    live = ctx.worker.live.get(job.id)
    if live and job.state == "running":
        out["stage"], out["done"], out["total"] = live
    return out


@router.get("/jobs")
async def list_jobs(request: Request, limit: int = 100) -> JSONResponse:
    ctx = ctx_of(request)
    jobs = [_view(ctx, j) for j in ctx.store.list(max(1, min(limit, 1000)))]
    return JSONResponse({"jobs": jobs})


@router.get("/jobs/{job_id}")
async def get_job(job_id: str, request: Request) -> JSONResponse:
    ctx = ctx_of(request)
    return JSONResponse(_view(ctx, _job(ctx, job_id)))


@router.get("/jobs/{job_id}/events")
async def job_events(job_id: str, request: Request) -> StreamingResponse:
    ctx = ctx_of(request)
    first = _job(ctx, job_id)

    async def events() -> AsyncIterator[str]:
        last, job, quiet_since = None, first, time.monotonic()
        while True:
            view = _view(ctx, job)
            key = (view["state"], view["stage"], view["done"], view["total"])
            if key != last:
                last, quiet_since = key, time.monotonic()
                yield _sse("progress", view)
            if job.state in TERMINAL:
                yield _sse(job.state, view)
                return
            if time.monotonic() - quiet_since > SSE_KEEPALIVE:
                quiet_since = time.monotonic()
                yield ": keep-alive\n\n"
            await asyncio.sleep(SSE_POLL)
            if await request.is_disconnected():
                return
            latest = ctx.store.get(first.id)
            if latest is None or latest.state == "deleting":
                yield _sse("deleted", {"id": first.id, "state": "deleted"})
                return
            job = latest

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


@router.get("/jobs/{job_id}/result", response_model=None)
async def job_result(job_id: str, request: Request) -> FileResponse:
    ctx = ctx_of(request)
    job = _job(ctx, job_id)
    path = ctx.store.folder(job.id) / RESULT
    if job.state != "done" or not path.is_file():
        raise ApiError(409, "state", f"the job is {job.state}, it has no result",
                       "wait for its 'done' event (GET /v1/jobs/{id}/events)" if job.state in ("queued", "running")
                       else "see its error; resubmit it")
    return ResultFile(path, media_type="video/mp4", filename=f"{job.id}.mp4")


@router.delete("/jobs/{job_id}")
async def delete_job(job_id: str, request: Request) -> JSONResponse:
    ctx = ctx_of(request)
    job = _job(ctx, job_id)
    if job.state == "deleting":
        return JSONResponse({"id": job.id, "state": "deleting"}, status_code=202)
    before = ctx.store.mark_deleting(job.id)
    if before is None:
        raise not_found()
    if before == "running":
        ctx.worker.cancel(job.id)  # the worker removes it when the render stops (next step boundary)
        return JSONResponse({"id": job.id, "state": "deleting"}, status_code=202)
    await asyncio.to_thread(ctx.store.remove, job.id)
    return JSONResponse({"id": job.id, "state": "deleted"})
