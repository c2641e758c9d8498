"""``create_app(config)``: the FastAPI application, its state in ``app.state.ctx``."""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine.serve import auth, jobs, sources, streams
from engine.serve.config import ServeConfig
from engine.serve.context import Context
from engine.serve.engines import Engines
from engine.serve.errors import ApiError, api_error_handler
from engine.serve.metrics import Metrics
from engine.serve.sessions import Sessions
from engine.serve.store import JobStore
from engine.serve.worker import JobWorker

log = logging.getLogger("engine.serve")
STATIC = Path(__file__).resolve().parent / "static"


def build_context(config: ServeConfig) -> Context:
    for folder in (config.data, config.jobs_dir, config.sources_dir):
        folder.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(config.tmp_dir, ignore_errors=True)  # inline stream sources of a previous run
    config.tmp_dir.mkdir(parents=True, exist_ok=True)
    store = JobStore(config.db_path, config.jobs_dir)
    recovered = store.recover(config.max_attempts)
    if any(recovered.values()):
        log.warning("restart: %s", {k: len(v) for k, v in recovered.items()})
    engines = Engines(config)
    metrics = Metrics(store.counts)
    worker = JobWorker(config, store, engines, metrics)
    return Context(config, store, engines, metrics, worker, Sessions())


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
    app.add_exception_handler(Exception, _internal_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["*"],
                           allow_headers=["Authorization", "Content-Type"])
    app.include_router(jobs.router)
    app.include_router(sources.router)
    app.include_router(streams.router)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.get("/readyz", dependencies=[Depends(auth.require)])
    async def readyz(request: Request) -> JSONResponse:
        ctx: Context = request.app.state.ctx
        e = ctx.engines
        body = {"ready": e.ready.is_set(), "preset": config.preset, "error": e.error,
                "streams": {"busy": e.streams_busy if e.ready.is_set() else 0, "max": config.max_streams},
                "queue": ctx.store.waiting()}
        if e.ready.is_set():
            body["size"] = e.size
        return JSONResponse(body, status_code=200 if e.ready.is_set() else 503)

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


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return ApiError(500, "server", "internal server error", "the server log has the details").response()


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    hint = "see docs/serving.md for the endpoints" if exc.status_code in (404, 405) else ""
    return ApiError(exc.status_code, "path", str(exc.detail), hint, dict(exc.headers or {})).response()
