"""What the loop commands (``python -m engine.train``, ``python -m engine.distill``) share: the Ray Train
flags and the guard around a run that writes a run folder."""

from __future__ import annotations

import argparse
import shutil
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from engine.cli.args import positive_int
from engine.errors import EngineError


def add_ray_arguments(p: argparse.ArgumentParser) -> None:
    """``--ray N`` and ``--ray-address``: a loop's data-parallel workers on Ray Train (train, distill)."""
    p.add_argument("--ray", type=positive_int, default=None, metavar="N",
                   help="N data-parallel workers on Ray Train (engine.train.ray_train; docs/scale-out.md)")
    p.add_argument("--ray-address", default=None, help="with --ray: a running Ray cluster (default: a local one)")


def run_into(out: Path, body: Callable[[threading.Event], int]) -> int:
    """A command that writes a run folder ``out`` (train, distill): ``body(stop)`` runs with Ctrl-C and
    SIGTERM setting ``stop`` (its loop then checkpoints and returns); bad input (an ``EngineError``) is
    one ``error:`` line and its exit code, and a folder this run created is removed (nothing half-written)."""
    from engine.train.optimise import stop_on_signals

    created = not out.exists()
    with stop_on_signals() as stop:
        try:
            return body(stop)
        except EngineError as err:
            if created and out.exists():
                shutil.rmtree(out, ignore_errors=True)
            print(f"error: {err}", file=sys.stderr)
            return err.exit_code
