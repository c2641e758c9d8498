"""A short tiny training run on the bundled clips, on this CPU: loss curve (PNG + JSON), samples/s, peak RSS.

    python benchmarks/bench_train.py [--steps 200] [--frames 4] [--size 128] [--out benchmarks/results]

Random tiny weights: the loss curve shows the optimiser working on the release's objective (it falls from
the fresh from_unet start), not image quality. The machine is shared (2 cores, other jobs running), so
samples/s is indicative; it is measured over the whole run, data loading included.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import tempfile
import threading
import time
from pathlib import Path

import torch

from engine.train.loop import TrainConfig, train_loop

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=1, help="DataLoader processes (0: decode in this process)")
    p.add_argument("--data", type=Path, default=REPO / "engine" / "assets")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="frvd-bench-train-") as run:
        cfg = TrainConfig(data=args.data, out=Path(run), preset="tiny", size=args.size, frames=args.frames,
                          steps=args.steps, lr=args.lr, workers=args.workers, checkpoint_every=args.steps,
                          log_every=1)
        stop = threading.Event()  # SIGTERM / Ctrl-C: stop after the current step and report what ran
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        t0 = time.perf_counter()
        result = train_loop(cfg, stop)
        wall = time.perf_counter() - t0
        log = [json.loads(line) for line in (Path(run) / "log.jsonl").read_text().splitlines()]
    rss_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rss_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    losses = [result.losses[k] for k in sorted(result.losses)]
    window = 20
    smooth = [sum(losses[max(0, i - window + 1): i + 1]) / len(losses[max(0, i - window + 1): i + 1])
              for i in range(len(losses))]
    report = {
        "what": "tiny preset, fresh start (WFM from the UNet), bundled clips, CPU float32, batch 1, AdamW",
        "config": {"steps": args.steps, "frames": args.frames, "size": args.size, "lr": args.lr,
                   "threads": args.threads, "workers": args.workers, "data": str(args.data.relative_to(REPO))},
        "machine": {"cpu": platform.processor() or platform.machine(), "note": "2 cores shared with other jobs",
                    "load_average_at_end": list(os.getloadavg())},
        "steps_run": len(result.losses),
        "stopped_early": result.stopped,
        "wall_s": wall,
        "samples_per_s": result.samples_per_s,
        "peak_rss_mib": {"main": rss_self, "largest_dataloader_worker": rss_children},
        "loss_first20_mean": sum(losses[:20]) / min(20, len(losses)),
        "loss_last20_mean": sum(losses[-20:]) / min(20, len(losses)),
        "losses": losses,
        "logged": log,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train_tiny.json").write_text(json.dumps(report, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(range(1, len(losses) + 1), losses, lw=0.7, alpha=0.5, label="loss per step")
    ax.plot(range(1, len(losses) + 1), smooth, lw=2, label=f"mean of last {window}")
    ax.set_xlabel("step")
    ax.set_ylabel("EDM-weighted loss")
    ax.set_yscale("log")
    ax.set_title(f"tiny training on the bundled clips ({args.frames} frames, {args.size}px, CPU)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "train_tiny.png", dpi=120)
    print(json.dumps({k: v for k, v in report.items() if k not in ("losses", "logged")}, indent=1))


if __name__ == "__main__":
    main()
