"""Batch throughput: ``python -m engine.batch`` with 1 and 2 Ray actors vs a loop of ``python -m engine.reenact``.

    python benchmarks/bench_batch.py [--items 4] [--frames 8] [--steps 1] [--repeats 2]
        [--json benchmarks/results/batch.json] [--png benchmarks/results/batch.png]

Three sides render the same items (tiny preset, the bundled source and driving clip, one seed per
item) from a cold start, as a user would run them, on the same total CPU budget (``--cpus``, default
2: all of this machine):

- ``loop``: one ``python -m engine.reenact`` process per item, torch on ``--cpus`` threads; every item
  pays a process start, the imports and an engine build.
- ``batch-1``: one ``engine.batch`` run with 1 actor on ``--cpus`` threads (a local Ray cluster of
  ``--cpus`` CPUs is started and stopped by the run).
- ``batch-N``: the same with ``--cpus`` actors of 1 thread each (the parallelism moves from torch's
  threads to processes).

The sides alternate in each repeat (loop, batch-1, batch-N, loop, ...) and medians are compared, in one
run of this script, so every ratio is measured side by side. Items/s counts the whole wall time
(process / cluster start and engine builds included: what a user waits for); ``item_seconds`` is what
the actors report for the render of one item alone (decode, render, encode); a batch side's
``startup_seconds`` runs from its launch to the first actor with an engine (the driver's log), and
``render_items_per_s`` counts items over the rest (first actor ready -> last item committed: the
steady rate a long batch approaches, a second actor's engine build included). The JSON keeps every
repeat and the load average before and after: the machine may be shared, and a busy neighbour shows
up there first.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "engine" / "assets"


def run_loop(items: int, frames: int, steps: int, threads: int, folder: Path) -> dict[str, Any]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(REPO))
    t0 = time.perf_counter()
    for i in range(items):
        subprocess.run([sys.executable, "-m", "engine.reenact", "--steps", str(steps), "--seed", str(i),
                        "--max-frames", str(frames), "--out", str(folder / f"{i}.mp4"), "--quiet"],
                       env=env, check=True, capture_output=True)
    return {"seconds": time.perf_counter() - t0}


def run_batch(items: int, frames: int, steps: int, actors: int, cpus: int, folder: Path) -> dict[str, Any]:
    manifest = folder / "items.csv"
    lines = ["source,driving,out,steps,seed,max_frames"]
    lines += [f"{ASSETS / 'source.png'},{ASSETS / 'driving.mp4'},item{i},{steps},{i},{frames}" for i in range(items)]
    manifest.write_text("\n".join(lines) + "\n")
    out = folder / "out"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    started = datetime.datetime.now()
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "engine.batch", str(manifest), "--out", str(out), "--actors",
                          str(actors), "--cpus-per-actor", str(cpus // actors), "--local-cpus", str(cpus)],
                         env=env, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    if [r["status"] for r in results] != ["done"] * items:
        raise RuntimeError(f"batch run did not render every item: {results}")
    # the driver's log: when the first actor had its engine, when the last item was committed
    stamps = {kind: [datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
                     for m in re.finditer(rf"^(\S+ \S+) INFO batch: .*{kind}", run.stderr, re.M)]
              for kind in ("ready", "committed")}
    first_ready, last_commit = min(stamps["ready"]), max(stamps["committed"])
    render = (last_commit - first_ready).total_seconds()
    return {"seconds": seconds, "item_seconds": [r["seconds"] for r in results],
            "startup_seconds": (first_ready - started).total_seconds(), "render_seconds": render}


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["sides"])
    walls = [result["sides"][n]["items_per_s"] for n in names]
    renders = [result["sides"][n].get("render_items_per_s", 0.0) for n in names]
    x = range(len(names))
    fig, ax = plt.subplots(figsize=(7, 3.8))
    wall = ax.bar([i - 0.2 for i in x], walls, 0.4, label="wall (start-up included)")
    render = ax.bar([i + 0.2 for i in x], renders, 0.4, label="render phase (first engine ready -> last item)")
    ax.bar_label(wall, [f"{r:.3f}" for r in walls], fontsize=8)
    ax.bar_label(render, [f"{r:.3f}" if r else "" for r in renders], fontsize=8)
    ax.set_xticks(list(x), names)
    ax.set_ylabel("items/s")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(f"{result['items']} tiny items x {result['frames']} frames, {result['steps']} step, "
                 f"{result['cpus']} CPUs (median of {result['repeats']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=4)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--cpus", type=int, default=2, help="CPUs every side uses (threads or actors)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "batch.json")
    p.add_argument("--png", type=Path, default=REPO / "benchmarks" / "results" / "batch.png")
    args = p.parse_args()
    sides = {"loop": lambda d: run_loop(args.items, args.frames, args.steps, args.cpus, d),
             "batch-1": lambda d: run_batch(args.items, args.frames, args.steps, 1, args.cpus, d),
             f"batch-{args.cpus}": lambda d: run_batch(args.items, args.frames, args.steps, args.cpus, args.cpus, d)}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
    load_before = os.getloadavg()
    for repeat in range(args.repeats):
        for name, side in sides.items():  # interleaved: a load change hits every side alike
            with tempfile.TemporaryDirectory() as tmp:
                runs[name].append(side(Path(tmp)))
            print(f"repeat {repeat + 1}/{args.repeats} {name}: {runs[name][-1]['seconds']:.1f} s "
                  f"(load {os.getloadavg()[0]:.1f})", flush=True)
    summary: dict[str, dict[str, Any]] = {}
    for name, rs in runs.items():
        median = statistics.median(r["seconds"] for r in rs)
        summary[name] = {"seconds": [round(r["seconds"], 2) for r in rs], "median_seconds": round(median, 2),
                         "items_per_s": round(args.items / median, 4)}
        if "item_seconds" in rs[0]:  # a batch side: its start-up and its render phase apart
            render = statistics.median(r["render_seconds"] for r in rs)
            summary[name].update(
                median_item_seconds=round(statistics.median(s for r in rs for s in r["item_seconds"]), 2),
                median_startup_seconds=round(statistics.median(r["startup_seconds"] for r in rs), 2),
                median_render_seconds=round(render, 2), render_items_per_s=round(args.items / render, 4))
    base = summary["loop"]["items_per_s"]
    for entry in summary.values():
        entry["over_loop"] = round(entry["items_per_s"] / base, 3)
    result = {
        "what": "engine.batch (Ray actors) vs a loop of engine.reenact processes; wall time incl. start-up",
        "items": args.items, "frames": args.frames, "steps": args.steps, "preset": "tiny", "cpus": args.cpus,
        "machine_cpus": os.cpu_count(), "repeats": args.repeats,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()], "sides": summary,
        "batch_n_over_batch_1": round(summary[f"batch-{args.cpus}"]["items_per_s"]
                                      / summary["batch-1"]["items_per_s"], 3),
        "batch_n_over_batch_1_render": round(summary[f"batch-{args.cpus}"]["render_items_per_s"]
                                             / summary["batch-1"]["render_items_per_s"], 3),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.png)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
