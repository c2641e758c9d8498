"""The fast modes on onnxruntime: ``reenact --backend onnxruntime --mode turbo`` (and ``--mode fast``) run on
the split graphs ``engine.build`` exports (wfm_cond / unet_cond, and wfm / unet for fast's CFG steps), and
their frames match the torch backend's within the ORT tolerance (<= 1 level of 8 bits, as the exact
pipeline's ORT test allows: float results equal to ~1e-5 may round to neighbouring integers)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from engine.api import EngineOptions, Reenactor, RunOptions
from engine.cli import reenact
from engine.config import modes

# FRVD_EXPORT_MODES=turbo: turbo's two graphs (~2 min of export on 2 cores); =1: fast's two more as well
pytestmark = [pytest.mark.slow, pytest.mark.skipif(os.environ.get("FRVD_EXPORT_MODES") not in ("1", "turbo"),
                                                   reason="mode-graph export: set FRVD_EXPORT_MODES=turbo or 1")]


def _frames(backend: str, engines: Path | None, mode: str) -> np.ndarray:
    rng = np.random.default_rng(5)
    source = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
    driving = rng.integers(0, 256, (20, 128, 128, 3), dtype=np.uint8)  # two windows
    with Reenactor.from_preset("tiny", EngineOptions(backend=backend, engines=engines)) as engine:
        return engine.render(source, driving, options=RunOptions(mode=mode, seed=1)).frames


def _check_mode(mode: str, engines: Path, tmp_path: Path) -> None:
    with Reenactor.from_preset("tiny", EngineOptions(backend="onnxruntime", engines=engines)) as engine:
        needed = modes.required_graphs(engine.run_config(RunOptions(mode=mode)))
        assert set(needed) <= set(engine.backend.graphs()), needed  # the backend opened the mode's graphs
    out = tmp_path / f"{mode}.mp4"
    rc = reenact.main(["--backend", "onnxruntime", "--engines", str(engines), "--mode", mode, "--max-frames", "16",
                       "--out", str(out)])
    assert rc == 0 and out.stat().st_size > 0 and out.with_suffix(".json").is_file()
    ort, ref = _frames("onnxruntime", engines, mode), _frames("torch", None, mode)
    assert ort.shape == ref.shape == (20, 128, 128, 3)
    assert np.abs(ort.astype(np.int16) - ref.astype(np.int16)).max() <= 1


def test_turbo_on_onnxruntime_matches_torch(mode_engines: Path, tmp_path: Path) -> None:
    _check_mode("turbo", mode_engines, tmp_path)


@pytest.mark.skipif(os.environ.get("FRVD_EXPORT_MODES") != "1", reason="wfm/unet export: set FRVD_EXPORT_MODES=1")
def test_fast_on_onnxruntime_matches_torch(mode_engines: Path, tmp_path: Path) -> None:
    _check_mode("fast", mode_engines, tmp_path)
