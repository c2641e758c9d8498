"""Build every requested graph for a target, reusing what the cache already holds.

Per graph: compute the cache key; if the stored artifact matches it and its files are intact,
report it as cached. Otherwise export the ONNX graph (export/onnx_export.py), check it
(export/check.py: checker, shape inference, an onnxruntime session, parity with torch on the
spec's sample inputs), and for ``--precision fp16`` / ``--target trt`` derive the float16 graph
or the TensorRT engine from it, each cached under its own key. The run ends with a summary
table and ``OUT/build_report.json`` (what the tests assert on).
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.graphs.modules import ALL_GRAPH_NAMES, GRAPH_NAMES, OPTIONAL_GRAPH_NAMES, GraphOptions, build_specs
from engine.graphs.spec import GraphSpec
from export import attention_onnx, cache, check
from export.cache import ArtifactStore, make_key
from export.onnx_export import export_module
from export.sources import NetworkSource

REPORT = "build_report.json"
ONNX_FILE = "model.onnx"
PLAN_FILE = "model.plan"


@dataclass(frozen=True)
class BuildConfig:
    target: str = "onnx"  # onnx | trt
    precision: str = "fp32"  # fp32 | fp16
    graphs: tuple[str, ...] = GRAPH_NAMES
    parity: bool = True
    quiet: bool = False
    workspace_gib: float | None = None
    attention: str | None = None  # export/attention_onnx.FORMS; None: the target's (default_form)

    def __post_init__(self) -> None:
        if self.target not in ("onnx", "trt"):
            raise ValueError(f"target must be onnx or trt, got {self.target!r}")
        if self.precision not in ("fp32", "fp16"):
            raise ValueError(f"precision must be fp32 or fp16, got {self.precision!r}")
        if self.attention is not None and self.attention not in attention_onnx.FORMS:
            raise ValueError(f"attention must be one of {attention_onnx.FORMS}, got {self.attention!r}")
        unknown = sorted(set(self.graphs) - set(ALL_GRAPH_NAMES + OPTIONAL_GRAPH_NAMES))
        if unknown:
            raise ValueError(f"unknown graphs {unknown}; choose from {list(ALL_GRAPH_NAMES + OPTIONAL_GRAPH_NAMES)}")


def default_grid_sample(target: str) -> str:
    """onnxruntime runs the opset-20 GridSample; TensorRT has no 5-D one, so it gets the decomposition."""
    return "decomposed" if target == "trt" else "onnx20"


@dataclass
class Row:
    graph: str
    artifact: str
    status: str = "cached"  # cached | built | failed
    reason: str = "cached"
    exported: bool = False
    seconds: float = 0.0
    bytes: int = 0
    parity: dict[str, dict[str, float]] = field(default_factory=dict)
    parity_note: str = ""
    max_rel_err: float | None = None
    tolerance: float = 0.0
    passed: bool = True
    path: str = ""


class Builder:
    def __init__(self, source: NetworkSource, opts: GraphOptions, out: Path, cfg: BuildConfig) -> None:
        self.source, self.opts, self.cfg = source, opts, cfg
        self.out = Path(out)
        self.store = ArtifactStore(self.out)
        self.specs = build_specs(source.model, opts, ALL_GRAPH_NAMES + OPTIONAL_GRAPH_NAMES)
        self.tools = cache.tool_versions()
        self.code = cache.code_hash()
        self.attention = cfg.attention or attention_onnx.default_form(cfg.target)

    # ------------------------------------------------------------------------------ run
    def run(self) -> dict[str, Any]:
        if self.cfg.target == "trt":
            from export.trt_build import require_tensorrt

            require_tensorrt()  # fail before minutes of exporting
        self.out.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        rows = [self.build_graph(self.specs[name]) for name in self.cfg.graphs]
        report = {
            "format": cache.CACHE_FORMAT,
            "source": self.source.description,
            "target": self.cfg.target,
            "precision": self.cfg.precision,
            "attention": self.attention,
            "options": asdict(self.opts),
            "tools": self.tools,
            "graphs": [asdict(r) for r in rows],
            "exported": [r.graph for r in rows if r.exported],
            "built": [r.graph for r in rows if r.status == "built"],
            "cached": [r.graph for r in rows if r.status == "cached"],
            "failed": [r.graph for r in rows if not r.passed],
            "seconds": round(time.perf_counter() - start, 3),
        }
        tmp = self.out / f".{REPORT}.tmp"
        tmp.write_text(json.dumps(report, indent=1))
        tmp.replace(self.out / REPORT)
        return report

    @contextlib.contextmanager
    def _staged(self, graph: str, kind: str) -> Iterator[Path]:
        """A fresh staging folder, removed again if the step raises (a committed one is renamed away)."""
        staging = self.store.staging(graph, kind)
        try:
            yield staging
        except BaseException:
            self.store.discard(staging)
            raise

    def build_graph(self, spec: GraphSpec) -> Row:
        from tqdm import tqdm

        stages = 4 + (self.cfg.target == "trt" or self._wants_fp16(spec))
        with tqdm(total=stages, desc=f"{spec.name:>13}", disable=True if self.cfg.quiet else None,
                  leave=False, file=sys.stderr) as bar:
            row, onnx_key = self._onnx(spec, bar)
            if row.passed and self.cfg.target == "trt":
                row = self._trt(spec, onnx_key, row, bar)
            elif row.passed and self._wants_fp16(spec):
                row, _ = self._fp16(spec, onnx_key, row, bar)
        return row

    def _wants_fp16(self, spec: GraphSpec) -> bool:
        return self.cfg.precision == "fp16" and not spec.fp32_only

    # ------------------------------------------------------------------------------ onnx
    def onnx_key_inputs(self, spec: GraphSpec) -> dict[str, Any]:
        hashes = self.source.slot_hashes()
        return {
            "spec": spec.describe(),
            "weights": {slot: hashes[slot] for slot in spec.slots},
            "precision": "fp32",
            "attention": self.attention,
            "tools": self.tools,
            "code": self.code,
        }

    def _info(self, spec: GraphSpec, **extra: Any) -> dict[str, Any]:
        return {"spec_fingerprint": spec.fingerprint(), "model": self.source.model_dict(),
                "options": asdict(self.opts), "source": self.source.description, **extra}

    def _onnx(self, spec: GraphSpec, bar: Any) -> tuple[Row, str]:
        kind = "onnx-fp32"
        bar.set_postfix_str("key")
        inputs = self.onnx_key_inputs(spec)
        key = make_key(inputs)
        found = self.store.lookup(spec.name, kind, key, inputs)
        bar.update()
        if found.usable:
            bar.update(3)
            return self._cached_row(spec, kind, found.meta or {}), key

        row = Row(spec.name, kind, status="built", reason=found.reason, exported=True,
                  tolerance=spec.tol("fp32"))
        t0 = time.perf_counter()
        with self._staged(spec.name, kind) as staging:
            module = spec.factory(self.source.networks())
            bar.set_postfix_str("export")
            export_module(spec, module, staging / ONNX_FILE, attention=self.attention)
            bar.update()
            bar.set_postfix_str("check")
            facts = check.check_onnx(staging / ONNX_FILE, spec)
            bar.update()
            bar.set_postfix_str("parity")
            self._measure(row, spec, module, lambda: self._ort_runner(spec, staging / ONNX_FILE, facts), facts)
            bar.update()
            row.seconds = round(time.perf_counter() - t0, 3)
            return self._finish(row, staging, spec, key, inputs, facts=facts), key

    def _ort_runner(self, spec: GraphSpec, path: Path, facts: dict[str, Any]) -> Any:
        from engine.backends.ort_backend import OrtGraph

        if facts.get("custom_ops"):
            return None
        return OrtGraph(spec, path, providers=["CPUExecutionProvider"])

    # ------------------------------------------------------------------------------ fp16 / trt
    def _fp16(self, spec: GraphSpec, onnx_key: str, parent: Row, bar: Any) -> tuple[Row, str]:
        kind = "onnx-fp16"
        inputs = {"onnx": onnx_key, "precision": "fp16", "tools": cache.tool_versions(("onnx", "onnxruntime")),
                  "converter": check.FP16_CONVERTER}
        key = make_key(inputs)
        found = self.store.lookup(spec.name, kind, key, inputs)
        if found.usable:
            bar.update()
            return self._cached_row(spec, kind, found.meta or {}, exported=parent.exported), key
        row = Row(spec.name, kind, status="built", reason=found.reason, exported=parent.exported,
                  tolerance=spec.tol("fp16"))
        t0 = time.perf_counter()
        bar.set_postfix_str("fp16")
        with self._staged(spec.name, kind) as staging:
            check.to_fp16(self.store.dir(spec.name, "onnx-fp32") / ONNX_FILE, staging / ONNX_FILE)
            facts = check.check_onnx(staging / ONNX_FILE, spec)
            module = spec.factory(self.source.networks())
            self._measure(row, spec, module, lambda: self._ort_runner(spec, staging / ONNX_FILE, facts), facts)
            bar.update()
            row.seconds = round(time.perf_counter() - t0 + parent.seconds, 3)
            return self._finish(row, staging, spec, key, inputs, facts=facts), key

    def _trt(self, spec: GraphSpec, onnx_key: str, parent: Row, bar: Any) -> Row:
        from export import trt_build

        precision = trt_build.engine_precision(spec, self.cfg.precision)
        kind = f"trt-{precision}"
        source_kind = trt_build.onnx_source_kind(spec, self.cfg.precision)
        if source_kind == "onnx-fp16":  # TensorRT 11: the fp16 graph's types set the precision
            parent, onnx_key = self._fp16(spec, onnx_key, parent, bar)
            if not parent.passed:
                return parent
        inputs = trt_build.key_inputs(spec, onnx_key, self.cfg.precision)
        key = make_key(inputs)
        found = self.store.lookup(spec.name, kind, key, inputs)
        if found.usable:
            bar.update()
            return self._cached_row(spec, kind, found.meta or {}, exported=parent.exported)
        row = Row(spec.name, kind, status="built", reason=found.reason, exported=parent.exported,
                  tolerance=spec.tol(precision))
        t0 = time.perf_counter()
        bar.set_postfix_str("tensorrt")
        with self._staged(spec.name, kind) as staging:
            onnx_path = self.store.dir(spec.name, source_kind) / ONNX_FILE
            facts = trt_build.build_engine(onnx_path, spec, self.cfg.precision, staging / PLAN_FILE, self.out,
                                           self.cfg.workspace_gib)

            def runner() -> Any:
                from engine.backends.trt_backend import TrtGraph

                return TrtGraph(spec, staging / PLAN_FILE)

            self._measure(row, spec, spec.factory(self.source.networks()), runner, facts)
            bar.update()
            row.seconds = round(time.perf_counter() - t0 + parent.seconds, 3)
            return self._finish(row, staging, spec, key, inputs, facts=facts)

    # ------------------------------------------------------------------------------ shared
    def _measure(self, row: Row, spec: GraphSpec, module: Any, make_runner: Any, facts: dict[str, Any]) -> None:
        if not self.cfg.parity:
            row.parity_note = "parity not measured (--no-parity)"
            return
        runner = make_runner()
        if runner is None:
            row.parity_note = f"parity not measured: onnxruntime cannot run {', '.join(facts['custom_ops'])}"
            return
        row.parity = check.parity(spec, module, runner)
        row.max_rel_err = check.worst(row.parity)
        row.passed = row.max_rel_err <= row.tolerance

    def _finish(self, row: Row, staging: Path, spec: GraphSpec, key: str, inputs: dict[str, Any],
                facts: dict[str, Any]) -> Row:
        if not row.passed:
            failed = self.store.root / spec.name / f".{row.artifact}.failed"
            self.store.discard(failed)
            staging.rename(failed)  # kept for inspection, never loaded
            row.status, row.path = "failed", str(failed)
            return row
        info = self._info(spec, parity=row.parity, parity_note=row.parity_note, max_rel_err=row.max_rel_err,
                          tolerance=row.tolerance, seconds=row.seconds, facts=facts)
        self.store.commit(staging, spec.name, row.artifact, key, inputs, info)
        row.bytes = self.store.size(spec.name, row.artifact)
        row.path = str(self.store.dir(spec.name, row.artifact))
        return row

    def _cached_row(self, spec: GraphSpec, kind: str, meta: dict[str, Any], exported: bool = False) -> Row:
        return Row(spec.name, kind, exported=exported, seconds=0.0, bytes=self.store.size(spec.name, kind),
                   parity=meta.get("parity", {}), parity_note=meta.get("parity_note", ""),
                   max_rel_err=meta.get("max_rel_err"), tolerance=meta.get("tolerance", spec.tol("fp32")),
                   path=str(self.store.dir(spec.name, kind)))


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def summary(report: dict[str, Any]) -> str:
    lines = [f"{'graph':<14} {'artifact':<10} {'status':<7} {'size':>9} {'seconds':>8} {'max rel err':>11} "
             f"{'tol':>8}  result"]
    for r in report["graphs"]:
        err = "-" if r["max_rel_err"] is None else f"{r['max_rel_err']:.2e}"
        result = "FAIL" if not r["passed"] else ("pass" if r["max_rel_err"] is not None else "n/a")
        lines.append(f"{r['graph']:<14} {r['artifact']:<10} {r['status']:<7} {human_bytes(r['bytes']):>9} "
                     f"{r['seconds']:>8.1f} {err:>11} {r['tolerance']:>8.0e}  {result}")
        if r["status"] != "cached":
            lines.append(f"{'':<14} rebuilt: {r['reason']}")
        if r["parity_note"]:
            lines.append(f"{'':<14} {r['parity_note']}")
    n = len(report["graphs"])
    if not report["exported"] and not report["built"]:
        lines.append(f"nothing rebuilt: all {n} artifacts were cached and intact")
    else:
        lines.append(f"built {len(report['built'])}, cached {len(report['cached'])}, exported "
                     f"{len(report['exported'])} graph(s) in {report['seconds']:.1f} s")
    if report["failed"]:
        lines.append(f"FAILED parity: {', '.join(report['failed'])}")
    return "\n".join(lines)
