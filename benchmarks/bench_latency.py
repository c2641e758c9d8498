"""Latency and memory of exact mode vs the causal stream, measured side by side in one run.

    python benchmarks/bench_latency.py [--preset tiny] [--steps 4] [--frames 100] [--long 1000]
                                       [--json out.json] [--png out.png]

1. Latency: a real driving clip is fed to the stream at its own frame rate, as a camera would
   (a pusher thread sleeps until each frame's capture time); per output frame: latency from its
   driving frame's push to its emission. Exact mode on the same clip: total time and time to the
   first output frame (frames are final only after the last step).
2. Drift of the stream's frames from exact mode's on the same clip (PSNR, max abs): with random
   tiny weights a regression signal only.
3. Peak memory (RSS of a fresh process, ``ru_maxrss``) at ``--frames`` vs ``--long`` frames, both
   modes, driving clips read from an MP4 (a real clip played forwards and backwards to length).
4. Overlap gain: wall time vs the sum of the stage times.

Writes JSON and a PNG (latency per output frame over time).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MEDIA = REPO.parent / "shared" / "media"


def driving_clip(path: Path, frames: int, size: int) -> Path:
    """A real clip (../shared/media/driving1.mp4, else the bundled one) ping-ponged to ``frames``."""
    from engine.cli.reenact import DEFAULT_DRIVING
    from engine.io import read_video, write_video

    src = MEDIA / "driving1.mp4" if (MEDIA / "driving1.mp4").exists() else DEFAULT_DRIVING
    clip = read_video(src, size)
    loop = np.concatenate([clip.frames, clip.frames[::-1]])
    frames_u8 = (loop[i % len(loop)] for i in range(frames))
    write_video(path, frames_u8, clip.rate)
    return path


def run_stream(engine, source, clip: Path, options, paced: bool) -> dict:
    """Push the clip (at its frame rate when ``paced``) from a thread; read results here."""
    from engine.io import iter_video_frames, probe_video

    rate = float(probe_video(clip).rate)
    emitted: list[tuple[int, float, float]] = []  # (index, emission time, latency)
    start = time.perf_counter()
    with engine.stream(source, options) as s:

        def pusher() -> None:
            for i, frame in enumerate(iter_video_frames(clip, engine.size)):
                if paced:
                    time.sleep(max(0.0, start + i / rate - time.perf_counter()))
                s.push(frame, timestamp=time.perf_counter())
            s.end()

        thread = threading.Thread(target=pusher, daemon=True)
        thread.start()
        frames = []
        for out in s.results():
            emitted.append((out.index, time.perf_counter() - start, out.latency))
            frames.append(out.frame)
        thread.join()
        stages = s.stage_seconds()
    wall = time.perf_counter() - start
    lat = np.array([e[2] for e in emitted])
    t = np.array([e[1] for e in emitted])
    # frames come out a window at a time: the steady rate is what came after the first window's burst
    after_first = t > t[0]
    span = t[-1] - t[0]
    fps = float(after_first.sum() / span) if span > 0 else float("nan")
    return {
        "frames": len(emitted),
        "input_fps": rate,
        "paced": paced,
        "wall_s": wall,
        "first_frame_latency_s": float(lat[0]),
        "latency_p50_s": float(np.percentile(lat, 50)),
        "latency_p95_s": float(np.percentile(lat, 95)),
        "steady_fps": float(fps),
        "stage_seconds": stages,
        "stage_sum_s": sum(stages.values()),
        "overlap_gain": sum(stages.values()) / wall,
        "lookahead_frames": s.lookahead,
        "_emitted": emitted,
        "_frames": np.stack(frames),
    }


def run_exact(engine, source, clip: Path, options) -> dict:
    from engine.runtime import RunControl

    start = time.perf_counter()
    first: list[float] = []
    control = RunControl(progress=lambda stage, d, n: first.append(time.perf_counter() - start)
                         if stage == "decode" and not first else None)
    result = engine.render(source, clip, options=options, control=control)
    wall = time.perf_counter() - start
    stages = {k: v for k, v in result.seconds.items() if k != "total"}
    return {"frames": result.num_frames, "wall_s": wall, "time_to_first_frame_s": first[0] if first else wall,
            "stage_seconds": stages, "stage_sum_s": sum(stages.values()),
            "overlap_gain": sum(stages.values()) / wall, "_frames": result.frames}


def drift(a: np.ndarray, b: np.ndarray) -> dict:
    diff = a.astype(np.float64) - b.astype(np.float64)
    mse = float(np.mean(diff**2))
    return {"psnr_db": float(10 * np.log10(255.0**2 / mse)) if mse > 0 else float("inf"),
            "max_abs": float(np.abs(diff).max())}


def peak_rss_mb(mode: str, preset: str, clip: Path, steps: int) -> float:
    """Peak RSS of a fresh process that renders or streams ``clip`` (no output file kept)."""
    code = (
        f"import sys; sys.path.insert(0, {str(REPO)!r})\n"
        "from benchmarks.bench_latency import _memory_child\n"
        f"_memory_child({mode!r}, {preset!r}, {str(clip)!r}, {steps})\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def _memory_child(mode: str, preset: str, clip: str, steps: int) -> None:
    import torch

    from engine.api import Reenactor, RunOptions
    from engine.cli.reenact import DEFAULT_SOURCE
    from engine.io import iter_video_frames

    torch.set_grad_enabled(False)
    engine = Reenactor.from_preset(preset)
    options = RunOptions(steps=steps)
    with tempfile.TemporaryDirectory() as tmp:
        if mode == "exact":
            engine.render(DEFAULT_SOURCE, clip, Path(tmp) / "out.mp4", options=options)
        else:
            with engine.stream(DEFAULT_SOURCE, options) as s:
                for frame in iter_video_frames(clip, engine.size):
                    s.push(frame)
                    s.ready()
                s.end()
                for _ in s.results():
                    pass
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)  # KiB on Linux -> MiB


def plot(path: Path, stream: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    em = np.array(stream["_emitted"])
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(em[:, 0], em[:, 2], ".-", ms=3)
    ax.axhline(stream["latency_p95_s"], ls="--", color="gray", label="p95")
    ax.set_xlabel("output frame index")
    ax.set_ylabel("latency (s): driving frame pushed -> output frame ready")
    ax.set_title(f"causal stream, input {stream['input_fps']:.0f} fps, lookahead {stream['lookahead_frames']} frames")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--frames", type=int, default=100)
    p.add_argument("--long", type=int, default=1000, help="frame count of the second memory run (0: skip)")
    p.add_argument("--json", type=Path, default=Path("benchmarks/results/latency.json"))
    p.add_argument("--png", type=Path, default=Path("benchmarks/results/latency.png"))
    args = p.parse_args(argv)

    import torch

    from engine.api import Reenactor, RunOptions
    from engine.cli.reenact import DEFAULT_SOURCE

    torch.set_grad_enabled(False)
    engine = Reenactor.from_preset(args.preset)
    source = engine.set_source(DEFAULT_SOURCE)
    options = RunOptions(steps=args.steps)
    report: dict = {"preset": args.preset, "steps": args.steps, "size": engine.size,
                    "torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        clip = driving_clip(Path(tmp) / "clip.mp4", args.frames, engine.size)
        engine.render(source, clip, options=RunOptions(steps=1), max_frames=14)  # warm-up
        exact = run_exact(engine, source, clip, options)
        stream = run_stream(engine, source, clip, options, paced=True)
        unpaced = run_stream(engine, source, clip, options, paced=False)
        report["drift_stream_vs_exact"] = drift(stream["_frames"], exact["_frames"])
        report["exact"] = {k: v for k, v in exact.items() if not k.startswith("_")}
        report["stream_paced"] = {k: v for k, v in stream.items() if not k.startswith("_")}
        report["stream_unpaced"] = {k: v for k, v in unpaced.items() if not k.startswith("_")}
        memory = {}
        for n in [args.frames] + ([args.long] if args.long else []):
            mclip = driving_clip(Path(tmp) / f"mem{n}.mp4", n, engine.size)
            memory[n] = {mode: peak_rss_mb(mode, args.preset, mclip, 1) for mode in ("stream", "exact")}
        report["peak_rss_mb"] = memory
        args.png.parent.mkdir(parents=True, exist_ok=True)
        plot(args.png, stream)
    report["note"] = ("peak RSS (MiB) is each fresh child process's own ru_maxrss, 1 step. Random tiny weights: "
                      "the stream-vs-exact drift is a regression signal, not image quality.")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
