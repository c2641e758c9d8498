"""``python -m engine.fixtures DIR``: reproduce every official-release fixture found in DIR.

DIR is laid out like ``../shared/fixtures/official/``: each ``<kind>_config.json`` with its
safetensors (kinds: liveportrait, wfm_unet, pipeline, train_step). Prints one row per tensor (name,
max relative error, tolerance, pass/fail) and exits non-zero if any tensor fails.

``--backend onnxruntime`` runs the pipeline kind on graphs exported from the fixture's own
weights (into ``--engines DIR``, a cache reused by later runs; a temporary folder by default).
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from engine.cli.args import Parser, creatable_dir, existing_dir, positive_int
from engine.config.settings import TIME_CONTEXTS
from engine.errors import EngineError, InputError
from engine.fixtures import TensorCheck

KINDS = ("liveportrait", "wfm_unet", "pipeline", "train_step")


def discover(fixture_dir: Path) -> list[str]:
    return [kind for kind in KINDS if (fixture_dir / f"{kind}_config.json").is_file()]


def preflight(args: argparse.Namespace) -> list[str]:
    """The kinds to run, after checking every path and every file they read (a damaged copy of the
    fixture set fails here, in one line, before any network is built)."""
    from safetensors import safe_open

    from engine.fixtures import read_config

    fixture_dir = existing_dir(args.fixture_dir, "fixture folder", "folder holding <kind>_config.json files")
    if args.engines is not None:
        creatable_dir(args.engines, "--engines")
    kinds = [k for k in discover(fixture_dir) if args.kinds is None or k in args.kinds]
    if not kinds:
        raise InputError(f"no <kind>_config.json for kinds {', '.join(KINDS)} in {fixture_dir}")
    for kind in kinds:
        read_config(fixture_dir, kind)
        files = {p.name for p in fixture_dir.glob(f"{kind}_*.safetensors")}
        if kind in ("pipeline", "train_step"):  # train_step runs on the pipeline fixture's weights
            from engine.fixtures.pipeline import WEIGHT_FILES

            files |= set(WEIGHT_FILES.values())
            if kind == "train_step":
                read_config(fixture_dir, "pipeline")
        for name in sorted(files):
            path = fixture_dir / name
            if not path.is_file():
                raise InputError(f"fixture file {path} is missing: the {kind} kind reads it; copy the set again")
            try:
                with safe_open(str(path), framework="pt"):
                    pass  # opening validates the header and that the file holds every byte it lists
            except Exception:  # noqa: BLE001 - any failure here means a damaged file
                raise InputError(
                    f"fixture file {path} is damaged (not a complete safetensors file): copy it again"
                ) from None
    return kinds


def run_kind(kind: str, fixture_dir: Path, **options: object) -> list[TensorCheck]:
    module = importlib.import_module(f"engine.fixtures.{kind}")
    return module.reproduce(fixture_dir, **options)


def format_rows(kind: str, checks: list[TensorCheck]) -> list[str]:
    rows = []
    for c in checks:
        status = "pass" if c.passed else "FAIL"
        rows.append(f"{kind:<13} {c.name:<34} {c.error:>11.3e} {c.tol:>9.1e}  {status}")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m engine.fixtures", description=__doc__)
    p.add_argument("fixture_dir", type=Path)
    p.add_argument("--kinds", nargs="*", choices=KINDS, default=None, help="only these kinds")
    p.add_argument("--time-context", choices=TIME_CONTEXTS, default="release")
    p.add_argument("--window-batch", type=positive_int, default=1, help="pipeline kind: windows per denoiser call")
    p.add_argument("--threads", type=positive_int, default=2)
    p.add_argument("--backend", choices=["torch", "onnxruntime"], default="torch",
                   help="onnxruntime: the pipeline kind on graphs exported from the fixture's weights")
    p.add_argument("--engines", type=Path, default=None, help="cache folder for the exported graphs")
    args = p.parse_args(argv)
    if args.backend != "torch":
        if args.kinds and set(args.kinds) - {"pipeline"}:
            p.error("--backend onnxruntime reproduces the pipeline kind only (--kinds pipeline)")
        args.kinds = ["pipeline"]
    # no_grad as a context, not set_grad_enabled(False): in-process callers (tests) keep their mode
    created = args.engines is not None and not args.engines.exists()
    with tempfile.TemporaryDirectory(prefix="frvd-fixture-engines-") as tmp, torch.no_grad():
        try:
            kinds = preflight(args)
            if args.engines is None:
                args.engines = Path(tmp)
            return _run(args, kinds)
        except EngineError as err:
            if created:  # an --engines folder this run made is not left half-built
                shutil.rmtree(args.engines, ignore_errors=True)
            print(f"error: {err}", file=sys.stderr)
            return err.exit_code


def _run(args: argparse.Namespace, kinds: list[str]) -> int:
    torch.set_num_threads(args.threads)
    print(f"{'kind':<13} {'tensor':<34} {'max rel err':>11} {'tol':>9}  result")
    failed = total = 0
    for kind in kinds:
        options: dict[str, object] = {}
        if kind in ("wfm_unet", "pipeline", "train_step"):
            options["time_context"] = args.time_context
        if kind == "pipeline":
            options["window_batch"] = args.window_batch
            if args.backend == "onnxruntime":
                from export.fixture_engines import onnxruntime_factory

                options["backend_factory"] = onnxruntime_factory(args.engines, args.fixture_dir, args.window_batch)
        t0 = time.perf_counter()
        try:
            checks = run_kind(kind, args.fixture_dir, **options)
        except KeyError as err:  # valid JSON, but not the fields (or tensors) the kind needs
            raise InputError(
                f"fixture {kind}: {kind}_config.json or its tensors lack {err.args[0]!r}: "
                f"the fixture set in {args.fixture_dir} is incomplete; copy it again"
            ) from None
        for row in format_rows(kind, checks):
            print(row)
        failed += sum(not c.passed for c in checks)
        total += len(checks)
        print(f"# {kind}: {len(checks)} tensors in {time.perf_counter() - t0:.1f} s", flush=True)
    print(f"fixtures: {total - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
