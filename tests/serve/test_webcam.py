"""``python -m engine.webcam`` with a video file standing in for the camera: in process and through
the server, the result written, bad inputs one clear line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from serve_support import DRIVING, REPO, Server

from engine.cli import webcam


def _frames(path: Path) -> int:
    with av.open(str(path)) as v:
        return sum(1 for _ in v.decode(video=0))


def test_webcam_in_process_on_a_file(tmp_path: Path) -> None:
    # as a command: `python -m engine.webcam` sets its OpenMP policy before torch loads, which this
    # test process (torch already imported) could not do
    out = tmp_path / "live.mp4"
    cmd = [sys.executable, "-m", "engine.cli.webcam", "--camera", str(DRIVING), "--max-frames", "12", "--size", "64",
           "--out", str(out)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    line = done.stdout.strip()
    assert done.returncode == 0 and line.startswith("webcam: 12 frames") and "[in-process]" in line, done.stderr
    assert _frames(out) == 12


def test_webcam_through_the_server(server: Server, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "remote.mp4"
    rc = webcam.main(["--camera", str(DRIVING), "--max-frames", "10", "--server", f"ws://127.0.0.1:{server.port}",
                      "--out", str(out)])
    line = capsys.readouterr().out
    assert rc == 0 and line.startswith("webcam: 10 frames") and "ws://127.0.0.1" in line, line
    assert _frames(out) == 10


def test_webcam_bad_inputs_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert webcam.main(["--camera", str(tmp_path / "none.mp4")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert webcam.main(["--camera", str(DRIVING), "--show"]) == 2  # this OpenCV is headless
    assert "--show needs" in capsys.readouterr().err
    assert webcam.main(["--camera", str(DRIVING), "--server", "ws://127.0.0.1:9"]) == 2
    assert "cannot connect" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_overlay_writes_fps_and_latency() -> None:
    frame = np.full((128, 128, 3), 90, np.uint8)
    shown = webcam.overlay(frame, 12.5, 0.25)
    assert shown.shape == frame.shape and (shown != frame[..., ::-1]).any()
    assert (frame == 90).all()  # the result frame itself is untouched
