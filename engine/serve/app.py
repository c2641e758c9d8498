"""``create_app(config)``: the FastAPI application, its state in ``app.state.ctx``."""

from __future__ import annotations

import logging
import shutil
import sqlite3
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine.serve import auth, jobs, reconcile, sources, streams
from engine.serve.config import ServeConfig
from engine.serve.context import Context
from engine.serve.engines import Engines
from engine.serve.errors import ApiError, api_error_handler
from engine.serve.faults import disk_full_error, is_disk_full
from engine.serve.headers import SecurityHeaders
from engine.serve.metrics import Metrics
from engine.serve.sessions import Sessions
from engine.serve.worker import JobWorker

log = logging.getLogger("engine.serve")
STATIC = Path(__file__).resolve().parent / "static"
MIN_FREE_BYTES = 1 << 20  # below this free space in the data folder /readyz says not ready
EXPIRE_EVERY = 60.0  # seconds between sweeps for expired stored sources


def build_context(config: ServeConfig) -> Context:
    for folder in (config.data, config.jobs_dir, config.sources_dir):
        folder.mkdir(parents=True, exist_ok=True)
    store = reconcile.open_store(config)  # an unusable database is moved aside with a warning
    recovered = store.recover(config.max_attempts)
    if any(recovered.values()):
        log.warning("restart: %s", {k: len(v) for k, v in recovered.items()})
    reconcile.sweep(config, store)  # incomplete uploads, folders without rows, rows without folders
    sources.expire_sources(config)
    engines = Engines(config)
    metrics = Metrics(store.counts)
    worker = JobWorker(config, store, engines, metrics)
    worker.housekeeping.append((EXPIRE_EVERY, lambda: sources.expire_sources(config)))
    return Context(config, store, engines, metrics, worker, Sessions(config.max_unauthenticated))


def readiness(ctx: Context) -> list[str]:
    """Why the server cannot do its work now (empty: ready)."""
    why = []
    e = ctx.engines
    if e.error is not None:
        why.append(f"the engines failed to load: {e.error}")
    elif not e.ready.is_set():
        why.append("the engines are still loading")
    if not ctx.worker.alive:
        why.append("the job worker is not running (its supervisor restarts it)")
    try:
        free = shutil.disk_usage(ctx.config.data).free
    except OSError as err:
        why.append(f"the data folder cannot be read: {err}")
    else:
        if free < MIN_FREE_BYTES:
            why.append(f"no space left on device: {free >> 10} KiB free in the data folder")
    return why


def create_app(config: ServeConfig) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ctx = build_context(config)
        app.state.ctx = ctx
        loader = threading.Thread(target=ctx.engines.load, name="frvd-load", daemon=True)
        loader.start()  # /healthz answers at once; /readyz once the engines are loaded
        ctx.worker.start()
        try:
            yield
        finally:
            ctx.worker.stop()
            loader.join(timeout=60)
            ctx.engines.close()
            ctx.store.close()

    app = FastAPI(title="frvd-engine", version="0.1.0", lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)  # no unauthenticated schema pages
    app.add_exception_handler(ApiError, api_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(OSError, _storage_error)
    app.add_exception_handler(sqlite3.Error, _storage_error)
    app.add_exception_handler(Exception, _internal_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["*"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(SecurityHeaders)
    app.include_router(jobs.router)
    app.include_router(sources.router)
    app.include_router(streams.router)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.get("/readyz", dependencies=[Depends(auth.require)])
    async def readyz(request: Request) -> JSONResponse:
        ctx: Context = request.app.state.ctx
        e, w = ctx.engines, ctx.worker
        why = readiness(ctx)
        try:
            queue: int | None = ctx.store.waiting()
        except sqlite3.Error as err:
            queue = None
            why.append(f"the jobs database cannot be read: {err}")
        body = {"ready": not why, "reasons": why, "preset": config.preset, "error": e.error,
                "streams": {"busy": e.streams_busy if e.ready.is_set() else 0, "max": config.max_streams},
                "worker": {"alive": w.alive, "restarts": w.restarts, "failures": w.failures,
                           "last_error": w.last_error}, "queue": queue}
        if e.ready.is_set():
            body["size"] = e.size
        return JSONResponse(body, status_code=200 if not why else 503)

    @app.get("/metrics", dependencies=[Depends(auth.require)])
    async def metrics(request: Request) -> Response:
        return Response(request.app.state.ctx.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    # the page is static and holds no data: it loads without a key and sends the key the user types
    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("query", "path", "body")]
    return ApiError(422, ".".join(loc) or "request", first.get("msg", "invalid request")).response()


async def _storage_error(request: Request, exc: Exception) -> JSONResponse:
    """A full disk is 507 naming the cause (nothing half-written stays: each writer removes its
    partial files); any other I/O or database error is an internal error."""
    if is_disk_full(exc):
        log.warning("%s %s: %s (507)", request.method, request.url.path, exc)
        return disk_full_error().response()
    return await _internal_error(request, exc)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return ApiError(500, "server", "internal server error", "the server log has the details").response()


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    hint = "see docs/serving.md for the endpoints" if exc.status_code in (404, 405) else ""
    return ApiError(exc.status_code, "path", str(exc.detail), hint, dict(exc.headers or {})).response()
