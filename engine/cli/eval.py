"""``python -m engine.eval``: the paper's metrics over (source, driving, result) clips.

    python -m engine.eval --manifest clips.json --out eval/          # results already rendered
    python -m engine.eval --folder runs/ --kind cross --out eval/     # runs/*/{source.*, driving.mp4, result.mp4}
    python -m engine.eval --manifest clips.json --run --mode turbo --out eval/   # render missing results first

A manifest is JSON: ``{"clips": [{"name": ..., "source": ..., "driving": ..., "result": ..., "kind": "self" |
"cross"}]}`` with paths relative to the manifest. Self-reenactment (Table 1): L1, PSNR, SSIM, LPIPS of
the result frames vs the driving frames; cross-identity (Table 2): ID similarity to the source, POSE and
EXP distance to the driving motion. FID (frames) and FVD (16-frame segments) compare all results of a
kind with all driving clips of that kind. Writes ``out/<name>.json`` per clip and ``out/table.md``.
A metric whose network file is not given is ``skipped: needs ...``, never estimated.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.cli.args import Parser
from engine.errors import EngineError, InputError
from engine.eval import features, metrics
from engine.io import load_image, read_video

PER_CLIP = ("l1", "psnr", "ssim", "lpips", "id", "pose", "exp")
METRICS = (*PER_CLIP, "fid", "fvd")
TABLE = {"self": ("l1", "psnr", "ssim", "lpips", "fid", "fvd"), "cross": ("id", "pose", "exp", "fid", "fvd")}
ARROWS = {"l1": "↓", "psnr": "↑", "ssim": "↑", "lpips": "↓", "id": "↑", "pose": "↓", "exp": "↓", "fid": "↓", "fvd": "↓"}
LABELS = {"l1": "L1", "psnr": "PSNR", "ssim": "SSIM", "lpips": "LPIPS", "id": "ID-SIM", "pose": "POSE", "exp": "EXP",
          "fid": "FID", "fvd": "FVD"}
NEEDS = {"lpips": "--lpips-alexnet and --lpips-heads", "id": "--arcface (buffalo_l w600k_r50.onnx)",
         "fid": "--inception (ONNX feature extractor)", "fvd": "--i3d (ONNX I3D)"}


@dataclass(frozen=True)
class Clip:
    name: str
    source: Path
    driving: Path
    result: Path | None
    kind: str  # self | cross


def read_manifest(path: Path) -> list[Clip]:
    from engine.config.settings import read_json_object

    data = read_json_object(path, InputError, "manifest", 'write {"clips": [{"source": ..., "driving": ..., '
                            '"result": ..., "kind": "self"}]}')
    items = data.get("clips")
    if not isinstance(items, list) or not items:
        raise InputError(f"manifest {path} lists no clips: give at least one under \"clips\"")
    clips = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not {"source", "driving"} <= set(item):
            raise InputError(f"manifest {path}: clip {i} needs \"source\" and \"driving\" paths")
        kind = item.get("kind", "self")
        if kind not in TABLE:
            raise InputError(f"manifest {path}: clip {i} has kind {kind!r}; use \"self\" or \"cross\"")
        base = path.parent
        result = base / item["result"] if item.get("result") else None
        name = str(item.get("name", f"clip{i}"))
        clips.append(Clip(name, base / item["source"], base / item["driving"], result, kind))
    names = [c.name for c in clips]
    if len(set(names)) != len(names):
        raise InputError(f"manifest {path}: clip names must be unique (they name the JSON files)")
    return clips


def read_folder(path: Path, kind: str) -> list[Clip]:
    if not path.is_dir():
        raise InputError(f"--folder {path} is not a folder")
    clips = []
    for sub in sorted(p for p in path.iterdir() if p.is_dir()):
        sources = sorted(sub.glob("source.*"))
        if sources and (sub / "driving.mp4").exists():
            result = sub / "result.mp4"
            clips.append(Clip(sub.name, sources[0], sub / "driving.mp4", result if result.exists() else None, kind))
    if not clips:
        raise InputError(f"--folder {path} has no clip folders (each needs source.png|jpg and driving.mp4, "
                         "and result.mp4 unless --run)")
    return clips


class Evaluator:
    """Holds the optional networks; ``skipped`` maps a metric to what it needs."""

    def __init__(self, args: Any) -> None:
        self.want = set(args.metrics)
        self.skipped: dict[str, str] = {}
        self.lpips = self.arcface = self.inception = self.i3d = None
        self.motion = None
        if "lpips" in self.want:
            if args.lpips_alexnet and args.lpips_heads:
                self.lpips = features.LPIPS(args.lpips_alexnet, args.lpips_heads)
            else:
                self.skipped["lpips"] = NEEDS["lpips"]
        for name, option, make in (("id", args.arcface, features.arcface), ("fid", args.inception, features.inception),
                                   ("fvd", args.i3d, features.i3d)):
            if name not in self.want:
                continue
            if option is None:
                self.skipped[name] = NEEDS[name]
            else:
                setattr(self, {"id": "arcface", "fid": "inception", "fvd": "i3d"}[name], make(option))
        if self.want & {"pose", "exp"}:
            from engine.eval.motion import MotionMetrics

            self.motion = MotionMetrics(args.preset, args.weights)

    def clip(self, clip: Clip, result: np.ndarray, driving: np.ndarray, source: np.ndarray) -> dict[str, Any]:
        n = min(len(result), len(driving))
        result, driving = result[:n], driving[:n]
        out: dict[str, Any] = {"name": clip.name, "kind": clip.kind, "frames": n, "result": str(clip.result),
                               "driving": str(clip.driving), "source": str(clip.source)}
        if clip.kind == "self":
            for name, fn in (("l1", metrics.l1), ("psnr", metrics.psnr), ("ssim", metrics.ssim)):
                if name in self.want:
                    out[name] = float(np.mean(fn(result, driving)))
            if self.lpips is not None:
                out["lpips"] = float(np.mean(features.lpips_frames(self.lpips, result, driving)))
        if self.arcface is not None:
            e_src = features.arcface_embed(self.arcface, source[None])
            e_res = features.arcface_embed(self.arcface, result)
            out["id"] = float((e_res @ e_src[0]).mean())
        if self.motion is not None:
            out.update({k: v for k, v in self.motion(result, driving).items() if k in self.want})
        return out


def render_missing(clips: list[Clip], args: Any, out_dir: Path) -> list[Clip]:
    """Clips without a result are rendered by the engine (``--run``) into ``out/<name>.mp4``."""
    todo = [c for c in clips if c.result is None]
    if not todo:
        return clips
    if not args.run:
        raise InputError(f"clip {todo[0].name!r} has no result: give one, or --run to render it with the engine")
    from engine.api import Reenactor, RunOptions

    done = {}
    with Reenactor.from_preset(args.preset, weights=args.weights) as engine:
        for c in todo:
            path = out_dir / f"{c.name}.mp4"
            opts = RunOptions(mode=args.mode, relative_motion=c.kind == "cross")
            engine.render(c.source, c.driving, path, options=opts, max_frames=args.max_frames)
            done[c.name] = path
    return [Clip(c.name, c.source, c.driving, done.get(c.name, c.result), c.kind) for c in clips]


def fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def table(rows: list[dict[str, Any]], pooled: dict[str, dict[str, Any]], skipped: dict[str, str], note: str) -> str:
    lines = []
    for kind, title in (("self", "Self-reenactment (Table 1)"), ("cross", "Cross-identity (Table 2)")):
        kind_rows = [r for r in rows if r["kind"] == kind]
        if not kind_rows:
            continue
        cols = TABLE[kind]
        lines += [f"### {title}", "", "| clip | " + " | ".join(f"{LABELS[c]}{ARROWS[c]}" for c in cols) + " |",
                  "|---|" + "---|" * len(cols)]
        for r in [*kind_rows, {"name": "**mean**", **pooled[kind]}]:
            cells = [fmt(r[c]) if c in r else ("skipped" if c in skipped else "–") for c in cols]
            lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [f"- skipped: {m} needs {need}" for m, need in skipped.items()]
    if note:
        lines.append(f"- {note}")
    return "\n".join(lines) + "\n"


def write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(text)
    tmp.replace(path)


def evaluate(args: Any) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]], dict[str, str]]:
    clips = read_manifest(args.manifest) if args.manifest else read_folder(args.folder, args.kind)
    args.out.mkdir(parents=True, exist_ok=True)
    clips = render_missing(clips, args, args.out)
    ev = Evaluator(args)
    rows: list[dict[str, Any]] = []
    fid_sets: dict[str, tuple[list, list]] = {k: ([], []) for k in TABLE}
    fvd_sets: dict[str, tuple[list, list]] = {k: ([], []) for k in TABLE}
    for clip in clips:
        assert clip.result is not None  # render_missing rendered every clip without one
        result = read_video(clip.result, args.size, args.max_frames).frames
        driving = read_video(clip.driving, args.size, args.max_frames).frames
        source = load_image(clip.source, args.size)
        row = ev.clip(clip, result, driving, source)
        rows.append(row)
        n = row["frames"]
        if ev.inception is not None:
            fid_sets[clip.kind][0].append(features.inception_features(ev.inception, result[:n]))
            fid_sets[clip.kind][1].append(features.inception_features(ev.inception, driving[:n]))
        if ev.i3d is not None:
            fvd_sets[clip.kind][0].append(features.i3d_features(ev.i3d, result[:n]))
            fvd_sets[clip.kind][1].append(features.i3d_features(ev.i3d, driving[:n]))
        write_text(args.out / f"{clip.name}.json", json.dumps(row, indent=2))
    pooled: dict[str, dict[str, Any]] = {}
    for kind in TABLE:
        kind_rows = [r for r in rows if r["kind"] == kind]
        pooled[kind] = {m: float(np.mean([r[m] for r in kind_rows])) for m in PER_CLIP
                        if kind_rows and all(m in r for r in kind_rows)}
        for name, sets in (("fid", fid_sets[kind]), ("fvd", fvd_sets[kind])):
            a = [x for x in sets[0] if x.size]
            b = [x for x in sets[1] if x.size]
            if a and sum(len(x) for x in a) >= 2:
                pooled[kind][name] = metrics.frechet_of_features(np.concatenate(a), np.concatenate(b))
            elif kind_rows and name in ev.want and name not in ev.skipped:
                pooled[kind][name] = f"skipped: needs >= 2 {'frames' if name == 'fid' else '16-frame segments'}"
    return rows, pooled, ev.skipped


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m engine.eval", description=__doc__)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--manifest", type=Path, help="JSON list of clips (see above)")
    src.add_argument("--folder", type=Path, help="a folder of clip folders: source.*, driving.mp4, result.mp4")
    p.add_argument("--kind", choices=tuple(TABLE), default="self", help="with --folder: what the clips are")
    p.add_argument("--out", type=Path, required=True, help="folder for <clip>.json, table.md, summary.json")
    p.add_argument("--metrics", nargs="+", choices=METRICS, default=list(METRICS))
    p.add_argument("--size", type=int, default=256, help="frames are compared at size x size")
    p.add_argument("--max-frames", type=int, default=None)
    p.add_argument("--lpips-alexnet", type=Path, help="torchvision AlexNet weights (alexnet-owt-7be5be79.pth)")
    p.add_argument("--lpips-heads", type=Path, help="lpips v0.1 linear heads (alex.pth)")
    p.add_argument("--arcface", type=Path, help="buffalo_l recognition model (w600k_r50.onnx)")
    p.add_argument("--inception", type=Path, help="ONNX Inception feature extractor for FID")
    p.add_argument("--i3d", type=Path, help="ONNX I3D for FVD")
    p.add_argument("--preset", default="tiny", help="the engine whose motion extractor measures POSE/EXP (and --run)")
    p.add_argument("--weights", type=Path, default=None, help="the release's pretrained_weights/ (official preset)")
    p.add_argument("--run", action="store_true", help="render clips that have no result with the engine")
    p.add_argument("--mode", default="exact", help="with --run: the engine's mode")
    args = p.parse_args(argv)
    try:
        rows, pooled, skipped = evaluate(args)
    except (EngineError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    note = (f"POSE/EXP measured by the {args.preset} preset's motion extractor"
            + (" (seeded random weights: the numbers check the plumbing, not faces)" if args.weights is None else "")
            if {"pose", "exp"} & set(args.metrics) else "")
    text = table(rows, pooled, skipped, note)
    write_text(args.out / "table.md", text)
    write_text(args.out / "summary.json", json.dumps({"clips": rows, "mean": pooled, "skipped": skipped}, indent=2))
    for metric, need in skipped.items():
        print(f"skipped: {metric} needs {need}")
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
