"""``python -m engine.reenact``: animate a source portrait with a driving clip.

With no arguments it runs the embedded default: the tiny preset on the bundled media.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from engine.errors import EngineError
from engine.io import check_output_path, load_image, read_video, side_by_side, write_video

ASSETS = Path(__file__).resolve().parent / "assets"
DEFAULT_SOURCE = ASSETS / "source.png"
DEFAULT_DRIVING = ASSETS / "driving.mp4"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m engine.reenact", description=__doc__)
    p.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="source portrait image")
    p.add_argument("--driving", type=Path, default=DEFAULT_DRIVING, help="driving video")
    p.add_argument("--out", type=Path, default=Path("outputs/reenact.mp4"), help="output .mp4")
    p.add_argument("--preset", choices=["tiny", "official"], default="tiny")
    p.add_argument("--weights", type=Path, default=None, help="the release's pretrained_weights/ folder")
    p.add_argument("--size", type=int, default=None, help="output side in pixels (multiple of 64)")
    p.add_argument(
        "--steps", type=int, default=25, help="denoising steps (the release's 25)"
    )
    p.add_argument("--guidance", type=float, default=2.5)
    p.add_argument("--sampler", choices=["euler", "ddim"], default="euler")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-context", choices=["release", "fixed"], default="release")
    p.add_argument("--window-batch", type=int, default=1, help="windows per denoiser call")
    p.add_argument("--max-frames", type=int, default=None, help="use only the first N driving frames")
    p.add_argument("--absolute-motion", action="store_true", help="self-reenactment: absolute driving motion")
    p.add_argument("--side-by-side", action="store_true", help="write source | driving | result")
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", choices=["torch", "onnxruntime", "tensorrt"], default="torch",
                   help="what runs the networks (onnxruntime/tensorrt: graphs built by python -m engine.build)")
    p.add_argument("--engines", type=Path, default=None, help="folder written by python -m engine.build --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error("--steps must be >= 1")
    if args.window_batch < 1:
        p.error("--window-batch must be >= 1")
    if args.size is not None and (args.size < 64 or args.size % 64):
        # latents are size/8 and the UNet halves them three times: size must divide by 64
        p.error("--size must be a multiple of 64 (64, 128, ..., 512)")
    if args.backend != "torch" and args.engines is None:
        p.error(f"--backend {args.backend} needs --engines DIR (built with python -m engine.build)")
    if args.preset == "official" and args.weights is None and args.backend == "torch":
        p.error("--preset official needs --weights DIR (the release's pretrained_weights/ folder)")
    return args


class _Bar:
    """One tqdm bar per stage, driven by the pipeline's (stage, done, total) callback."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bars: dict[str, object] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        bar = self.bars.get(stage)
        if bar is None:
            bar = self.bars[stage] = tqdm(total=total, desc=f"{stage:>8}", leave=False, file=sys.stderr)
        bar.n = done  # type: ignore[attr-defined]
        bar.refresh()  # type: ignore[attr-defined]
        if done >= total:
            bar.close()  # type: ignore[attr-defined]

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()  # type: ignore[attr-defined]


def run(args: argparse.Namespace) -> str:
    from engine.networks import build_pipeline

    start = time.perf_counter()
    out = check_output_path(args.out)
    pipe = build_pipeline(
        preset=args.preset,
        weights_dir=args.weights,
        size=args.size,
        steps=args.steps,
        guidance=args.guidance,
        sampler=args.sampler,
        seed=args.seed,
        time_context=args.time_context,
        window_batch=args.window_batch,
        relative_motion=not args.absolute_motion,
        device=args.device,
        backend=args.backend,
        engines=args.engines,
    )
    size = pipe.cfg.size
    source = load_image(args.source, size)
    clip = read_video(args.driving, size, max_frames=args.max_frames)
    load_s = time.perf_counter() - start

    bar = _Bar(enabled=not args.quiet and sys.stderr.isatty())
    try:
        result = pipe(source, clip.frames, progress=bar)
    finally:
        bar.close()
    frames = result.frames
    if args.side_by_side:
        frames = side_by_side(np.repeat(source[None], len(frames), 0), clip.frames, frames)
    t0 = time.perf_counter()
    write_video(out, frames, clip.rate, audio_from=args.driving if clip.has_audio else None)
    write_s = time.perf_counter() - t0
    pipe.cfg.save(out.with_suffix(".json"))

    sec = result.seconds
    total = time.perf_counter() - start
    backend = "" if args.backend == "torch" else f"{args.backend}, "
    n = len(result.frames)
    return (
        f"reenact: {n} frames {size}x{size} [{args.preset}, {backend}{pipe.cfg.sampler.sampler} "
        f"{pipe.cfg.sampler.steps} steps] in {total:.1f} s = {total / n:.2f} s/frame "
        f"(load {load_s:.1f} s, source {sec['source']:.1f} s, motion {sec['motion']:.1f} s, "
        f"denoise {sec['denoise']:.1f} s, decode {sec['decode']:.1f} s, write {write_s:.1f} s) -> {out}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_grad_enabled(False)
    try:
        print(run(args))
    except EngineError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted: no output was written", file=sys.stderr)
        return 130
    except MemoryError:
        print("error: out of memory; try a smaller --size or --max-frames", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
