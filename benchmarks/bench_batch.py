"""Batch throughput: ``python -m engine.batch`` (Ray actors) vs a shell loop of ``python -m engine.reenact``.

    python benchmarks/bench_batch.py [--items 6] [--frames 8] [--steps 1] [--actors 2] [--repeats 1]
        [--json benchmarks/results/batch_throughput.json]

Both sides render the same items (tiny preset, the bundled source and driving clip, one seed per
item) from a cold start, as a user would run them: the loop pays one process start and one engine
build per item; the batch pays one Ray cluster start, one engine per actor, and then keeps them. The
sides alternate (loop, batch, loop, batch, ...) and the medians are compared. Items/min counts the
whole wall time (start-up included). On a machine shared by other jobs the numbers are noisy: the
JSON keeps every repeat and the machine's load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "engine" / "assets"


def run_loop(items: int, frames: int, steps: int, threads: int, folder: Path) -> float:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(REPO))
    t0 = time.perf_counter()
    for i in range(items):
        subprocess.run([sys.executable, "-m", "engine.reenact", "--steps", str(steps), "--seed", str(i),
                        "--max-frames", str(frames), "--out", str(folder / f"{i}.mp4"), "--quiet"],
                       env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def run_batch(items: int, frames: int, steps: int, actors: int, folder: Path) -> float:
    manifest = folder / "items.csv"
    lines = ["source,driving,out,steps,seed,max_frames"]
    lines += [f"{ASSETS / 'source.png'},{ASSETS / 'driving.mp4'},item{i},{steps},{i},{frames}" for i in range(items)]
    manifest.write_text("\n".join(lines) + "\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "engine.batch", str(manifest), "--out", str(folder / "out"),
                    "--actors", str(actors), "--local-cpus", str(actors), "--log-level", "warning"],
                   env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=6)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--actors", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "batch_throughput.json")
    args = p.parse_args()
    loop_s, batch_s = [], []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            loop_s.append(run_loop(args.items, args.frames, args.steps, args.actors, Path(tmp)))
        with tempfile.TemporaryDirectory() as tmp:
            batch_s.append(run_batch(args.items, args.frames, args.steps, args.actors, Path(tmp)))
    loop_rate = args.items / statistics.median(loop_s) * 60
    batch_rate = args.items / statistics.median(batch_s) * 60
    result = {
        "items": args.items, "frames": args.frames, "steps": args.steps, "preset": "tiny",
        "actors": args.actors, "loop_threads": args.actors, "cpus": os.cpu_count(),
        "load_average": os.getloadavg(), "loop_seconds": loop_s, "batch_seconds": batch_s,
        "loop_items_per_min": round(loop_rate, 2), "batch_items_per_min": round(batch_rate, 2),
        "batch_over_loop": round(batch_rate / loop_rate, 3),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"loop of engine.reenact: {loop_rate:.1f} items/min; engine.batch ({args.actors} actors): "
          f"{batch_rate:.1f} items/min; ratio {batch_rate / loop_rate:.2f} -> {args.json}")


if __name__ == "__main__":
    main()
