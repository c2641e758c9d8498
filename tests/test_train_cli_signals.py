"""engine.train as a user runs it: a real SIGTERM to ``python -m engine.train`` leaves a complete checkpoint
at the step it reached (exit 130) that the next run resumes from, and ``--align opencv`` crops the face of
each clip (a clip without a face is skipped and said so)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from engine.io.video import read_video, write_video
from engine.train import checkpoint as ckpt
from engine.train.data import ClipDataset, center_crop_box, scan

REPO = Path(__file__).resolve().parents[1]
CLIPS = REPO / "engine" / "assets"
RUN_ARGS = ["--preset", "tiny", "--size", "64", "--frames", "2", "--workers", "0", "--threads", "1"]


def _logged_steps(log: Path) -> list[int]:
    if not log.is_file():
        return []
    return [json.loads(line)["step"] for line in log.read_text().splitlines() if line.strip()]


def test_sigterm_saves_a_checkpoint_and_the_next_run_resumes_from_it(tmp_path: Path) -> None:
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "engine.train", "--data", str(CLIPS), "--out", str(run), *RUN_ARGS,
           "--log-every", "1", "--checkpoint-every", "1000"]
    proc = subprocess.Popen([*cmd, "--steps", "1000"], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not _logged_steps(run / "log.jsonl") and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "stopped" in out and "Traceback" not in err
    saved = ckpt.checkpoints(run)
    assert len(saved) == 1
    step, folder = saved[0]
    assert 1 <= step < 1000 and step >= max(_logged_steps(run / "log.jsonl"))
    assert sorted(p.name for p in folder.iterdir()) == ["head_embedder.pth", "state.pt", "warping_feature_mapper.pth"]
    assert torch.load(folder / "state.pt", weights_only=False)["step"] == step
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no half-written folder

    done = subprocess.run([*cmd, "--steps", str(step + 1)], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"steps {step}->{step + 1}" in done.stdout  # resumed where the signal stopped it
    assert [s for s, _ in ckpt.checkpoints(run)][-1] == step + 1


def test_align_crops_each_clip_to_its_face_and_skips_a_clip_without_one(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    face = data / "face.mp4"
    clip = read_video(CLIPS / "driving.mp4", 256, max_frames=8)
    write_video(face, clip.frames, clip.rate)
    noise = np.random.default_rng(0).integers(0, 256, (8, 256, 256, 3), dtype=np.uint8)
    write_video(data / "noise.mp4", noise, 25)

    report = scan(data, frames=2, align="opencv")
    assert [c.path.name for c in report.clips] == ["face.mp4"]
    assert [Path(p).name for p in report.skipped["no face"]] == ["noise.mp4"]
    crop = report.clips[0].crop
    assert crop is not None and len(crop) == 6

    aligned = ClipDataset(report.clips, frames=2, size=64)[0]["pixel_values_vid"]
    plain = ClipDataset([scan(data, frames=2).clips[0]], frames=2, size=64)[0]["pixel_values_vid"]
    assert aligned.shape == plain.shape == (2, 3, 64, 64)
    assert aligned.min() >= -1 and aligned.max() <= 1
    # the face crop is not the release's centre crop of the whole frame (the clip is 256 x 256: that is all of it)
    assert center_crop_box(256, 256) == (0, 0, 256, 256)
    assert (aligned - plain).abs().mean() > 0.05
