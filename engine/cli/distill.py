"""``python -m engine.distill``: learn to need less work (docs/distillation.md).

    python -m engine.distill --what student --steps 1 --kv-downsample 2 --out runs/student1 \\
        --data clips/ [--examples 8] [--iters 200]
    python -m engine.distill --what vae-decoder --out runs/taesd --data clips/ [--iters 500]
    torchrun --nproc-per-node N -m engine.distill ...   (data-parallel, as engine.train)
    python -m engine.distill ... --ray N                 (the same on Ray Train: docs/scale-out.md)

The data are engine.train's: ``--data`` is a folder of face clips, a text file listing them or one clip;
example ``i`` is the release's training sample ``i`` (``--frames`` frames of a clip at ``--sample-rate``, its
reference frame the source). The last clip is held out (``--holdout`` windows of it, never trained on).

``student``: the teacher (the preset's networks, exact mode: 25 Euler steps, CFG 2.5) is run once per
example and its latents recorded at the K student sigmas (cached in ``OUT/teacher/``); the student
(initialised from the teacher) learns to land on them in K steps without CFG. On the held-out windows:
the drift table (PSNR of uint8 frames, relative error of final latents vs the teacher's exact result,
student vs undistilled runs of equal work). Writes ``student.safetensors`` (reenact --student), ``report.json``.

``vae-decoder``: a TAESD decoder regressed on the engine's VAE decoder over latents of the examples' frames;
PSNR vs the full decoder on the held-out frames. Writes ``taesd_decoder.safetensors`` (reenact
--tiny-decoder), ``report.json``.

Both are engine.train's loop: ``OUT/checkpoint-N/`` every ``--save-every`` iterations (atomic, the last
``--keep``), ``OUT/log.jsonl``; running again with the same ``--out`` resumes bit-identically (``--iters`` may be
raised); Ctrl-C / SIGTERM saves a checkpoint and exits 130.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path

from engine.cli.args import Parser, creatable_dir, finite_float, int_in, positive_int, seed_int
from engine.cli.loop_runs import add_ray_arguments, run_into
from engine.config import presets


def parser() -> Parser:
    p = Parser(prog="python -m engine.distill", description=__doc__)
    p.add_argument("--what", choices=["student", "vae-decoder"], required=True)
    p.add_argument("--data", type=Path, required=True, help="face clips: a folder, a text file listing them, a clip")
    p.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, log, result, report.json)")
    p.add_argument("--preset", choices=sorted(presets.PRESETS), default="tiny")
    p.add_argument("--weights", type=Path, default=None, help="the release's pretrained_weights/ (official)")
    p.add_argument("--size", type=int_in(64, multiple_of=64), default=None, help="default: the preset's")
    p.add_argument("--frames", type=positive_int, default=14, help="frames per example (a window)")
    p.add_argument("--sample-rate", type=positive_int, default=4)
    p.add_argument("--examples", type=positive_int, default=8, help="training windows (one teacher run each)")
    p.add_argument("--holdout", type=int_in(0), default=1, help="held-out windows, from the last clip")
    p.add_argument("--steps", type=int, choices=[1, 2, 4], default=1, help="student: K")
    p.add_argument("--kv-downsample", type=int, choices=[1, 2], default=1, help="student: as the mode will run it")
    p.add_argument("--batch", type=positive_int, default=1, help="examples per micro-batch and process")
    p.add_argument("--accumulate", type=positive_int, default=1)
    p.add_argument("--iters", type=positive_int, default=100, help="optimisation steps in total (with resumed ones)")
    p.add_argument("--lr", type=finite_float(0.0, lo_open=True), default=None,
                   help="default: 1e-5 student, 1e-3 vae-decoder")
    p.add_argument("--warmup", type=int_in(0), default=0)
    p.add_argument("--max-grad-norm", type=finite_float(0.0, lo_open=True), default=1.0)
    p.add_argument("--save-every", type=positive_int, default=25)
    p.add_argument("--keep", type=positive_int, default=2, help="checkpoints kept")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true")
    add_ray_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return run_into(args.out, lambda stop: distill(args, stop))  # Ctrl-C / SIGTERM: a checkpoint, exit 130


def distill(args: argparse.Namespace, stop: threading.Event) -> int:
    """The run itself: checks, the config, then the loop (or Ray Train); its exit code."""
    from engine.distill.train import DistillConfig, distill_loop

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    creatable_dir(args.out, "--out")
    cfg = DistillConfig(
        what=args.what, data=args.data, out=args.out, preset=args.preset, weights=args.weights, size=args.size,
        frames=args.frames, sample_rate=args.sample_rate, examples=args.examples, holdout=args.holdout,
        k=args.steps, kv_downsample=args.kv_downsample, batch=args.batch, accumulate=args.accumulate,
        iters=args.iters, lr=args.lr, warmup=args.warmup, max_grad_norm=args.max_grad_norm,
        save_every=args.save_every, keep=args.keep, seed=args.seed, quiet=args.quiet)
    if args.ray:
        from engine.train.ray_train import fit_distill

        report = fit_distill(cfg, args.ray, cpus_per_worker=args.threads or 1, address=args.ray_address)
    else:
        report = distill_loop(cfg, stop)
    if report is None:  # not the main process
        return 0
    if "stopped_at" in report:
        print(f"stopped at iteration {report['stopped_at']}: run again with the same --out to resume")
        return 130
    tmp = args.out / ".report.json.partial"
    tmp.write_text(json.dumps(report, indent=2, default=str))
    tmp.replace(args.out / "report.json")
    print(json.dumps({k: v for k, v in report.items() if k != "drift"}, default=str))
    for row in report.get("drift", []):
        print(f"{row['example']:>8}  {row['run']:<34} PSNR {row['psnr_u8']:6.2f} dB  latent rel err "
              f"{row['latent_rel_error']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
