"""CPU benchmark of 5-D grid sampling at LivePortrait's two shapes.

Compares torch.nn.functional.grid_sample, the CPU twin (torch.ops.frvd.grid_sample3d over
libfrvd_kernels.so) and the plugin-free decomposition (engine.kernels.decomposed):

* warp: 1x32x16x64x64 volume, 1x16x64x64x3 grid (warping module)
* dense_motion: 22x4x16x64x64 volume, 22x16x64x64x3 grid (dense-motion network)
* dense_motion_stacked: 1x4x16x64x64 volume, 1x352x64x64x3 grid, the same work as
  engine.models.liveportrait.dense_motion.batched_grid_sample issues it (the 22 grids stacked
  on the depth axis so the shared volume is read once)

Bilinear, zeros padding, align_corners=False, float32. The default grid is identity plus a
smooth random deformation (what a warp field looks like); --grid random samples uniformly in
[-1.1, 1.1]^3 (no locality, worst case for caches). torch and the CPU twin alternate repetition by
repetition so background load hits both alike; the decomposition is timed in its own loop (see
bench_shape). Reports median, p10/p90 and IQR.

    python benchmarks/bench_grid_sample3d.py --reps 30 --json bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from engine.kernels import grid_sample as ops
from engine.kernels.decomposed import grid_sample3d_decomposed

# name: (volume batch, channels, grid batches stacked on the grid's depth axis)
SHAPES = {
    "warp_1x32x16x64x64": (1, 32, 1),
    "dense_motion_22x4x16x64x64": (22, 4, 1),
    "dense_motion_stacked_1x4_grid352": (1, 4, 22),
}
SPATIAL = (16, 64, 64)


def make_grid(n: int, kind: str, gen: torch.Generator) -> torch.Tensor:
    if kind == "random":
        return torch.rand((n, *SPATIAL, 3), generator=gen) * 2.2 - 1.1
    axes = [torch.linspace(-1, 1, s) for s in SPATIAL]
    zz, yy, xx = torch.meshgrid(*axes, indexing="ij")
    identity = torch.stack([xx, yy, zz], dim=-1)
    coarse = torch.randn((n, 3, 4, 8, 8), generator=gen) * 0.15
    flow = F.interpolate(coarse, size=SPATIAL, mode="trilinear", align_corners=True)
    return (identity + flow.permute(0, 2, 3, 4, 1)).contiguous()


def make_case(
    n: int, c: int, stacked: int, kind: str, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn((n, c, *SPATIAL), generator=gen)
    g = make_grid(n * stacked, kind, gen)
    return x, g.reshape(n, stacked * SPATIAL[0], *SPATIAL[1:], 3)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1e3 for s in seconds]
    return {
        "median_ms": statistics.median(ms),
        "p10_ms": percentile(ms, 0.10),
        "p25_ms": percentile(ms, 0.25),
        "p75_ms": percentile(ms, 0.75),
        "p90_ms": percentile(ms, 0.90),
        "min_ms": min(ms),
    }


def time_interleaved(
    impls: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]],
    x: torch.Tensor,
    g: torch.Tensor,
    reps: int,
    warmup: int,
) -> dict[str, list[float]]:
    """Round-robin repetitions, so drifting background load hits every implementation alike."""
    for _ in range(warmup):
        for fn in impls.values():
            fn(x, g)
    times: dict[str, list[float]] = {name: [] for name in impls}
    for _ in range(reps):
        for name, fn in impls.items():
            start = time.perf_counter()
            fn(x, g)
            times[name].append(time.perf_counter() - start)
    return times


def bench_shape(
    impls: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]],
    x: torch.Tensor,
    g: torch.Tensor,
    reps: int,
    warmup: int,
) -> tuple[dict[str, list[float]], dict[str, float]]:
    reference = F.grid_sample(x, g, align_corners=False)
    diffs = {name: float((fn(x, g) - reference).abs().max()) for name, fn in impls.items()}
    # The decomposition allocates hundreds of MB of temporaries per call; interleaved, its frees
    # hand memory back to the OS and the next call of another implementation pays the page
    # faults. So torch and the twin alternate, and the decomposition runs in its own loop.
    times = time_interleaved({k: v for k, v in impls.items() if k != "decomposed"}, x, g, reps, warmup)
    if "decomposed" in impls:
        times.update(time_interleaved({"decomposed": impls["decomposed"]}, x, g, reps, warmup))
    return times, diffs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=30, help="timed repetitions per implementation (>= 20)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch and CPU-twin threads")
    parser.add_argument("--grid", choices=["smooth", "random"], default="smooth")
    parser.add_argument("--json", dest="json_path", help="also write the results here")
    args = parser.parse_args(argv)
    if args.reps < 20:
        parser.error("--reps must be at least 20 for a meaningful spread")
    torch.set_num_threads(args.threads)

    impls: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
        "torch": lambda x, g: F.grid_sample(x, g, align_corners=False),
    }
    if ops.kernel_library_available():
        impls["cpu_twin"] = lambda x, g: torch.ops.frvd.grid_sample3d(x, g, "bilinear", "zeros", False)
    else:
        print(f"cpu_twin skipped: {ops._lib_error}", file=sys.stderr)
    impls["decomposed"] = lambda x, g: grid_sample3d_decomposed(x, g)

    report: dict = {
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "threads": args.threads,
            "torch": torch.__version__,
        },
        "dtype": "float32",
        "mode": "bilinear/zeros/align_corners=False",
        "grid": args.grid,
        "reps": args.reps,
        "shapes": {},
    }
    header = f"{'shape':<34}{'impl':<12}{'median':>9}{'p10':>9}{'p90':>9}"
    header += f"{'IQR':>17}{'vs torch':>10}{'max|diff|':>11}"
    print(f"grid={args.grid} reps={args.reps} threads={args.threads} torch={torch.__version__}")
    print(header)
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for name, (n, c, stacked) in SHAPES.items():
            x, g = make_case(n, c, stacked, args.grid, gen)
            times, diffs = bench_shape(impls, x, g, args.reps, args.warmup)
            stats = {impl: summarize(t) for impl, t in times.items()}
            torch_median = stats["torch"]["median_ms"]
            speedups = {impl: torch_median / s["median_ms"] for impl, s in stats.items() if impl != "torch"}
            report["shapes"][name] = {
                "input": list(x.shape),
                "grid": list(g.shape),
                "median_ms": {impl: s["median_ms"] for impl, s in stats.items()},
                "speedup_vs_torch": speedups,
                "max_abs_diff_vs_torch": {k: v for k, v in diffs.items() if k != "torch"},
                "stats": stats,
            }
            for impl, s in stats.items():
                iqr = f"{s['p25_ms']:.2f}-{s['p75_ms']:.2f}"
                ratio = f"{speedups[impl]:.2f}x" if impl in speedups else "1.00x"
                print(
                    f"{name:<34}{impl:<12}{s['median_ms']:>9.2f}{s['p10_ms']:>9.2f}{s['p90_ms']:>9.2f}"
                    f"{iqr:>17}{ratio:>10}{diffs[impl]:>11.1e}"
                )
    print("times in ms; 'vs torch' = torch median / implementation median")
    if args.json_path:
        with open(args.json_path, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2)
        print(f"wrote {args.json_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
