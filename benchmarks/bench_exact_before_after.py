"""Exact mode before and after a change, side by side: the same whole render in fresh processes, one
per source tree and setting, interleaved over rounds (the order alternating), medians quoted.

    python benchmarks/bench_exact_before_after.py --before ../main-checkout [--after .] [--rounds 3]
        [--frames 40] [--steps 3] [--threads 2] [--window-batch 1 4] [--json benchmarks/results/x.json]

``--before``/``--after`` are checkouts of the repository (e.g. ``git worktree add ../before <commit>``);
each worker imports ``engine`` from its tree and renders the bundled driving clip (tiny preset, public
API only, so any two versions compare) with ``--steps`` Euler steps. Reported per tree and window batch:
median wall and process-CPU seconds of the whole render, and a hash of the frames: equal hashes mean the
two trees computed the same pixels. The CPU is shared: say so when quoting, and prefer the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WORKER = r"""
import hashlib, json, sys, time
import torch
threads, frames, steps, batch, calls = map(int, sys.argv[1:6])
torch.set_num_threads(threads)
torch.set_grad_enabled(False)
from engine.api import EngineOptions, Reenactor, RunOptions
from engine.cli.reenact import DEFAULT_DRIVING, DEFAULT_SOURCE
from engine.io import read_video
engine = Reenactor.from_preset("tiny", EngineOptions(window_batch=batch))
clip = read_video(DEFAULT_DRIVING, engine.size, max_frames=frames).frames
source = engine.set_source(DEFAULT_SOURCE)
engine.render(source, clip[:14], options=RunOptions(steps=1))  # warm-up: first-call allocations
wall, cpu, denoise = [], [], []
for _ in range(calls):
    t0, c0 = time.perf_counter(), time.process_time()
    result = engine.render(source, clip, options=RunOptions(steps=steps))
    wall.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
    denoise.append(result.seconds.get("denoise", 0.0))
digest = hashlib.sha256(result.frames.tobytes()).hexdigest()[:16]
print(json.dumps({"wall": wall, "cpu": cpu, "denoise": denoise, "frames_sha256": digest, "frames": len(clip)}))
"""


def run_worker(tree: Path, threads: int, frames: int, steps: int, batch: int, calls: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, "-c", WORKER, str(threads), str(frames), str(steps), str(batch),
                          str(calls)], cwd=tree, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"worker in {tree} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", type=Path, required=True, help="checkout of the code before the change")
    p.add_argument("--after", type=Path, default=ROOT, help="checkout of the code after (default: this one)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--calls", type=int, default=1, help="timed renders per process")
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--window-batch", type=int, nargs="+", default=[1], help="window batches to compare")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    cases = [(t, b) for b in args.window_batch for t in trees]
    samples: dict[str, dict[str, list[float]]] = {}
    digests: dict[str, str] = {}
    for r in range(args.rounds):
        for tree, batch in cases if r % 2 == 0 else cases[::-1]:
            key = f"{tree}_wb{batch}"
            res = run_worker(trees[tree], args.threads, args.frames, args.steps, batch, args.calls)
            for kind in ("wall", "cpu", "denoise"):
                samples.setdefault(key, {}).setdefault(kind, []).extend(res[kind])
            digests[key] = res["frames_sha256"]
            print(f"round {r}: {key:16s} wall {res['wall'][-1]:7.2f} s  cpu {res['cpu'][-1]:7.2f} s  "
                  f"frames {res['frames_sha256']}", flush=True)
    med = {k: {kind: round(statistics.median(v), 3) for kind, v in s.items()} for k, s in samples.items()}
    ratios = {f"wb{b}": {kind: round(med[f"before_wb{b}"][kind] / med[f"after_wb{b}"][kind], 3)
                         for kind in ("wall", "cpu")} for b in args.window_batch}
    report = {"benchmark": "exact_before_after", "trees": {k: str(v) for k, v in trees.items()},
              "frames": args.frames, "steps": args.steps, "threads": args.threads, "rounds": args.rounds,
              "calls_per_process": args.calls, "median_seconds": med, "speedup_before_over_after": ratios,
              "frames_sha256": digests, "same_pixels": {f"wb{b}": digests[f"before_wb{b}"] == digests[f"after_wb{b}"]
                                                        for b in args.window_batch},
              "all_seconds": {k: {kind: [round(x, 3) for x in v] for kind, v in s.items()} for k, s in samples.items()},
              "load_average_at_end": os.getloadavg()}
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
