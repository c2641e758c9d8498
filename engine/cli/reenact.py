"""``python -m engine.reenact``: animate a source portrait with a driving clip.

With no arguments it runs the embedded default: the tiny preset on the bundled media. A thin CLI
over ``engine.api.Reenactor``: exact mode (the release's algorithm) by default, ``--stream`` runs the
file through the causal live path instead. Writes OUT.mp4 and OUT.json (the resolved configuration).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path

import torch

from engine.api import EngineOptions, set_tf32
from engine.cli.args import Parser, add_knob_arguments, existing_dir, knob_values, positive_int
from engine.cli.progress import PROGRESS_MODES, make_progress
from engine.config import presets
from engine.config.controls import MotionControls
from engine.config.modes import MODES, RunConfig, RunOptions
from engine.config.presets import PRESETS
from engine.errors import EngineError, InputError
from engine.face.align import METHODS as ALIGN_METHODS

ASSETS = Path(__file__).resolve().parents[1] / "assets"
DEFAULT_SOURCE = ASSETS / "source.png"
DEFAULT_DRIVING = ASSETS / "driving.mp4"


def face_selection(text: str) -> str | int | tuple[int, ...]:
    from engine.face.several import parse_faces

    try:
        return parse_faces(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = Parser(prog="python -m engine.reenact", description=__doc__,
               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="source portrait image")
    p.add_argument("--driving", type=Path, default=DEFAULT_DRIVING, help="driving video")
    p.add_argument("--out", type=Path, default=Path("outputs/reenact.mp4"),
                   help="output .mp4; OUT.json beside it records the resolved configuration")
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--weights", type=Path, default=None, help="the release's pretrained_weights/ folder")
    p.add_argument("--mode", choices=sorted(MODES), default="exact",
                   help="exact = the release; fast <= 56, turbo <= 18, ultra <= 3.3 TFLOP/frame at 512^2 "
                        "(docs/modes.md; ultra needs --student and --tiny-decoder); every run knob given "
                        "explicitly overrides the mode's value")
    # the run's knobs and the engine's options, each declared once (engine.config.modes.RunConfig,
    # engine.api.EngineOptions): flags, types, limits and help come from there
    add_knob_arguments(p.add_argument_group("run knobs (default: the mode's value)"), RunConfig,
                       default_is="the mode's")
    add_knob_arguments(p.add_argument_group("motion controls (docs/controls.md)"), MotionControls)
    add_knob_arguments(p.add_argument_group("engine"), EngineOptions)
    p.add_argument("--max-frames", type=positive_int, default=None, help="use only the first N driving frames")
    p.add_argument("--absolute-motion", action="store_true", help="self-reenactment: absolute driving motion")
    p.add_argument("--side-by-side", action="store_true", help="write source | driving | result")
    p.add_argument("--align", choices=["none", *ALIGN_METHODS], default="none",
                   help="source face crop: none = centre crop; auto = the release's facecropper models from "
                        "--weights when present, else OpenCV")
    p.add_argument("--face-index", type=face_selection, default=None,
                   help="with --align: which face when there are several (0 = the largest); 'all' or a list "
                        "(0,1) reenacts each of them and pastes them all back into one video of the photo")
    p.add_argument("--paste-back", action="store_true",
                   help="with --align: paste each result frame back into the whole source image")
    p.add_argument("--stream", action="store_true",
                   help="run the clip through the causal live path (frames emitted as windows finish)")
    p.add_argument("--tf32", action="store_true",
                   help="float32 on a CUDA GPU: allow TF32 tensor cores (a setting of this process: torch's flags)")
    p.add_argument("--progress", choices=PROGRESS_MODES, default="auto",
                   help="bars on a terminal, plain lines otherwise (auto), or none")
    p.add_argument("--quiet", action="store_true", help="same as --progress none")
    args = p.parse_args(argv)
    if args.absolute_motion:
        args.relative_motion = False  # the declaration's True, off by this flag's name
    # the run's options, checked here (a bad value: exit 2 before any network); the engine resolves them
    # once (on an engine carrying a student, fast and turbo take its knobs), runs and records the result
    try:
        args.run = RunOptions(args.mode, **knob_values(args, RunConfig), **knob_values(args, MotionControls))
        args.run.check()
        args.engine_options = EngineOptions(**knob_values(args, EngineOptions))
        args.engine_options.check()
    except InputError as err:
        p.error(str(err))
    if several_faces(args):
        if args.align == "none":
            p.error("--face-index all (or a list) needs --align auto|insightface|opencv (each face is cropped)")
        if args.stream or args.side_by_side:
            p.error("several faces render offline, without --side-by-side (drop --stream / --side-by-side)")
    if args.paste_back and args.align == "none":
        p.error("--paste-back needs --align auto|insightface|opencv (a face crop to paste back)")
    if args.engine_options.backend == "torch":  # exported graphs carry their weights
        try:
            presets.require_weights(args.preset, args.weights)
        except InputError as err:
            p.error(str(err))
    return args


def several_faces(args: argparse.Namespace) -> bool:
    return args.face_index is not None and not isinstance(args.face_index, int)


def check_inputs(args: argparse.Namespace, size: int) -> None:
    """Every path and option checked before any network is built or weight read."""
    from engine.io import check_output_path, load_image, probe_video, read_rgb

    try:
        device = torch.device(args.engine_options.device)
    except RuntimeError:
        raise InputError(f"--device {args.engine_options.device!r} is not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(
            f"--device {args.engine_options.device}: this torch ({torch.__version__}) has no usable CUDA; "
            "install a CUDA build (see README, 'On a GPU') or use --device cpu"
        )
    load_image(args.source, size)
    if several_faces(args):  # no face, or an index beyond those found: known before any network is built
        from engine.face.align import detect_faces
        from engine.face.several import select_faces

        select_faces(len(detect_faces(read_rgb(args.source), args.align, args.weights)), args.face_index)
    elif args.align != "none":  # no face, or several: known before any network is built
        from engine.face.align import crop_transform

        crop_transform(read_rgb(args.source), args.align, args.face_index, args.weights)
    probe_video(args.driving)
    if args.weights is not None:
        existing_dir(args.weights, "--weights", "release's pretrained_weights/ folder")
    out = args.out.expanduser().resolve()
    for what, path in (("--driving", args.driving), ("--source", args.source)):
        if path.expanduser().resolve() == out:
            raise InputError(f"--out '{args.out}' is the {what} file; choose another output path")
    if args.out.with_suffix(".json").is_dir():
        raise InputError(f"'{args.out.with_suffix('.json')}' is a directory; the run's configuration goes there")
    check_output_path(args.out)


def run(args: argparse.Namespace) -> str:
    from engine.api import Reenactor
    from engine.models import networks

    start = time.perf_counter()
    model, _ = networks.preset_configs(args.preset, args.weights if args.preset == "official" else None)
    check_inputs(args, args.engine_options.size or model.image_size)
    if torch.device(args.engine_options.device).type == "cuda":
        set_tf32(args.tf32)  # process-wide torch flags: set once, by the process that owns them
    engine = Reenactor.from_preset(args.preset, args.engine_options, weights=args.weights)
    options = run_cfg = engine.run_config(args.run)  # resolved once, checked against this engine
    progress = make_progress("none" if args.quiet else args.progress)
    load_s = time.perf_counter() - start
    summary: tuple[str, dict[str, float], int]
    try:
        with engine:
            if several_faces(args):
                from engine.runtime import RunControl

                faces = engine.render_faces(args.source, args.driving, args.out, faces=args.face_index,
                                            align=args.align, options=options,
                                            control=RunControl(progress=progress), max_frames=args.max_frames)
                summary = (f"{faces.num_frames} frames x {len(faces.faces)} faces", {}, faces.num_frames)
            else:
                summary = _run_one(engine, args, options, progress)
    finally:
        progress.close()
    return _summary(args, engine, run_cfg, summary, start, load_s)


def _run_one(engine, args: argparse.Namespace, options, progress) -> tuple[str, dict[str, float], int]:
    """One face (or the centre crop): offline or through the stream."""
    source = engine.set_source(args.source, args.align, args.face_index)
    if source.note:
        print(f"note: {source.note}", file=sys.stderr)
    summary: tuple[str, dict[str, float], int]
    if args.stream:
        summary = _run_stream(engine, source, args, options, progress)
    else:
        from engine.runtime import RunControl

        result = engine.render(source, args.driving, args.out, options=options,
                               control=RunControl(progress=progress), max_frames=args.max_frames,
                               side_by_side_with_inputs=args.side_by_side, paste_back=args.paste_back)
        sec = result.seconds
        summary = (f"{result.num_frames} frames", sec, result.num_frames)
    return summary


def _summary(args: argparse.Namespace, engine, run_cfg, summary, start: float, load_s: float) -> str:
    label, sec, n = summary
    total = time.perf_counter() - start
    backend = "" if args.engine_options.backend == "torch" else f"{args.engine_options.backend}, "
    mode = f"{args.mode}{', stream' if args.stream else ''}"
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in sec.items() if k != "total")
    return (
        f"reenact: {label} {engine.size}x{engine.size} [{args.preset}, {backend}{mode}, "
        f"{run_cfg.sampler} {run_cfg.steps} steps] in {total:.1f} s = "
        f"{total / max(n, 1):.2f} s/frame (load {load_s:.1f} s, {stages}) -> {args.out}"
    )


def _run_stream(engine, source, args, options, progress) -> tuple[str, dict[str, float], int]:
    """The file through the live path: a reader thread pushes frames, results go to the writer."""
    import numpy as np

    from engine.api import _write_with_sidecar, compose
    from engine.io import iter_video_frames, probe_video
    from engine.runtime import RunControl, StageTimer

    info = probe_video(args.driving)
    control = RunControl(progress=progress)
    latencies: list[float] = []
    total = info.frame_count or 0
    with engine.stream(source, options, control) as stream:

        def feed() -> None:
            try:
                for frame in iter_video_frames(args.driving, engine.size, args.max_frames):
                    stream.push(frame)
                stream.end()
            except BaseException:  # noqa: BLE001 - the results loop reports the stream's error
                control.cancel()

        reader = threading.Thread(target=feed, name="frvd-reader", daemon=True)
        reader.start()

        def results():
            for out in stream.results():
                latencies.append(out.latency)
                progress("stream", out.index + 1, max(total, out.index + 1))
                yield out.frame
            control.check()

        drive = iter_video_frames(args.driving, engine.size, args.max_frames) if args.side_by_side else None
        frames = compose(results(), source, drive, args.paste_back)

        timer = StageTimer()
        _write_with_sidecar(args.out, frames, info.rate, args.driving if info.has_audio else None,
                            engine.sidecar(options), timer)
        reader.join()
        sec = dict(stream.stage_seconds(), **timer.seconds)
    n = len(latencies)
    lat = np.array(latencies) if latencies else np.zeros(1)
    label = (f"{n} frames streamed (first frame {lat[0]:.2f} s, p50 {np.median(lat):.2f} s, "
             f"lookahead {stream.lookahead} frames)")
    return label, sec, n


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    on_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _sigterm) if on_main else None
    try:
        with torch.no_grad():  # a context, not set_grad_enabled(False): in-process callers keep their mode
            print(run(args))
    except EngineError as err:
        if err.exit_code == 130:
            print("interrupted: no output was written", file=sys.stderr)
        else:
            print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted: no output was written", file=sys.stderr)
        return 130
    except MemoryError:
        print("error: out of memory; try a smaller --size or --max-frames", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


def _sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up like Ctrl-C: temporary files removed, exit 130


if __name__ == "__main__":
    sys.exit(main())
