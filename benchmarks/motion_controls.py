"""Motion smoothing and motion controls measured on keypoints (no diffusion): the bundled driving clips
through the tiny preset's motion extractor, then the motion stage's keypoint maths.

    python -m benchmarks.motion_controls [--frames 100] [--out benchmarks/results/motion_controls.json]

1. Smoothing: Gaussian jitter is added to every driving keypoint parameter (pose angles, translation,
   expression, scale; sigma = ``--jitter`` x the parameter's median frame-to-frame change on the clip),
   then the causal smoother runs at several strengths. Reported per strength: the frame-to-frame
   variation of the driving keypoints x_d (mean |x_d[t] - x_d[t-1]|) for the clean, jittered and
   smoothed motion, the RMS error to the clean x_d, and the lag in frames (the shift of the clean x_d
   that best matches the smoothed clean x_d).
2. Controls: per control, statistics of x_d's parts against the source's: head rotation away from the
   source (degrees), translation and zoom change, expression change (all rows, eye rows, lip rows).

The tiny preset's weights are random: its keypoints move with the video but are not a face's. The
numbers show what each control does to the keypoints, not how a face looks.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import torch

from engine.api import EngineOptions, Reenactor
from engine.config.controls import EYE_KEYPOINTS, LIP_KEYPOINTS, SMOOTHED, MotionControls
from engine.diffusion import conditioning
from engine.io import read_video
from engine.models.liveportrait.keypoints import KeypointInfo
from engine.models.liveportrait.motion_branch import to_model_input
from engine.models.liveportrait.motion_controls import MotionSmoother, controlled_motion

REPO = Path(__file__).resolve().parents[1]
MEDIA = REPO.parent / "shared" / "media"
CLIPS = [REPO / "engine" / "assets" / "driving.mp4", *(MEDIA / f"driving{i}.mp4" for i in range(1, 6))]
STRENGTHS = (0.0, 0.25, 0.5, 0.75)
CONTROLS = {
    "default": MotionControls(),
    "expression_scale 0.5": MotionControls(expression_scale=0.5),
    "expression_scale 2": MotionControls(expression_scale=2.0),
    "lock_expression": MotionControls(lock_expression=True),
    "pose_scale 0.5": MotionControls(pose_scale=0.5),
    "pose_scale 2": MotionControls(pose_scale=2.0),
    "lock_pose": MotionControls(lock_pose=True),
    "eyes source": MotionControls(eyes="source"),
    "lips source": MotionControls(lips="source"),
    "smooth 0.5": MotionControls(smooth=0.5),
}


def driving_info(engine: Reenactor, clip: Path, frames: int) -> KeypointInfo:
    video = read_video(clip, 256, max_frames=frames).frames
    with torch.no_grad():
        images = to_model_input(conditioning.to_pm1(video))
        infos = [engine.stages.source.keypoints(images[i : i + 1]) for i in range(len(images))]
    return KeypointInfo(**{f.name: torch.cat([getattr(i, f.name) for i in infos]) for f in fields(KeypointInfo)})


def motion(src, info: KeypointInfo, controls: MotionControls):
    rotation = info.rotation()
    return controlled_motion(src.info, src.rotation, info, rotation, info[0], rotation[:1], controls)


def variation(x: torch.Tensor) -> float:
    return float((x[1:] - x[:-1]).abs().mean())


def smoothing(src, clean: KeypointInfo, jitter: float, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    noisy = {}
    for name in SMOOTHED:
        v = getattr(clean, name)
        sigma = jitter * float((v[1:] - v[:-1]).abs().median())
        noisy[name] = v + sigma * torch.randn(v.shape, generator=g)
    noisy_info = replace(clean, **noisy)
    x_clean = motion(src, clean, MotionControls()).x_d
    rows = []
    for s in STRENGTHS:
        x_s = motion(src, MotionSmoother(s)(noisy_info), MotionControls()).x_d
        x_cs = motion(src, MotionSmoother(s)(clean), MotionControls()).x_d
        n = x_clean.shape[0]
        err = [float((x_cs[k:] - x_clean[: n - k]).pow(2).mean()) for k in range(10)]
        rows.append({"smooth": s, "variation_clean": variation(x_clean), "variation_jittered": variation(
            motion(src, noisy_info, MotionControls()).x_d), "variation_smoothed": variation(x_s),
            "rms_error_to_clean": math.sqrt(float((x_s - x_clean).pow(2).mean())), "lag_frames": int(np.argmin(err))})
    return rows


def angle_degrees(rot: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    rel = rot @ ref.transpose(1, 2)
    cos = ((rel.diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2).clamp(-1, 1)
    return torch.rad2deg(torch.acos(cos))


def control_stats(src, info: KeypointInfo) -> dict[str, dict[str, float]]:
    out = {}
    t_s = torch.cat([src.info.t[:, :2], torch.zeros(1, 1)], 1)
    for name, c in CONTROLS.items():
        kp = motion(src, MotionSmoother(c.smooth)(info), c)
        d = (kp.delta - src.info.exp).abs()
        out[name] = {
            "rotation_from_source_deg": float(angle_degrees(kp.rotation, src.rotation).mean()),
            "translation_change": float((kp.t - t_s).norm(dim=1).mean()),
            "zoom_change": float((kp.scale / src.info.scale - 1).abs().mean()),
            "expression_change": float(d.mean()),
            "eye_rows_change": float(d[:, list(EYE_KEYPOINTS)].mean()),
            "lip_rows_change": float(d[:, list(LIP_KEYPOINTS)].mean()),
            "x_d_variation": variation(kp.x_d),
        }
    return out


def mean_rows(rows_per_clip: list[list[dict]]) -> list[dict]:
    return [{k: (float(np.mean([rows[i][k] for rows in rows_per_clip])) if k != "smooth" else rows_per_clip[0][i][k])
             for k in rows_per_clip[0][i]} for i in range(len(rows_per_clip[0]))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=100)
    p.add_argument("--jitter", type=float, default=1.0)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "motion_controls.json")
    args = p.parse_args()
    torch.set_grad_enabled(False)
    engine = Reenactor.from_preset("tiny", EngineOptions(size=64))
    src = engine.set_source(REPO / "engine" / "assets" / "source.png").features.motion
    clips = [c for c in CLIPS if c.is_file()]
    smooth_rows, stats = [], []
    for i, clip in enumerate(clips):
        info = driving_info(engine, clip, args.frames)
        smooth_rows.append(smoothing(src, info, args.jitter, seed=i))
        stats.append(control_stats(src, info))
        print(f"{clip.name}: {info.batch_size} frames")
    controls = {name: {k: float(np.mean([s[name][k] for s in stats])) for k in stats[0][name]} for name in CONTROLS}
    result = {"clips": [c.name for c in clips], "frames_per_clip": args.frames, "jitter": args.jitter,
              "smoothing": mean_rows(smooth_rows), "controls": controls,
              "note": "tiny preset (random weights): keypoint statistics, not faces; means over the clips"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".partial")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(args.out)
    for row in result["smoothing"]:
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
    for name, row in controls.items():
        print(name, {k: round(v, 4) for k, v in row.items()})


if __name__ == "__main__":
    main()
