"""``python -m engine.build``: export the engine's graphs to ONNX (and TensorRT), cached.

    python -m engine.build --preset tiny --target onnx --out engines/tiny
    python -m engine.build --preset official --weights W --target trt --precision fp16 --out engines/trt

W is the release's pretrained_weights/ folder. A second run with nothing changed rebuilds nothing
and says so; a changed checkpoint rebuilds only the graphs made from it. See docs/export.md.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch

from engine.cli.args import Parser, creatable_dir, existing_dir, finite_float, int_in, positive_int, seed_int
from engine.config import presets
from engine.config.settings import TIME_CONTEXTS
from engine.errors import EngineError, InputError
from engine.graphs.modules import ALL_GRAPH_NAMES, GRAPH_NAMES, GRID_SAMPLE_FORMS, OPTIONAL_GRAPH_NAMES


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = Parser(prog="python -m engine.build", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(presets.PRESETS), default="tiny")
    p.add_argument("--weights", type=Path, default=None, help="the release's pretrained_weights/ folder")
    p.add_argument("--target", choices=["onnx", "trt"], default="onnx")
    p.add_argument("--precision", choices=["fp32", "fp16"], default="fp32")
    p.add_argument("--out", type=Path, required=True, help="engines folder (the cache lives there too)")
    p.add_argument("--graphs", nargs="+", choices=ALL_GRAPH_NAMES + OPTIONAL_GRAPH_NAMES, default=list(GRAPH_NAMES),
                   help="graphs to build (default: the seven every mode uses; wfm, unet, wfm_cond, unet_cond, "
                        "denoiser_cond serve the fast modes)")
    # latents are size/8 and the UNet halves them three times: the side must divide by 64
    p.add_argument("--size", type=int_in(64, multiple_of=64), default=None,
                   help="output side in pixels, a multiple of 64 (default: the preset's)")
    p.add_argument("--student", type=Path, default=None,
                   help="a distilled student (python -m engine.distill): the graphs carry its weights")
    p.add_argument("--tiny-decoder", type=Path, default=None,
                   help="TAESD decoder weights: also builds the tiny_decoder graph (modes ultra, --decoder tiny)")
    p.add_argument("--seed", type=seed_int, default=0, help="tiny preset without --weights: the init seed")
    p.add_argument("--time-context", choices=TIME_CONTEXTS, default="release")
    p.add_argument("--grid-sample", choices=GRID_SAMPLE_FORMS, default=None,
                   help="5-D sampling in the warp graph (default: onnx20 for onnx, decomposed for trt)")
    p.add_argument("--attention", choices=["mha", "onnx23", "decomposed"], default=None,
                   help="attention in the graphs: com.microsoft MultiHeadAttention (default for onnx), "
                        "opset-23 Attention (default for trt >= 10.14) or MatMul-Softmax-MatMul (trt < 10.14)")
    p.add_argument("--max-windows", type=positive_int, default=4, help="largest windows-per-call the denoiser takes")
    p.add_argument("--window-batch", type=positive_int, default=1, help="windows per call TensorRT tunes for")
    p.add_argument("--workspace-gib", type=finite_float(0, lo_open=True), default=None,
                   help="TensorRT builder workspace limit")
    p.add_argument("--no-parity", action="store_true", help="skip the parity run against torch")
    p.add_argument("--threads", type=positive_int, default=None)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if not 1 <= args.window_batch <= args.max_windows:
        p.error("need 1 <= --window-batch <= --max-windows")
    try:
        presets.require_weights(args.preset, args.weights)
    except InputError as err:
        p.error(str(err))
    if args.tiny_decoder is not None and "tiny_decoder" not in args.graphs:
        args.graphs.append("tiny_decoder")
    if "tiny_decoder" in args.graphs and args.tiny_decoder is None:
        p.error("--graphs tiny_decoder needs --tiny-decoder FILE (its weights)")
    return args


def check_paths(args: argparse.Namespace) -> None:
    """Every path option, before any network is built or anything is written."""
    if args.weights is not None:
        existing_dir(args.weights, "--weights", "release's pretrained_weights/ folder")
    creatable_dir(args.out, "--out")


def run(args: argparse.Namespace) -> dict:
    from engine.graphs.modules import GraphOptions
    from export.build import BuildConfig, Builder, default_grid_sample, summary
    from export.cache import FileHashMemo
    from export.sources import from_preset, with_distilled

    memo = FileHashMemo(args.out / ".weights_hashes.json")
    source = with_distilled(from_preset(args.preset, args.weights, args.seed, args.time_context, memo=memo),
                            args.student, args.tiny_decoder)
    opts = GraphOptions(
        image_size=args.size or source.model.image_size,
        max_windows=args.max_windows,
        opt_windows=args.window_batch,
        grid_sample=args.grid_sample or default_grid_sample(args.target),
        time_context=args.time_context,
    )
    cfg = BuildConfig(target=args.target, precision=args.precision, graphs=tuple(args.graphs),
                      parity=not args.no_parity, quiet=args.quiet, workspace_gib=args.workspace_gib,
                      attention=args.attention)
    report = Builder(source, opts, args.out, cfg).run()
    if args.weights is not None:
        memo.save()
    print(summary(report))
    print(f"report: {args.out / 'build_report.json'}")
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    created = not args.out.exists()
    try:
        check_paths(args)
        with torch.no_grad():
            report = run(args)
    except EngineError as err:
        if created:  # a failed first build leaves nothing behind (an existing cache is kept)
            shutil.rmtree(args.out, ignore_errors=True)
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
