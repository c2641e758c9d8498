"""The reenact CLI end to end on the tiny preset, and every way a user's input can be wrong."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from engine.cli import reenact
from engine.io import write_video

REPO = Path(__file__).resolve().parents[1]
FAST = ["--steps", "1", "--quiet"]


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="2")
    return subprocess.run(
        [sys.executable, "-m", "engine.cli.reenact", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def probe(path: Path) -> tuple[int, float, str, bool, tuple[int, int]]:
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frames = sum(1 for _ in c.decode(v))
        return frames, float(v.average_rate), v.codec_context.name, bool(c.streams.audio), (v.width, v.height)


def make_clip(path: Path, frames: int, size: tuple[int, int] = (96, 96), fps: int = 25) -> Path:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 255, (frames, size[1], size[0], 3), dtype=np.uint8)
    write_video(path, data, fps)
    return path


def test_default_demo_writes_playable_h264_with_driving_frames_and_fps(tmp_path: Path) -> None:
    out = tmp_path / "demo.mp4"
    res = run_cli("--out", str(out), "--steps", "2", "--quiet")
    assert res.returncode == 0, res.stderr
    frames, fps, codec, _, size = probe(out)
    d_frames, d_fps, _, _, _ = probe(reenact.DEFAULT_DRIVING)
    assert (frames, codec, size) == (d_frames, "h264", (128, 128))
    assert fps == pytest.approx(d_fps)
    assert "reenact:" in res.stdout and " s/frame" in res.stdout  # the timing line
    cfg = json.loads(out.with_suffix(".json").read_text())
    assert cfg["engine"]["model"]["name"] == "tiny" and cfg["run"]["steps"] == 2


def test_stream_flag_runs_the_file_through_the_live_path(tmp_path: Path) -> None:
    out = tmp_path / "live.mp4"
    res = run_cli("--out", str(out), "--stream", "--max-frames", "20", *FAST)
    assert res.returncode == 0, res.stderr
    assert probe(out)[0] == 20 and "streamed (first frame" in res.stdout
    assert json.loads(out.with_suffix(".json").read_text())["run"]["steps"] == 1


@pytest.mark.parametrize("n", [1, 5])
def test_clips_shorter_than_a_window(tmp_path: Path, n: int) -> None:
    clip = make_clip(tmp_path / "short.mp4", n, size=(101, 77))  # odd size too
    out = tmp_path / "out.mp4"
    assert reenact.main(["--driving", str(clip), "--out", str(out), *FAST]) == 0
    assert probe(out)[0] == n


def test_audio_is_copied_and_side_by_side(tmp_path: Path, media_dir: Path) -> None:
    out = tmp_path / "audio.mp4"
    args = ["--driving", str(media_dir / "driving.mp4"), "--max-frames", "14", "--side-by-side", "--size", "64"]
    assert reenact.main([*args, "--out", str(out), *FAST]) == 0
    frames, _, _, has_audio, size = probe(out)
    assert frames == 14 and has_audio and size == (3 * 64, 64)


def test_same_seed_same_video_other_seed_differs() -> None:
    from engine.api import Reenactor, RunOptions
    from engine.io import read_video

    r = Reenactor.from_preset("tiny")
    frames = read_video(reenact.DEFAULT_DRIVING, 128, max_frames=14).frames
    src = r.set_source(reenact.DEFAULT_SOURCE)
    a = r.render(src, frames, options=RunOptions(steps=1, seed=3)).frames
    b = r.render(src, frames, options=RunOptions(steps=1, seed=3)).frames
    c = r.render(src, frames, options=RunOptions(steps=1, seed=4)).frames
    assert np.array_equal(a, b) and not np.array_equal(a, c)


# ------------------------------------------------------------------------------------ bad input


def assert_clean_failure(argv: list[str], out: Path, capsys, *needles: str) -> str:
    code = reenact.main([*argv, "--out", str(out), *FAST])
    err = capsys.readouterr().err
    assert code != 0
    assert err.startswith("error: ") and "Traceback" not in err and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err
    assert not out.exists()
    assert not [p for p in out.parent.glob("*") if p.name.startswith(out.stem) and p != out]
    return err


def test_missing_source(tmp_path: Path, capsys) -> None:
    assert_clean_failure(["--source", str(tmp_path / "nope.png")], tmp_path / "o.mp4", capsys, "nope.png")


def test_source_not_an_image(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "text.png"
    bad.write_text("hello")
    assert_clean_failure(["--source", str(bad)], tmp_path / "o.mp4", capsys, "text.png")


def test_source_too_small(tmp_path: Path, capsys) -> None:
    small = tmp_path / "small.png"
    Image.new("RGB", (8, 8)).save(small)
    assert_clean_failure(["--source", str(small)], tmp_path / "o.mp4", capsys, "small.png")


def test_corrupt_and_empty_videos(tmp_path: Path, capsys) -> None:
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(os.urandom(4096))
    assert_clean_failure(["--driving", str(corrupt)], tmp_path / "o.mp4", capsys, "corrupt.mp4")
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    assert_clean_failure(["--driving", str(empty)], tmp_path / "o.mp4", capsys, "empty.mp4")


def test_unwritable_output(tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = reenact.main(["--out", str(blocker / "sub" / "o.mp4"), *FAST])
    err = capsys.readouterr().err
    assert code != 0 and err.startswith("error: ") and "Traceback" not in err


def test_weights_folder_missing_a_file(tmp_path: Path, capsys) -> None:
    from engine.models.weights import LAYOUT

    for wf in LAYOUT[1:]:
        (tmp_path / wf.candidates[0]).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / wf.candidates[0]).write_bytes(b"")
    assert_clean_failure(
        ["--preset", "official", "--weights", str(tmp_path)],
        tmp_path / "o.mp4",
        capsys,
        "appearance_feature_extractor.pth",
    )


@pytest.mark.parametrize("defect", ["missing", "shape"])
def test_checkpoint_with_missing_key_or_wrong_shape(tmp_path: Path, capsys, defect: str) -> None:
    from engine.config.presets import official
    from engine.models.weights import LAYOUT, expected_from_manifest

    weights = tmp_path / "pretrained_weights"
    for wf in LAYOUT:
        (weights / wf.candidates[0]).parent.mkdir(parents=True, exist_ok=True)
        (weights / wf.candidates[0]).write_bytes(b"")
    expected = expected_from_manifest(LAYOUT[0].manifest)
    sd = {k: torch.zeros(s) for k, s in expected.items()}
    key = "first.conv.weight"
    if defect == "missing":
        del sd[key]
    else:
        sd[key] = torch.zeros(1, 2, 3)
    torch.save(sd, weights / LAYOUT[0].candidates[0])
    assert official().name == "official"
    err = assert_clean_failure(["--preset", "official", "--weights", str(weights)], tmp_path / "o.mp4", capsys)
    assert "appearance_feature_extractor.pth" in err and key in err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_and_sigterm_leave_no_output(tmp_path: Path, sig: int) -> None:
    out = tmp_path / "interrupted.mp4"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        # one window at 64 px: the signal lands in the denoising loop sooner (pixels do not matter here)
        [sys.executable, "-m", "engine.cli.reenact", "--out", str(out), "--steps", "25", "--max-frames", "14",
         "--size", "64", "--progress", "plain"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:  # wait until the run is inside the denoising loop: no clock involved
        lines.append(line)
        if line.startswith("denoise "):
            break
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    err = "".join(lines) + err
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_size_must_suit_the_unet(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        reenact.main(["--size", "96"])
    assert exc.value.code == 2 and "multiple of 64" in capsys.readouterr().err


# ------------------------------------------------------------------ the families of bad options


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--max-frames", "0"], "--max-frames"),
        (["--seed", str(2**64)], "--seed"),
        (["--seed", "-1"], "--seed"),
        (["--guidance", "nan"], "--guidance"),
        (["--guidance", "inf"], "--guidance"),
        (["--steps", "0"], "--steps"),
        (["--size", "100"], "multiple of 64"),
        (["--paste-back"], "--align"),
        (["--face-index", "-1"], "--face-index"),
    ],
)
def test_bad_option_values_are_one_error_line(tmp_path: Path, capsys, argv: list[str], needle: str) -> None:
    out = tmp_path / "o.mp4"
    with pytest.raises(SystemExit) as exc:
        reenact.main([*argv, "--out", str(out)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1 and needle in err, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("device", "needle"), [("bogus", "not a device"), ("cuda", "CUDA")])
def test_unusable_devices(tmp_path: Path, capsys, device: str, needle: str) -> None:
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert_clean_failure(["--device", device], tmp_path / "o.mp4", capsys, needle)


def test_output_that_would_overwrite_an_input_is_refused(tmp_path: Path, capsys) -> None:
    clip = make_clip(tmp_path / "clip.mp4", 3)
    code = reenact.main(["--driving", str(clip), "--out", str(clip), *FAST])
    err = capsys.readouterr().err
    assert code == 2 and "--driving" in err and probe(clip)[0] == 3


def test_a_folder_where_the_sidecar_goes_leaves_nothing(tmp_path: Path, capsys) -> None:
    (tmp_path / "result.json").mkdir()
    out = tmp_path / "result.mp4"
    code = reenact.main(["--out", str(out), *FAST])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "result.json" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_inputs_are_checked_before_any_network_is_built(tmp_path: Path, capsys, monkeypatch) -> None:
    from engine.models import networks
    built = []
    monkeypatch.setattr(networks, "load_preset", lambda *a, **k: built.append(a) or pytest.fail("built"))
    assert_clean_failure(["--source", str(tmp_path / "missing.png")], tmp_path / "o.mp4", capsys, "missing.png")
    assert_clean_failure(["--driving", str(tmp_path / "missing.mp4")], tmp_path / "o.mp4", capsys, "missing.mp4")
    flat = tmp_path / "flat.png"
    Image.new("RGB", (256, 256), (128, 128, 128)).save(flat)
    assert_clean_failure(["--source", str(flat), "--align", "opencv"], tmp_path / "o.mp4", capsys, "face")
    assert built == []
    assert not (tmp_path / "o.json").exists()


def test_align_and_paste_back_write_the_source_size(tmp_path: Path, media_dir: Path) -> None:
    out = tmp_path / "pasted.mp4"
    argv = ["--source", str(media_dir / "source2.png"), "--max-frames", "3", "--align", "opencv", "--paste-back"]
    assert reenact.main([*argv, "--out", str(out), *FAST]) == 0
    with Image.open(media_dir / "source2.png") as img:
        size = img.size
    assert probe(out)[0] == 3 and probe(out)[4] == size
