"""The backend interface: torch and onnxruntime graphs keyed by the spec's names, shape and name
checks, artifacts refused for another model, and TensorRT absent -> one clear error."""

from __future__ import annotations

import importlib
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from engine.backends import BackendError, create_backend, trt_runtime
from engine.backends.ort_backend import OrtBackend
from engine.backends.torch_backend import TorchBackend
from engine.config import presets
from engine.config.settings import EngineConfig, WindowConfig
from engine.graphs.modules import GraphOptions, build_specs
from engine.models.networks import build_tiny
from export import trt_build

REPO = Path(__file__).resolve().parents[1]
TRT_ABSENT = importlib.util.find_spec("tensorrt") is None


@pytest.fixture(scope="module")
def specs():
    return build_specs(presets.tiny(), GraphOptions(image_size=128))


@pytest.fixture(scope="module")
def torch_backend(specs) -> TorchBackend:
    return TorchBackend(build_tiny(presets.tiny(), 0, "release"), specs)


def test_torch_backend_outputs_are_keyed_by_spec_names(torch_backend, specs) -> None:
    for name, spec in specs.items():
        feeds = spec.sample_inputs("min")
        out = torch_backend[name].run(feeds)
        assert list(out) == spec.output_names
        assert {k: tuple(v.shape) for k, v in out.items()} == spec.output_shapes(spec.dim_values("min"))


def test_feeds_must_carry_exactly_the_spec_names(torch_backend) -> None:
    with pytest.raises(BackendError, match="missing \\['kp_driving'\\]"):
        torch_backend.run("warp", feature_volume=torch.zeros(1, 16, 4, 16, 16), kp_source=torch.zeros(1, 21, 3))
    with pytest.raises(BackendError, match="no graph 'unet'"):
        torch_backend["unet"]


def test_onnxruntime_graph_checks_shapes_and_writes_preallocated_outputs(tiny_engines, specs) -> None:
    engines, _ = tiny_engines
    backend = OrtBackend(engines, graphs=["motion", "vae_decoder"], device="cpu")
    assert backend.max_dim("motion", "frames") == 16 and backend.fixed_dim("motion", "frames") is None
    out = backend.run("motion", images=torch.rand(3, 3, 256, 256))
    assert list(out) == specs["motion"].output_names and out["exp"].shape == (3, 21, 3)
    assert all(t.is_contiguous() and t.device.type == "cpu" for t in out.values())
    with pytest.raises(BackendError, match="outside the built range"):
        backend.run("vae_decoder", latents=torch.zeros(9, 4, 16, 16))
    with pytest.raises(BackendError, match="axis 2 must be 16"):
        backend.run("vae_decoder", latents=torch.zeros(1, 4, 8, 8))


def test_engines_for_another_resolution_are_refused(tiny_engines) -> None:
    engines, _ = tiny_engines
    cfg = EngineConfig(model=presets.tiny(), size=128)
    create_backend("onnxruntime", cfg, engines=engines)  # the build's own shape: accepted
    with pytest.raises(BackendError, match="image size 128.*needs image size 64"):
        create_backend("onnxruntime", replace(cfg, size=64), engines=engines)
    with pytest.raises(BackendError, match="window 14"):
        create_backend("onnxruntime", replace(cfg, windows=WindowConfig(size=10)), engines=engines)


def test_onnxruntime_needs_an_engines_folder(tmp_path: Path) -> None:
    cfg = EngineConfig(model=presets.tiny(), size=128)
    with pytest.raises(BackendError, match="needs --engines"):
        create_backend("onnxruntime", cfg)
    with pytest.raises(BackendError, match="no usable appearance graph.*not built yet"):
        create_backend("onnxruntime", cfg, engines=tmp_path)


# ------------------------------------------------------------------------------ TensorRT


def test_tensorrt_modules_import_without_tensorrt() -> None:
    code = ("import sys, engine.backends.trt_backend, export.trt_build, export.build; "
            "print('tensorrt' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False"


@pytest.mark.skipif(not TRT_ABSENT, reason="TensorRT is installed here")
def test_tensorrt_absent_is_one_clear_error(tmp_path: Path, capsys) -> None:
    cfg = EngineConfig(model=presets.tiny(), size=128)
    with pytest.raises(trt_runtime.TensorRTUnavailable) as info:
        create_backend("tensorrt", cfg, engines=tmp_path)
    assert str(info.value) == trt_runtime.INSTALL_HINT
    assert "TensorRT is not installed" in str(info.value) and "--backend onnxruntime" in str(info.value)

    from engine.cli.build import main as build_main

    code = build_main(["--preset", "tiny", "--target", "trt", "--out", str(tmp_path / "e"), "--quiet"])
    assert code == 2 and capsys.readouterr().err.strip() == f"error: {trt_runtime.INSTALL_HINT}"
    assert not (tmp_path / "e" / "denoiser").exists()  # it failed before exporting anything


@pytest.mark.skipif(not TRT_ABSENT, reason="TensorRT is installed here")
def test_reenact_cli_with_tensorrt_absent(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "engine.reenact", "--backend", "tensorrt", "--engines", str(tmp_path),
                          "--out", str(tmp_path / "o.mp4"), "--quiet"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and res.stderr.strip() == f"error: {trt_runtime.INSTALL_HINT}"


def test_tensorrt_profile_and_key_are_plain_data(specs) -> None:
    rows = trt_build.profile_shapes(specs["denoiser"])
    sample = next(r for r in rows if r[0] == "sample")
    assert sample[1:] == ((2, 14, 8, 16, 16), (2, 14, 8, 16, 16), (8, 14, 8, 16, 16))
    assert [r[0] for r in rows] == specs["denoiser"].input_names
    warp = build_specs(presets.tiny(), GraphOptions(image_size=128, grid_sample="custom"))["warp"]
    assert trt_runtime.needs_plugin(warp) and not trt_runtime.needs_plugin(specs["warp"])
    assert trt_runtime.engine_precision(warp, "fp16") == "fp32"  # LivePortrait stays float32
    assert trt_runtime.engine_precision(specs["denoiser"], "fp16") == "fp16"
    key = trt_build.key_inputs(specs["denoiser"], "onnxkey", "fp16")
    assert key["onnx"] == "onnxkey" and key["precision"] == "fp16" and key["plugin"] is False
    assert {"tensorrt", "gpu", "profile"} <= set(key)
    if TRT_ABSENT:
        assert key["tensorrt"] == "absent"
    other = trt_build.key_inputs(specs["denoiser"], "onnxkey", "fp32")
    assert other["precision"] == "fp32" and other != key
