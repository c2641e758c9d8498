"""``python -m engine.distill``: learn to need less work (docs/distillation.md).

    python -m engine.distill --what student --steps 1 --kv-downsample 2 --out runs/student1 \\
        --source face.png --driving clip.mp4 [--iters 200] [--resume]
    python -m engine.distill --what vae-decoder --out runs/taesd --driving a.mp4 b.mp4 [--iters 500]

``student``: the teacher (the preset's networks, exact mode: 25 Euler steps, CFG 2.5) is run once per
example (one 14-frame window of a driving clip, a source, a seed) and its latents recorded at the K
student sigmas; the student (initialised from the teacher) learns to land on them in K steps without
CFG. The last ``--holdout`` examples are never trained on: the drift table (PSNR of uint8 frames,
relative error of final latents vs the teacher's exact result, student vs undistilled runs of equal
work) is computed on them. Writes ``student.safetensors`` (give it to reenact --student), ``report.json``.

``vae-decoder``: a TAESD decoder regressed on the engine's VAE decoder over latents of the driving
frames; the last video (or the last quarter of a single video's frames) is held out for the PSNR vs
the full decoder. Writes ``taesd_decoder.safetensors`` (reenact --tiny-decoder), ``report.json``.

Both write ``checkpoint.pt`` every ``--save-every`` iterations (``--resume`` continues) and ``log.jsonl``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from engine.cli.args import Parser, int_in, positive_int
from engine.errors import EngineError, InputError
from engine.io import read_video

WINDOW = 14


def _frames(paths: list[Path], size: int, limit: int | None) -> list[np.ndarray]:
    return [read_video(p, size, limit).frames for p in paths]


def _student(args, log) -> dict:
    from engine.api import EngineOptions, Reenactor
    from engine.distill.frvd import Example

    opts = EngineOptions(size=args.size)
    teacher = Reenactor.from_preset(args.preset, opts, weights=args.weights)
    student = Reenactor.from_preset(args.preset, opts, weights=args.weights)
    sources = [teacher.set_source(p).features for p in args.source]
    examples: list = []
    for frames in _frames(args.driving, teacher.size, WINDOW * args.windows_per_video):
        for w in range(len(frames) // WINDOW):
            examples.append(Example(sources[len(examples) % len(sources)], frames[w * WINDOW : (w + 1) * WINDOW],
                                    seed=len(examples)))
    if len(examples) <= args.holdout:
        raise InputError(f"{len(examples)} examples (14-frame windows of --driving) leave none to train on after "
                         f"--holdout {args.holdout}: give longer or more driving clips")
    train, held = examples[: len(examples) - args.holdout], examples[len(examples) - args.holdout :]
    from engine.distill.train import distil_student

    return distil_student(teacher, student, train, held, args.steps, args.kv_downsample, args.out, args.iters,
                          args.lr, args.resume, args.save_every, args.preset, log)


def _vae_decoder(args, log) -> dict:
    from engine.api import EngineOptions, Reenactor
    from engine.distill.train import distil_vae_decoder

    engine = Reenactor.from_preset(args.preset, EngineOptions(size=args.size), weights=args.weights)
    clips = _frames(args.driving, engine.size, args.max_frames)
    if len(clips) > 1:
        train, held = np.concatenate(clips[:-1]), clips[-1]
    else:
        cut = max(1, len(clips[0]) * 3 // 4)
        train, held = clips[0][:cut], clips[0][cut:]
    if len(train) == 0 or len(held) == 0:
        raise InputError("the driving frames leave no training or held-out frames: give longer or more clips")
    return distil_vae_decoder(engine, train, held, args.out, args.iters, args.batch, args.lr, args.resume,
                              args.save_every, log)


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m engine.distill", description=__doc__)
    p.add_argument("--what", choices=["student", "vae-decoder"], required=True)
    p.add_argument("--out", type=Path, required=True, help="run folder (checkpoint, log, result, report.json)")
    p.add_argument("--preset", choices=["tiny", "official"], default="tiny")
    p.add_argument("--weights", type=Path, default=None, help="the release's pretrained_weights/ (official)")
    p.add_argument("--size", type=int_in(64, multiple_of=64), default=None, help="default: the preset's")
    p.add_argument("--driving", type=Path, nargs="+", required=True, help="driving clips (the data)")
    p.add_argument("--source", type=Path, nargs="+", default=None, help="student: source portraits")
    p.add_argument("--steps", type=int, choices=[1, 2, 4], default=1, help="student: K")
    p.add_argument("--kv-downsample", type=int, choices=[1, 2], default=1, help="student: as the mode will run it")
    p.add_argument("--windows-per-video", type=positive_int, default=4, help="student: 14-frame examples per clip")
    p.add_argument("--holdout", type=int_in(0), default=1, help="student: examples never trained on")
    p.add_argument("--max-frames", type=positive_int, default=64, help="vae-decoder: frames per clip")
    p.add_argument("--batch", type=positive_int, default=4, help="vae-decoder: frames per iteration")
    p.add_argument("--iters", type=positive_int, default=100)
    p.add_argument("--lr", type=float, default=None, help="default: 1e-5 student, 1e-3 vae-decoder")
    p.add_argument("--save-every", type=positive_int, default=25)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.what == "student" and not args.source:
        p.error("--what student needs --source (one or more portraits)")
    args.lr = args.lr or (1e-5 if args.what == "student" else 1e-3)
    log = (lambda _msg: None) if args.quiet else (lambda msg: print(msg, flush=True))
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        report = _student(args, log) if args.what == "student" else _vae_decoder(args, log)
    except EngineError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:
        print(f"error: {args.out}: {err.strerror or err}", file=sys.stderr)
        return 2
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
