"""Per-stage timings of the reference (torch, float32) pipeline on the tiny preset.

The baseline later optimisations are measured against: source conditioning, motion
(per frame), one denoiser call per window-step, decode (per frame), as JSON.

    python benchmarks/bench_reference.py [--frames 28] [--steps 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from engine.api import EngineOptions, Reenactor, RunOptions
from engine.cli.reenact import DEFAULT_DRIVING, DEFAULT_SOURCE
from engine.diffusion.windows import window_indices
from engine.io import load_image, read_video


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--frames", type=int, default=28)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--window-batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)

    engine = Reenactor.from_preset(args.preset, EngineOptions(window_batch=args.window_batch))
    options = RunOptions(steps=args.steps)
    size = engine.size
    source = engine.set_source(load_image(DEFAULT_SOURCE, size))
    clip = read_video(DEFAULT_DRIVING, size, max_frames=args.frames)
    n = len(clip.frames)

    engine.render(source, clip.frames[:14], options=options)  # warm-up: first-call allocations, lazy imports

    window_times: list[float] = []
    nets = engine.backend.nets
    orig = nets.denoiser.parts

    def timed_parts(*a, **k):
        t0 = time.perf_counter()
        out = orig(*a, **k)
        window_times.append(time.perf_counter() - t0)
        return out

    nets.denoiser.parts = timed_parts  # type: ignore[method-assign]
    t0 = time.perf_counter()
    result = engine.render(source, clip.frames, options=options)
    total = time.perf_counter() - t0
    n_windows = len(window_indices(n, engine.cfg.windows.size, engine.run_config(options).overlap))
    sec = result.seconds
    report = {
        "benchmark": "reference_pipeline",
        "preset": args.preset,
        "backend": "torch",
        "dtype": "float32",
        "size": size,
        "frames": n,
        "steps": args.steps,
        "windows": n_windows,
        "window_batch": args.window_batch,
        "threads": args.threads,
        "machine": {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__},
        "seconds": {k: round(v, 4) for k, v in sec.items()},
        "total_s": round(total, 4),
        "per_frame": {
            "motion_ms": round(1000 * sec["motion"] / n, 3),
            "decode_ms": round(1000 * sec["decode"] / n, 3),
            "total_ms": round(1000 * total / n, 3),
        },
        "denoiser_call_ms": {
            "median": round(1000 * statistics.median(window_times), 3),
            "min": round(1000 * min(window_times), 3),
            "max": round(1000 * max(window_times), 3),
            "calls": len(window_times),
        },
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
