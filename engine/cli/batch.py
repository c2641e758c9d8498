"""``python -m engine.batch MANIFEST --out DIR``: render every (source, driving) item of a manifest on Ray.

The manifest is CSV or JSON Lines (``.jsonl``): columns ``source``, ``driving``, optional ``out`` (a
name), ``max_frames`` and any run option (``mode``, ``steps``, ``seed``, ``guidance``, ...). Items are
rendered by Ray actors, one engine each (one per GPU, or one per --cpus-per-actor CPUs), on a local
cluster or the one at --address. Re-running skips every item whose output and recorded configuration
are in DIR. Writes DIR/NAME.mp4, DIR/NAME.json (the run's configuration), DIR/NAME.batch.json (the
item's record) and DIR/results.jsonl. Exit status: 0 all items done or skipped, 1 some failed,
2 the manifest or an option is unusable. See docs/scale-out.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from engine.cli.args import Parser, add_knob_arguments, existing_dir, finite_float, knob_values, positive_int
from engine.errors import EngineError, InputError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from engine.api import EngineOptions

    p = Parser(prog="python -m engine.batch", description=__doc__,
               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("manifest", type=Path, help="CSV or JSON Lines manifest (paths relative to its folder)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--preset", choices=["tiny", "official"], default="tiny")
    p.add_argument("--weights", type=Path, default=None, help="the release's pretrained_weights/ folder "
                   "(the same path on every node)")
    # the engine's options, declared once (engine.api.EngineOptions)
    add_knob_arguments(p.add_argument_group("engine"), EngineOptions,
                       only=("size", "dtype", "time_context", "window_batch"))
    p.add_argument("--address", default=None, help="a running Ray cluster (e.g. ray://head:10001 or auto); "
                   "default: start a local one")
    p.add_argument("--actors", type=positive_int, default=None,
                   help="render actors (default: one per GPU with --gpus-per-actor, else CPUs / --cpus-per-actor)")
    p.add_argument("--cpus-per-actor", type=positive_int, default=1,
                   help="CPUs (= torch threads) per actor; CPU results are bit-identical to engine.reenact run "
                        "with the same thread count")
    p.add_argument("--gpus-per-actor", type=finite_float(0, 8), default=0.0,
                   help="GPUs per actor: 1 = one engine per GPU, 0.5 = two per GPU, 0 = CPU actors")
    p.add_argument("--local-cpus", type=positive_int, default=None, help="CPUs of the local cluster (default: all)")
    p.add_argument("--max-attempts", type=positive_int, default=3,
                   help="runs of one item whose actor died (killed, node lost) before it is failed")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")
    args = p.parse_args(argv)
    if args.preset == "official" and args.weights is None:
        p.error("--preset official needs --weights DIR (the release's pretrained_weights/ folder)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        from engine.api import EngineOptions
        from engine.batch.runner import RESULTS, BatchConfig, run_batch

        if args.weights is not None:
            existing_dir(args.weights, "--weights", "release's pretrained_weights/ folder")
        engine = knob_values(args, EngineOptions)
        EngineOptions(**engine).check()
        if args.out.exists() and not args.out.is_dir():
            raise InputError(f"--out '{args.out}' is a file; give a folder")
        config = BatchConfig(out=args.out, preset=args.preset, weights=args.weights, engine=engine,
                             address=args.address, actors=args.actors, cpus_per_actor=args.cpus_per_actor,
                             gpus_per_actor=args.gpus_per_actor, max_attempts=args.max_attempts,
                             local_cpus=args.local_cpus)
        outcomes = run_batch(args.manifest, config)
    except EngineError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted: finished items are kept; run the same command again to resume", file=sys.stderr)
        return 130
    counts = {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "failed")}
    print(f"batch: {len(outcomes)} items: {counts['done']} done, {counts['skipped']} skipped, "
          f"{counts['failed']} failed -> {args.out / RESULTS}")
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
