"""``python -m engine.serve``: the HTTP/WebSocket server (jobs, live streams, the browser page).

Binds 127.0.0.1 by default. With --api-key (or FRVD_API_KEY) every endpoint but /healthz and the
static page needs ``Authorization: Bearer KEY``. See docs/serving.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from engine.cli.args import Parser, creatable_dir, existing_dir, finite_float, int_in, positive_int
from engine.config import presets
from engine.config.settings import DTYPES
from engine.errors import EngineError, InputError
from engine.serve.config import DEFAULT_DATA, ServeConfig

API_KEY_ENV = "FRVD_API_KEY"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = Parser(prog="python -m engine.serve", description=__doc__,
               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", choices=sorted(presets.PRESETS), default="tiny")
    p.add_argument("--weights", type=Path, default=None, help="the release's pretrained_weights/ folder")
    p.add_argument("--size", type=int_in(64, multiple_of=64), default=None, help="output side (default: the preset's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=DTYPES, default="float32")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 exposes it: set --api-key)")
    p.add_argument("--port", type=int_in(0, 65535), default=8000)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="jobs database, uploads and results")
    p.add_argument("--api-key", default=None, help=f"bearer key required by every endpoint but /healthz "
                   f"(default: ${API_KEY_ENV}); none: open")
    p.add_argument("--cors-origin", action="append", default=[], help="allow this browser origin (repeatable); "
                   "default: no CORS")
    p.add_argument("--max-upload-mb", type=finite_float(0, lo_open=True), default=64.0,
                   help="largest request body (all files of a job together)")
    p.add_argument("--max-frames", type=positive_int, default=1000, help="driving frames per job")
    p.add_argument("--max-pixels", type=positive_int, default=4096 * 4096, help="pixels per image or frame")
    p.add_argument("--max-queue", type=positive_int, default=16, help="jobs waiting before 429")
    p.add_argument("--max-streams", type=int_in(0), default=2, help="concurrent WebSocket sessions (one engine each)")
    p.add_argument("--stream-queue", type=positive_int, default=8,
                   help="driving frames a session buffers before dropping the oldest")
    p.add_argument("--idle-timeout", type=finite_float(0, lo_open=True), default=30.0,
                   help="seconds a stream may go without a message")
    p.add_argument("--max-steps", type=positive_int, default=100, help="denoising steps a request may ask for")
    p.add_argument("--default-steps", type=positive_int, default=None,
                   help="steps when a request gives none (default: the release's 25)")
    p.add_argument("--max-attempts", type=positive_int, default=2,
                   help="runs of one job across server restarts before it is failed")
    p.add_argument("--auth-timeout", type=finite_float(0, lo_open=True), default=5.0,
                   help="seconds a WebSocket has to send its key when it has no Authorization header")
    p.add_argument("--max-unauthenticated", type=positive_int, default=16,
                   help="WebSockets open at once whose key is not yet checked")
    p.add_argument("--header-timeout", type=finite_float(0, lo_open=True), default=10.0,
                   help="seconds a connection has to send a request's headers")
    p.add_argument("--source-ttl-hours", type=finite_float(0), default=24.0,
                   help="an uploaded source unused this long is removed (0: never)")
    p.add_argument("--max-sources", type=positive_int, default=100, help="uploaded sources kept at once")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")
    p.add_argument("--ray", type=positive_int, default=None, metavar="N",
                   help="run N replicas behind Ray Serve (engine.serve.ray_serve; docs/scale-out.md)")
    p.add_argument("--ray-address", default=None, help="with --ray: a running Ray cluster (default: a local one)")
    p.add_argument("--ray-cpus", type=finite_float(0, lo_open=True), default=1.0, help="with --ray: CPUs per replica")
    p.add_argument("--ray-gpus", type=finite_float(0), default=0.0, help="with --ray: GPUs per replica")
    args = p.parse_args(argv)
    try:
        presets.require_weights(args.preset, args.weights)
    except InputError as err:
        p.error(str(err))
    return args


def config_from(args: argparse.Namespace) -> ServeConfig:
    if args.weights is not None:
        existing_dir(args.weights, "--weights", "release's pretrained_weights/ folder")
    creatable_dir(args.data, "--data")
    key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None
    return ServeConfig(
        preset=args.preset, weights=args.weights, size=args.size, device=args.device, dtype=args.dtype,
        data=args.data, api_key=key, cors_origins=tuple(args.cors_origin), max_upload_mb=args.max_upload_mb,
        max_frames=args.max_frames, max_pixels=args.max_pixels, max_queue=args.max_queue,
        max_streams=args.max_streams, stream_queue=args.stream_queue, idle_timeout=args.idle_timeout,
        max_steps=args.max_steps, default_steps=args.default_steps,
        max_attempts=args.max_attempts, auth_timeout=args.auth_timeout,
        max_unauthenticated=args.max_unauthenticated, header_timeout=args.header_timeout,
        source_ttl_hours=args.source_ttl_hours, max_sources=args.max_sources)


def tune_process() -> None:
    """Settings for a process that calls torch from many short-lived threads (the job worker, and
    per stream session an owner, a reader and the engine's three workers). Must run before torch
    is imported and before any thread starts.

    - Idle OpenMP workers sleep instead of spinning (OMP_WAIT_POLICY=PASSIVE, set once for every
      engine process by ``engine/__init__.py``): each calling thread gets its own OpenMP team, and
      spinning idle teams took the 2 cores from the busy ones (a 10 ms VAE call measured 0.6 s).
    - At most 2 glibc malloc arenas (unless MALLOC_ARENA_MAX is set): with one arena per new thread,
      fragmentation grew the server's RSS by ~10 % over 50 sessions; with 2 it stays flat (2 %).
    """
    if "MALLOC_ARENA_MAX" not in os.environ and sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL("libc.so.6").mallopt(-8, 2)  # M_ARENA_MAX
        except (OSError, AttributeError):
            pass  # not glibc: nothing to tune


def main(argv: list[str] | None = None) -> int:
    tune_process()
    args = parse_args(argv)
    try:
        config = config_from(args)
    except EngineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.ray:
        from engine.serve.ray_serve import run

        if config.max_streams < 1:  # a replica has no job engine: its stream slots are all it serves
            print("error: --max-streams must be at least 1 with --ray (replicas serve streams only)", file=sys.stderr)
            return 2

        run(config, args.ray, args.host, args.port, args.ray_address, args.ray_cpus, args.ray_gpus)
        return 0
    import uvicorn

    from engine.serve.app import create_app
    from engine.serve.protocols import protocols

    if config.api_key is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        logging.getLogger("engine.serve").warning("binding %s without --api-key: anyone who can reach it can use it",
                                                  args.host)
    # a WebSocket message may carry an inline base64 source (4/3 of the upload limit)
    ws_max = max(16 * 2**20, config.max_upload_bytes * 4 // 3) + 4096
    http, ws = protocols(config.header_timeout)  # header-read timeout; small messages until authenticated
    uvicorn.run(create_app(config), host=args.host, port=args.port, log_level=args.log_level, ws_max_size=ws_max,
                timeout_graceful_shutdown=5, http=http, ws=ws)
    return 0


if __name__ == "__main__":
    sys.exit(main())
