"""``python -m engine.train --data DIR --out RUN``: train the WFM and HeadNet as the release's ``train.py``.

Running it again with the same ``--out`` resumes from the latest checkpoint there (``--steps`` may be
raised). Each ``RUN/checkpoint-N/`` holds the release's ``warping_feature_mapper.pth`` and
``head_embedder.pth``: ``--weights RUN/checkpoint-N`` renders with them (tiny), or the folder replaces
``checkpoint-30000-14frames/`` of the release's ``pretrained_weights/`` (official). Several processes:
``torchrun --nproc-per-node N -m engine.train ...``. Ctrl-C / SIGTERM saves a checkpoint and exits.
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

from engine.cli.args import Parser, creatable_dir, finite_float, int_in, positive_int, seed_int
from engine.cli.loop_runs import add_ray_arguments, run_into
from engine.config import presets
from engine.errors import InputError


def parser() -> Parser:
    p = Parser(prog="python -m engine.train", description=__doc__)
    p.add_argument("--data", type=Path, required=True, help="folder of face clips, or a text file listing them")
    p.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, log.jsonl, validation)")
    p.add_argument("--preset", choices=sorted(presets.PRESETS), default="tiny")
    p.add_argument("--weights", type=Path, default=None,
                   help="official: the release's pretrained_weights/; tiny: optional folder of our two files")
    p.add_argument("--init", default="fresh",
                   help="fresh (WFM from the UNet, as the release) | weights (fine-tune what --weights holds) "
                        "| a checkpoint folder")
    p.add_argument("--size", type=int_in(64, multiple_of=64), default=None)
    p.add_argument("--frames", type=positive_int, default=14)
    p.add_argument("--sample-rate", type=positive_int, default=4)
    p.add_argument("--batch", type=positive_int, default=1, help="clips per micro-batch and process")
    p.add_argument("--accumulate", type=positive_int, default=1, help="micro-batches per optimisation step")
    p.add_argument("--steps", type=positive_int, default=100, help="optimisation steps in total (with resumed ones)")
    p.add_argument("--lr", type=finite_float(0.0, lo_open=True), default=1e-5)
    p.add_argument("--warmup", type=int_in(0), default=0, help="linear lr warm-up steps")
    p.add_argument("--optimizer", choices=["adamw", "adamw8bit"], default="adamw")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                   help="autocast dtype on CUDA (auto: bf16); CPU always float32")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--workers", type=int_in(0), default=2, help="DataLoader processes decoding clips")
    p.add_argument("--align", choices=["none", "auto", "opencv", "insightface"], default="none",
                   help="crop every clip to its face (engine.face.align)")
    p.add_argument("--checkpoint-every", type=positive_int, default=100)
    p.add_argument("--keep", type=positive_int, default=2, help="checkpoints kept")
    p.add_argument("--log-every", type=positive_int, default=1)
    p.add_argument("--validate-every", type=int_in(0), default=0, help="validation render every N steps (0: never)")
    p.add_argument("--val-clip", type=Path, default=None)
    p.add_argument("--val-steps", type=positive_int, default=4)
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    add_ray_arguments(p)
    p.add_argument("--ray-gpu", action="store_true", help="with --ray: one GPU per worker (nccl)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return run_into(args.out, lambda stop: train(args, stop))  # Ctrl-C / SIGTERM: a checkpoint, exit 130


def train(args: argparse.Namespace, stop: threading.Event) -> int:
    """The run itself: checks, the config, then the loop (or Ray Train); its exit code."""
    import torch

    from engine.train.data import list_clips
    from engine.train.loop import TrainConfig, train_loop

    if args.threads:
        torch.set_num_threads(args.threads)
    creatable_dir(args.out, "--out")
    list_clips(args.data)  # a missing --data fails here, before any network is built
    if args.init not in ("fresh", "weights") and not Path(args.init).is_dir():
        raise InputError(f"--init {args.init}: not fresh, weights or an existing checkpoint folder")
    if args.preset == "official" and args.weights is None:
        raise InputError("--preset official needs --weights DIR (the release's pretrained_weights/)")
    cfg = TrainConfig(
        data=args.data, out=args.out, preset=args.preset, weights=args.weights, init=args.init, size=args.size,
        frames=args.frames, sample_rate=args.sample_rate, batch=args.batch, accumulate=args.accumulate,
        steps=args.steps, lr=args.lr, warmup=args.warmup, optimizer=args.optimizer, seed=args.seed,
        device=args.device, precision=args.precision, gradient_checkpointing=args.gradient_checkpointing,
        workers=args.workers, align=args.align, checkpoint_every=args.checkpoint_every, keep=args.keep,
        log_every=args.log_every, validate_every=args.validate_every, val_clip=args.val_clip,
        val_steps=args.val_steps,
    )
    if args.ray:
        from engine.train.ray_train import fit

        losses = fit(cfg, args.ray, use_gpu=args.ray_gpu, cpus_per_worker=args.threads or 1,
                     address=args.ray_address)
        print(f"train: {len(losses)} steps on {args.ray} Ray Train workers, last loss {losses[-1]:.5f} "
              f"-> {args.out}")
        return 0
    result = train_loop(cfg, stop)
    last = result.checkpoint
    print(f"{'stopped' if result.stopped else 'done'}: steps {result.start_step}->{result.end_step}, "
          f"{result.samples_per_s:.3f} samples/s, checkpoint {last}")
    return 130 if result.stopped else 0


if __name__ == "__main__":
    sys.exit(main())
