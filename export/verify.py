"""Every built graph on a backend vs the torch modules it was exported from, on the spec's samples.

The networks are rebuilt from what the build recorded (preset + weights folder + seed, or the
fixture folder), so the comparison uses exactly the weights the engines were made from.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.backends.base import Backend, BackendError
from engine.graphs.modules import ALL_GRAPH_NAMES
from export import check
from export.sources import load_source

KIND_PREFIX = {"onnxruntime": "onnx-", "tensorrt": "trt-"}


@dataclass(frozen=True)
class VerifyRow:
    graph: str
    output: str
    artifact: str
    max_abs: float
    max_rel: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.max_rel <= self.tolerance


def built_graphs(engines: Path, backend: str) -> list[str]:
    """Graphs with at least one artifact of the backend's kind in ``engines``, in pipeline order."""
    prefix = KIND_PREFIX[backend]
    root = Path(engines)
    return [g for g in ALL_GRAPH_NAMES if (root / g).is_dir()
            and any(p.name.startswith(prefix) and (p / "meta.json").exists() for p in (root / g).iterdir())]


def open_backend(backend: str, engines: Path, graphs: Sequence[str], precision: str, cuda_graphs: bool) -> Backend:
    if backend == "onnxruntime":
        from engine.backends.ort_backend import OrtBackend

        return OrtBackend(engines, graphs=graphs, precision=precision)
    if backend == "tensorrt":
        from engine.backends.trt_backend import TrtBackend

        return TrtBackend(engines, graphs=graphs, precision=precision, cuda_graphs=cuda_graphs)
    raise BackendError(f"verify compares onnxruntime or tensorrt with torch, not {backend!r}")


def verify(backend: str, engines: Path, graphs: Sequence[str] | None = None, precision: str = "fp32",
           cuda_graphs: bool = False, seed: int = 7) -> list[VerifyRow]:
    graphs = list(graphs or built_graphs(engines, backend))
    if not graphs:
        raise BackendError(f"{engines} holds no {backend} artifacts: build them with python -m engine.build")
    runner = open_backend(backend, engines, graphs, precision, cuda_graphs)
    artifacts: dict[str, Any] = runner.artifacts  # type: ignore[attr-defined]
    sources = {json_key(a.meta["source"]) for a in artifacts.values()}
    if len(sources) != 1:
        raise BackendError(f"{engines} mixes graphs built from different weights; rebuild them together")
    nets = load_source(next(iter(artifacts.values())).meta["source"]).networks()
    rows = []
    for graph in graphs:
        art = artifacts[graph]
        precision_of_kind = art.kind.split("-")[-1]
        errors = check.parity(art.spec, art.spec.factory(nets), runner[graph], seed=seed)
        for output, err in errors.items():
            rows.append(VerifyRow(graph, output, art.kind, err["max_abs"], err["max_rel"],
                                  art.spec.tol(precision_of_kind)))
    return rows


def json_key(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)


def table(rows: Sequence[VerifyRow]) -> str:
    head = f"{'graph':<14} {'output':<14} {'artifact':<10} {'max abs err':>11} {'max rel err':>11} {'tol':>8}  result"
    lines = [head]
    for r in rows:
        lines.append(f"{r.graph:<14} {r.output:<14} {r.artifact:<10} {r.max_abs:>11.3e} {r.max_rel:>11.3e} "
                     f"{r.tolerance:>8.0e}  {'pass' if r.passed else 'FAIL'}")
    failed = sum(not r.passed for r in rows)
    lines.append(f"verify: {len(rows) - failed} outputs within tolerance, {failed} breached")
    return "\n".join(lines)
