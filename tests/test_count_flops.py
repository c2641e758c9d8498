"""The meta-device FLOP cost model (benchmarks/count_flops.py): structure on tiny, magnitude on official."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from engine.config import modes
from engine.config.settings import WindowConfig
from engine.diffusion.windows import window_indices

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "count_flops.py"


def _load() -> ModuleType:
    # benchmarks/ is a folder of scripts, not a package: import the file itself
    spec = importlib.util.spec_from_file_location("count_flops", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


cf = _load()

FRAMES, STEPS = 30, 3


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    path = tmp_path_factory.mktemp("flops") / "tiny.json"
    assert cf.main(["--preset", "tiny", "--frames", str(FRAMES), "--steps", str(STEPS), "--json", str(path)]) == 0
    return json.loads(path.read_text()), path


def test_json_written_and_complete(tiny_report: tuple[dict[str, Any], Path]) -> None:
    report, path = tiny_report
    assert path.is_file()
    for key in ("networks", "per_window_step", "per_video", "per_frame", "share", "floor_seconds", "release_reported"):
        assert key in report
    # networks a mode never calls are left out (exact: no conditional-only calls, the full VAE decoder)
    assert set(cf.UNITS) - set(report["networks"]) == {"wfm_cond", "unet_cond", "tiny_decoder"}


def test_every_network_has_flops(tiny_report: tuple[dict[str, Any], Path]) -> None:
    report, _ = tiny_report
    for name, net in report["networks"].items():
        assert net["flops_per_call"] > 0, name
        assert net["calls_per_video"] > 0, name


def test_window_step_is_wfm_plus_unet(tiny_report: tuple[dict[str, Any], Path]) -> None:
    report, _ = tiny_report
    step, nets = report["per_window_step"], report["networks"]
    assert step["wfm"] == nets["wfm"]["flops_per_call"]
    assert step["unet"] == nets["unet"]["flops_per_call"]
    assert step["total"] == step["wfm"] + step["unet"]


def test_full_attention_counted_and_inside_wfm(tiny_report: tuple[dict[str, Any], Path]) -> None:
    report, _ = tiny_report
    fa, wfm = report["wfm_full_attention"], report["networks"]["wfm"]["flops_per_call"]
    # the counter must have seen the attention ops themselves, and they must match 4*B*heads*Lq*Lk*d
    assert fa["method"] == "counted"
    assert fa["counted_sdpa_flops_per_call"] == fa["analytic_sdpa_flops_per_call"] > 0
    assert 0 < fa["sdpa_flops_per_call"] < fa["modules_flops_per_call"] < wfm
    # one full attention per cross-attention down layer (3 blocks x 2) plus the mid block's
    assert len(fa["layers"]) == 7
    tokens = {layer["tokens"] for layer in fa["layers"]}
    latent = report["latent_size"]
    assert max(tokens) == report["windows"]["size"] * latent * latent  # all frames x all pixels at full res


def test_video_total_is_sum_of_parts(tiny_report: tuple[dict[str, Any], Path]) -> None:
    report, _ = tiny_report
    nets = report["networks"]
    parts = sum(n["flops_per_call"] * n["calls_per_video"] for n in nets.values())
    assert report["per_video"] == parts
    assert report["per_frame"] == pytest.approx(parts / FRAMES)
    assert sum(report["share"].values()) == pytest.approx(1.0)
    windows = len(window_indices(FRAMES, 14, 6))
    assert nets["wfm"]["calls_per_video"] == nets["unet"]["calls_per_video"] == windows * STEPS
    assert report["per_window_step"]["total"] * windows * STEPS < report["per_video"]


def test_floors_scale_with_rate(tiny_report: tuple[dict[str, Any], Path]) -> None:
    report, _ = tiny_report
    for gpu, floor in report["floor_seconds"].items():
        assert floor["per_video"] == pytest.approx(report["per_video"] / (cf.GPUS[gpu]["tflops"] * 1e12))
    rel = report["release_reported"]
    assert rel["implied_utilisation"] == pytest.approx(rel["floor_seconds_per_100_frames"] / 240.0)


def test_calls_pad_short_clips() -> None:
    calls = cf.calls_per_video(5, modes.resolve(steps=2), WindowConfig().size)
    assert calls["vae_decoder"] == calls["head_net"] == 14  # padded to one window, as the pipeline does
    assert calls["motion_extractor"] == 15  # + the source
    assert calls["wfm"] == 2


@pytest.mark.slow
def test_official_unet_magnitude() -> None:
    t0 = time.perf_counter()
    model = cf.presets.official()
    nets = cf.build_meta(model)
    measured = cf.measure(model, nets, cf.Shapes(size=512, latent=64, window=14))
    seconds = time.perf_counter() - t0
    if seconds > 60:
        pytest.skip(f"the official count took {seconds:.0f} s here (> 60 s budget); magnitudes not checked")
    per_call = measured["per_call"]
    # SVD-xt UNet on the CFG pair x 14 frames of 64x64 latents: ~1.3 TFLOP per frame-evaluation
    assert 1e12 < per_call["unet"] < 1e14
    # the WFM's full attention at the first block alone: 4 * 2 * 5 heads * (14*64*64)^2 * 64
    first = 4 * 2 * 5 * (14 * 64 * 64) ** 2 * 64
    assert measured["wfm_full_attention"]["sdpa_flops_per_call"] > 2 * first
    assert per_call["wfm"] > measured["wfm_full_attention"]["modules_flops_per_call"]
