"""The GPU audit's defects (issue 17), each checked where a CPU can check it: SDPA sliced above the CUDA
batch limit, TF32 off for float32 convolutions, the VAE kept in float32, onnxruntime's silent CPU
fallback refused, fast-mode graphs opened when built, and TensorRT extras that pick one CUDA major."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomllib
import torch
import torch.nn.functional as F

from engine.api import EngineOptions, Reenactor, set_tf32
from engine.backends.artifacts import graphs_to_open
from engine.backends.base import BackendError
from engine.errors import InputError
from engine.graphs.modules import GRAPH_NAMES
from engine.models import block_ops

REPO = Path(__file__).resolve().parents[1]


def test_sliced_attention_equals_one_call() -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(7, 2, 14, 8, generator=g) for _ in range(3))
    whole = F.scaled_dot_product_attention(q, k, v)
    for per in (1, 3, 7):
        torch.testing.assert_close(block_ops.sliced_attention(q, k, v, per), whole, rtol=0, atol=1e-6)
    assert block_ops.SDPA_MAX_BATCH == 65_535  # the grid-dimension limit the CUDA kernels hit
    torch.testing.assert_close(block_ops.attention(q, k, v), whole, rtol=0, atol=0)  # CPU: one call


def test_float32_cuda_runs_turn_tf32_off_for_convolutions_too() -> None:
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = True  # cuDNN's default: float32 convolutions on TF32
        set_tf32(False)
        assert torch.backends.cudnn.allow_tf32 is False and torch.backends.cuda.matmul.allow_tf32 is False
        set_tf32(True)
        assert torch.backends.cudnn.allow_tf32 is True and torch.backends.cuda.matmul.allow_tf32 is True
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_vae_fp32_keeps_the_vae_in_float32_in_a_half_precision_run() -> None:
    with Reenactor.from_preset("tiny", EngineOptions(dtype="bfloat16", vae_fp32=True)) as engine:
        runners = engine.backend.runners
        assert runners["vae_decoder"].dtype == runners["vae_encoder"].dtype == torch.float32
        assert runners["denoiser"].dtype == torch.bfloat16
        spec = runners["vae_decoder"].spec
        feeds = {k: v.to(torch.bfloat16) for k, v in spec.sample_inputs("min").items()}
        out = engine.backend.run("vae_decoder", **feeds)
        assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in out.values())
    with pytest.raises(InputError, match="torch backend only"):
        EngineOptions(backend="onnxruntime", engines=Path("x"), vae_fp32=True).check()


def test_a_gpu_provider_that_did_not_start_is_an_error() -> None:
    from engine.backends.ort_backend import check_providers

    check_providers(["CUDAExecutionProvider", "CPUExecutionProvider"],
                    ["CUDAExecutionProvider", "CPUExecutionProvider"], Path("m.onnx"))
    check_providers(["CPUExecutionProvider"], ["CPUExecutionProvider"], Path("m.onnx"))
    with pytest.raises(BackendError, match="could not start CUDAExecutionProvider"):
        check_providers(["CUDAExecutionProvider", "CPUExecutionProvider"], ["CPUExecutionProvider"], Path("m.onnx"))
    with pytest.raises(BackendError, match="TensorrtExecutionProvider"):
        check_providers(["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
                        ["CUDAExecutionProvider", "CPUExecutionProvider"], Path("m.onnx"))


def test_backends_open_the_fast_mode_graphs_a_folder_holds(tmp_path: Path) -> None:
    assert graphs_to_open(tmp_path, ["onnx-fp32"]) == list(GRAPH_NAMES)
    for graph in ("wfm_cond", "unet_cond"):
        (tmp_path / graph / "onnx-fp32").mkdir(parents=True)
        (tmp_path / graph / "onnx-fp32" / "meta.json").write_text("{}")
    (tmp_path / "wfm" / "onnx-fp16").mkdir(parents=True)  # another kind: not opened for fp32
    (tmp_path / "wfm" / "onnx-fp16" / "meta.json").write_text("{}")
    assert graphs_to_open(tmp_path, ["onnx-fp32"]) == [*GRAPH_NAMES, "wfm_cond", "unet_cond"]


def test_trt_extras_pick_one_cuda_major() -> None:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "trt" not in extras  # the bare metapackage resolves to CUDA 13 wheels whatever the driver
    for major in (12, 13):
        pins = extras[f"trt-cu{major}"]
        assert any(p.startswith(f"tensorrt-cu{major}>=") for p in pins), pins
        assert any(p.startswith("cuda-python>=") and f"<{major + 1}" in p for p in pins), pins
        assert not any(p.startswith("tensorrt>") or p.startswith("tensorrt=") for p in pins), pins
