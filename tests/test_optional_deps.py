"""The torch path needs neither PyAV nor OpenCV, and a missing optional package is one clear error.

A GPU box may carry only CUDA torch, numpy and a few pure-Python wheels (docs/gpu.md): ``engine.api`` and
``engine.gpucheck`` must import there and render arrays in, arrays out. Each case runs in a fresh
interpreter in which the packages are made unfindable (tests/hidden_imports.py) - what a machine
without them sees - before anything imports them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from engine.api import EngineOptions, Reenactor, RunOptions

REPO = Path(__file__).resolve().parents[1]


def _run_hidden(hidden: tuple[str, ...], body: str, tmp: Path) -> dict:
    """``body`` in a fresh interpreter with ``hidden`` unfindable; it fills the dict ``out`` (returned)."""
    code = (f"import json, sys\nsys.path.insert(0, {str(REPO / 'tests')!r})\nimport hidden_imports\n"
            f"hidden_imports.hide(*{hidden!r})\nimport torch\ntorch.set_num_threads({torch.get_num_threads()})\n"
            f"out = {{}}\n{body}\n"
            f"out['loaded'] = sorted(m for m in {hidden!r} if m in sys.modules)\n"
            f"open({str(tmp / 'out.json')!r}, 'w').write(json.dumps(out))\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # same thread count as this process: same sums
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((tmp / "out.json").read_text())


def _inputs(size: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return (rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
            rng.integers(0, 256, (14, size, size, 3), dtype=np.uint8))


TINY_RENDER = """
import numpy as np
import engine.api, engine.gpucheck  # both import without av / cv2
from engine.api import EngineOptions, Reenactor, RunOptions
with Reenactor.from_preset("tiny", EngineOptions()) as e:
    rng = np.random.default_rng(0)
    s = e.cfg.size
    src, drv = rng.integers(0, 256, (s, s, 3), dtype=np.uint8), rng.integers(0, 256, (14, s, s, 3), dtype=np.uint8)
    frames = e.render(src, drv, options=RunOptions(steps=2, seed=0)).frames
np.save("frames.npy", frames)
"""


def test_tiny_torch_path_without_pyav_and_opencv(tmp_path: Path) -> None:
    out = _run_hidden(("av", "cv2"), TINY_RENDER, tmp_path)
    assert out["loaded"] == []  # nothing managed to import them
    frames = np.load(tmp_path / "frames.npy")
    with Reenactor.from_preset("tiny", EngineOptions()) as engine:  # the same run with everything installed
        src, drv = _inputs(engine.cfg.size)
        ref = engine.render(src, drv, options=RunOptions(steps=2, seed=0)).frames
    assert frames.shape == ref.shape == (14, engine.cfg.size, engine.cfg.size, 3)
    np.testing.assert_array_equal(frames, ref)


MISSING = """
from engine.api import EngineOptions, Reenactor
from engine.errors import MissingDependency
from engine.io import write_video
from engine.cli import gpu_sections, gpucheck
import numpy as np
try:
    Reenactor.from_preset("tiny", EngineOptions())
except MissingDependency as err:
    out["build"] = str(err)
try:
    write_video("x.mp4", np.zeros((1, 64, 64, 3), np.uint8), 25)
except MissingDependency as err:
    out["video"] = str(err)
out["section"] = gpucheck.run_section("tiny_pipeline", gpu_sections.tiny_pipeline)
"""


def test_a_missing_package_is_one_clear_error_naming_it(tmp_path: Path) -> None:
    out = _run_hidden(("av", "cv2", "diffusers"), MISSING, tmp_path)
    assert "'diffusers'" in out["build"] and "pip install diffusers" in out["build"]
    assert "'av'" in out["video"] and "video" in out["video"]
    assert not (tmp_path / "x.mp4").exists()
    section = out["section"]
    assert section["status"] == "skipped", section
    assert "diffusers" in section["reason"]  # the missing import is named (checked before CUDA)
