"""torch vs onnxruntime on CPU, tiny preset: per-graph latency and the whole pipeline, one run.

Each graph runs at the shape the pipeline calls it with (the spec's ``opt`` dims: one motion
frame, a 16-frame warp chunk, one window's CFG pair, one decoded frame); torch and onnxruntime
calls alternate so both see the same machine load, and the median over ``--reps`` is reported
with the ratio torch / onnxruntime (> 1: onnxruntime is faster). Then the whole pipeline runs on
the bundled media per backend. The engines are built (or reused from the cache) first.

    python benchmarks/bench_backends.py [--engines engines/tiny] [--reps 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import onnxruntime
import torch

from engine.api import EngineOptions, Reenactor, RunOptions
from engine.backends.ort_backend import OrtBackend
from engine.backends.torch_backend import TorchBackend
from engine.cli.reenact import DEFAULT_DRIVING, DEFAULT_SOURCE
from engine.config import presets
from engine.graphs.modules import GRAPH_NAMES, GraphOptions, build_specs
from engine.io import load_image, read_video
from export.build import BuildConfig, Builder
from export.sources import from_preset


def ensure_engines(engines: Path) -> None:
    source = from_preset("tiny")
    report = Builder(source, GraphOptions(image_size=source.model.image_size), engines, BuildConfig(quiet=True)).run()
    if report["failed"]:
        raise SystemExit(f"engines failed their parity check: {report['failed']}")


def time_graphs(engines: Path, reps: int) -> list[dict]:
    specs = build_specs(presets.tiny(), GraphOptions(image_size=128))
    torch_b = TorchBackend(from_preset("tiny").networks(), specs)
    ort_b = OrtBackend(engines, device="cpu")
    rows = []
    for name in GRAPH_NAMES:
        feeds = specs[name].sample_inputs("opt")
        times: dict[str, list[float]] = {"torch": [], "onnxruntime": []}
        for rep in range(reps + 2):  # two warm-up calls each
            for label, backend in (("torch", torch_b), ("onnxruntime", ort_b)):
                t0 = time.perf_counter()
                backend[name].run(feeds)
                if rep >= 2:
                    times[label].append(time.perf_counter() - t0)
        t_ms, o_ms = (statistics.median(times[k]) * 1e3 for k in ("torch", "onnxruntime"))
        shape = {k: list(v.shape) for k, v in feeds.items()}
        rows.append({"graph": name, "inputs": shape, "torch_ms": t_ms, "onnxruntime_ms": o_ms, "ratio": t_ms / o_ms})
    return rows


def time_pipelines(engines: Path, frames: int, steps: int, reps: int) -> dict:
    out = {}
    for backend in ("torch", "onnxruntime"):
        engine = Reenactor.from_preset("tiny", EngineOptions(backend=backend, engines=engines))
        options = RunOptions(steps=steps)
        source = engine.set_source(load_image(DEFAULT_SOURCE, engine.size))
        clip = read_video(DEFAULT_DRIVING, engine.size, max_frames=frames)
        engine.render(source, clip.frames[:14], options=options)  # warm-up
        totals, stages = [], []
        for _ in range(reps):
            t0 = time.perf_counter()
            result = engine.render(source, clip.frames, options=options)
            totals.append(time.perf_counter() - t0)
            stages.append(result.seconds)
        total = statistics.median(totals)
        out[backend] = {
            "frames": len(clip.frames),
            "steps": steps,
            "seconds": total,
            "seconds_per_frame": total / len(clip.frames),
            "stages": {k: statistics.median(s[k] for s in stages) for k in stages[0]},
        }
    out["ratio"] = out["torch"]["seconds"] / out["onnxruntime"]["seconds"]
    return out


def table(result: dict) -> str:
    lines = [f"{'graph':<14} {'torch ms':>9} {'ort ms':>9} {'torch/ort':>9}"]
    for r in result["graphs"]:
        lines.append(f"{r['graph']:<14} {r['torch_ms']:>9.2f} {r['onnxruntime_ms']:>9.2f} {r['ratio']:>9.2f}")
    p = result["pipeline"]
    lines.append(f"pipeline ({p['torch']['frames']} frames, {p['torch']['steps']} steps)")
    for backend in ("torch", "onnxruntime"):
        s = p[backend]
        stages = ", ".join(f"{k} {v:.2f}" for k, v in s["stages"].items())
        lines.append(f"  {backend:<12} {s['seconds']:>7.2f} s  {s['seconds_per_frame']:.3f} s/frame  ({stages})")
    lines.append(f"  torch/ort    {p['ratio']:>7.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engines", type=Path, default=Path("engines/tiny"))
    p.add_argument("--reps", type=int, default=10, help="timed calls per graph and backend")
    p.add_argument("--frames", type=int, default=28)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--pipeline-reps", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    with torch.no_grad():
        ensure_engines(args.engines)
        result = {
            "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads},
            "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
            "graphs": time_graphs(args.engines, args.reps),
            "pipeline": time_pipelines(args.engines, args.frames, args.steps, args.pipeline_reps),
        }
    print(table(result))
    text = json.dumps(result, indent=1)
    if args.json:
        args.json.write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
