"""The server as N Ray Serve replicas: ``python -m engine.serve --ray N`` (or ``serve run`` with
``deploy/serve.yaml``). See docs/scale-out.md.

Each replica runs the unchanged FastAPI app (``engine.serve.app.create_app``: WS /v1/stream, the
page, metrics, health) with its own engine pool and its own data folder (``DATA/replica-ID``). Ray
Serve's proxy sends every new request - a WebSocket session is one long request - to the replica with
fewer requests in flight, so sessions spread over replicas. A replica that dies takes only its own
sessions (the proxy closes them; see ``docs/scale-out.md`` for the close code) and Serve starts a
new one; new sessions go to the live replicas meanwhile.

Offline jobs are not kept in any replica's SQLite file here: ``/v1/jobs`` answers 409 with a pointer
to the Ray batch runner (``python -m engine.batch --address ...``), whose outputs and records live in
one output folder and survive any actor or replica (docs/serving.md).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, cast

from fastapi import Request

from engine.serve.config import ServeConfig

log = logging.getLogger("engine.serve")
JOBS_HINT = ("offline jobs in a multi-replica deployment run on the Ray batch runner: "
             "python -m engine.batch MANIFEST --out DIR --address ADDRESS (docs/scale-out.md)")


PROXY_CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
PROXY_CALLBACK = "engine.serve.ray_serve.proxy_middlewares"
REPLICA_LOST = 1012  # "service restart": reconnect, a new session goes to a live replica


class ReplicaLossClose:
    """Proxy middleware: a WebSocket whose replica died gets a close frame (1012), not a dropped TCP
    connection. Serve's proxy ends such a session without any ``websocket.close`` and uvicorn then just
    closes the socket (the client would see 1006); this sends the close the replica could not."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        state = {"accepted": False, "closed": False}

        async def tracked(message: dict) -> None:
            if message["type"] == "websocket.accept":
                state["accepted"] = True
            elif message["type"] == "websocket.close":
                state["closed"] = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        finally:
            if state["accepted"] and not state["closed"]:
                try:
                    await send({"type": "websocket.close", "code": REPLICA_LOST,
                                "reason": "the replica serving this session stopped: reconnect"})
                except Exception:  # noqa: BLE001 - the client is already gone
                    pass


def proxy_middlewares() -> list:
    """Serve's proxy callback (``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``): our proxy middlewares."""
    from starlette.middleware import Middleware

    return [Middleware(ReplicaLossClose)]


def proxy_env() -> None:
    """Make the proxy of a Ray cluster started by this process load ``proxy_middlewares`` (a cluster
    started elsewhere needs the variable in the environment of its ``ray start``)."""
    os.environ.setdefault(PROXY_CALLBACK_ENV, PROXY_CALLBACK)


def replica_app(config: dict[str, Any]) -> Any:
    """The FastAPI app of one replica (called on the replica, at its start)."""
    from ray import serve

    from engine.serve.app import create_app
    from engine.serve.errors import ApiError

    replica = serve.get_replica_context().replica_id.unique_id
    # no job engine: a replica serves no offline jobs (below), so it holds only its stream engines
    fields = {**config, "data": Path(config["data"]) / f"replica-{replica}", "job_engine": False}
    app = create_app(ServeConfig(**fields))

    @app.get("/v1/replica")
    async def whoami(request: Request) -> dict[str, Any]:
        """Which replica answered: its process, whether its engines are loaded, its open sessions (for
        operators and tests: sessions sent to a replica still loading are refused with 1013)."""
        ctx = request.app.state.ctx
        return {"replica": replica, "pid": os.getpid(), "ready": ctx.engines.ready.is_set(),
                "load_error": ctx.engines.error, "streams": len(ctx.sessions.active)}

    async def no_jobs(request: Request) -> None:
        raise ApiError(409, "jobs", "this server runs as Ray Serve replicas without a job store", JOBS_HINT)

    # the job routes answer 409 (no replica-local SQLite queue): put first, they match first
    for path, methods in (("/v1/jobs", ["GET", "POST"]), ("/v1/jobs/{job_id}", ["GET", "DELETE"]),
                          ("/v1/jobs/{job_id}/events", ["GET"]), ("/v1/jobs/{job_id}/result", ["GET"])):
        app.add_api_route(path, no_jobs, methods=methods, include_in_schema=False)
        app.router.routes.insert(0, app.router.routes.pop())
    return app


def deployment(config: ServeConfig, replicas: int, cpus_per_replica: float = 1.0, gpus_per_replica: float = 0.0
               ) -> Any:
    """A bound Serve application: ``replicas`` copies of the app, each holding CPUs/GPUs for its engines."""
    from ray import serve

    plain = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(config).items()}

    @serve.deployment(name="frvd", num_replicas=replicas, max_ongoing_requests=max(config.max_streams, 1) + 8,
                      ray_actor_options={"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica},
                      health_check_period_s=2, health_check_timeout_s=10)
    @serve.ingress()
    class Frvd:
        def __init__(self, cfg: dict[str, Any]) -> None:
            self.cfg = cfg

        def __serve_build_asgi_app__(self) -> Any:
            return replica_app(self.cfg)

    return cast(Any, Frvd).bind(plain)  # serve.deployment made it a Deployment


def run(config: ServeConfig, replicas: int, host: str, port: int, address: str | None = None,
        cpus_per_replica: float = 1.0, gpus_per_replica: float = 0.0, blocking: bool = True) -> None:
    """Start (or connect to) Ray, start Serve's proxy on ``host:port``, deploy the replicas."""
    import ray
    from ray import serve

    if not ray.is_initialized():
        proxy_env()
        ray.init(address=address, include_dashboard=False) if address else ray.init(include_dashboard=False)
    serve.start(http_options={"host": host, "port": port})
    serve.run(deployment(config, replicas, cpus_per_replica, gpus_per_replica), name="frvd", route_prefix="/",
              blocking=blocking)
