"""GPU-path defects checked on CPU: plugin registration from another directory, NUL-terminated
plugin attributes, and a CUDA kernel that cannot launch (missing / too-old driver)."""

from __future__ import annotations

import ctypes
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from needs import missing

from engine.kernels import grid_sample as ops

REPO = Path(__file__).resolve().parents[1]

# A stand-in for tensorrt + tensorrt.plugin whose registry refuses a second registration of one
# plugin id, as TensorRT's does.
FAKE_TRT = {
    "tensorrt/__init__.py": textwrap.dedent("""
        __version__ = "10.9.0"
        REGISTERED = []

        class _Registry:
            def get_creator(self, name, version, namespace=""):
                return object() if f"{namespace}::{name}" in REGISTERED else None

        def get_plugin_registry():
            return _Registry()
    """),
    "tensorrt/plugin.py": textwrap.dedent("""
        import tensorrt

        def register(plugin_id):
            def wrap(fn):
                if plugin_id in tensorrt.REGISTERED:
                    raise RuntimeError(f"plugin {plugin_id} is already registered")
                tensorrt.REGISTERED.append(plugin_id)
                return fn
            return wrap

        def autotune(plugin_id):
            return lambda fn: fn

        def impl(plugin_id):
            return lambda fn: fn

        TensorDesc = object
    """),
}


def test_plugin_registers_twice_from_another_directory(tmp_path: Path) -> None:
    for rel, text in FAKE_TRT.items():
        (tmp_path / "fake" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "fake" / rel).write_text(text)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = textwrap.dedent("""
        import importlib.util, sys
        import engine.kernels.trt_plugin as plugin
        assert "/engine/kernels/" in plugin.__file__.replace("\\\\", "/"), plugin.__file__
        from engine.backends.trt_runtime import register_plugin
        import tensorrt
        register_plugin()
        register_plugin()  # build then parity in one engine.cli.build call
        print("registered", tensorrt.REGISTERED)
    """)
    env = {"PYTHONPATH": str(tmp_path / "fake"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", script], cwd=elsewhere, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "registered ['frvd::GridSample3D']" in done.stdout


def _plugin_module():
    from engine.kernels import trt_plugin

    return trt_plugin


@pytest.mark.parametrize("mode", ["linear\x00", b"linear\x00", "bilinear\x00\x00", bytearray(b"linear\x00")])
def test_plugin_accepts_nul_terminated_attributes(mode: object) -> None:
    trt_plugin = _plugin_module()
    attrs = trt_plugin.parse_attributes(mode, "border\x00", 1)
    assert (attrs.mode, attrs.padding, attrs.align_corners) == (0, 1, 1)
    import numpy as np

    assert trt_plugin.parse_attributes(np.frombuffer(b"nearest\x00", np.uint8), b"zeros\x00", 0).mode == 1


# ------------------------------------------------------------------------- CUDA driver problems


class _FakeLib:
    """ctypes-like library whose CUDA probe answers as grid_sample3d_cuda.cu's ``cuda_check`` would for the
    given versions (only an older driver MAJOR is refused by version) and probe-launch error."""

    def __init__(self, runtime: int, driver: int, devices: int, launch_error: int = 0) -> None:
        self.values = (runtime, driver, devices)
        self.launch_error = launch_error

    def frvd_kernels_has_cuda(self) -> int:
        return 1

    def frvd_cuda_check(self, runtime, driver, devices) -> int:  # noqa: ANN001 - ctypes byrefs
        for ref, value in zip((runtime, driver, devices), self.values):
            ctypes.cast(ref, ctypes.POINTER(ctypes.c_int))[0] = value
        ok = self.values[2] > 0 and self.values[1] // 1000 >= self.values[0] // 1000
        if not ok:
            return ops.FRVD_ERR_CUDA
        return ops.CUDA_PROBE_BASE + self.launch_error if self.launch_error else 0


@pytest.fixture()
def fake_library(monkeypatch: pytest.MonkeyPatch):
    ops._reset_kernel_library()
    ops.set_grid_sample_impl(None)

    def install(lib: object) -> None:
        monkeypatch.setattr(ops, "_lib", lib)
        monkeypatch.setattr(ops, "_lib_loaded", True)

    yield install
    ops.set_grid_sample_impl(None)
    ops._reset_kernel_library()


def test_probe_names_a_too_old_driver(fake_library) -> None:
    fake_library(_FakeLib(runtime=13000, driver=12040, devices=1))
    problem = ops.cuda_kernel_problem()
    assert problem is not None and "CUDA 13.0" in problem and "12.4" in problem and "580" in problem


def test_probe_accepts_an_older_minor_of_the_same_major(fake_library) -> None:
    """CUDA minor-version compatibility: a 12.8-built library runs on a 550 driver (CUDA 12.4)."""
    fake_library(_FakeLib(runtime=12080, driver=12040, devices=1))
    assert ops.cuda_kernel_problem() is None


@pytest.mark.parametrize(("error", "words"), [(209, "no machine code for this GPU"), (222, "PTX is newer")])
def test_a_failed_probe_launch_is_named(fake_library, error: int, words: str) -> None:
    fake_library(_FakeLib(runtime=12080, driver=12040, devices=1, launch_error=error))
    problem = ops.cuda_kernel_problem() or ""
    assert f"cudaError {error}" in problem and words in problem


def test_probe_accepts_a_recent_driver(fake_library) -> None:
    fake_library(_FakeLib(runtime=13000, driver=13010, devices=1))
    assert ops.cuda_kernel_problem() is None


def test_probe_reports_no_device(fake_library) -> None:
    fake_library(_FakeLib(runtime=13000, driver=13000, devices=0))
    assert "no CUDA device" in (ops.cuda_kernel_problem() or "")


def _failing_launch(*args: object) -> torch.Tensor:
    raise ops.KernelLibraryError("frvd_grid_sample3d failed with status 7: CUDA launch failed", status=7)


def test_auto_falls_back_once_when_launches_fail(fake_library, monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    fake_library(_FakeLib(runtime=13000, driver=13000, devices=1))
    monkeypatch.setattr(ops, "_call_kernel", _failing_launch)
    x, grid = torch.randn(1, 2, 3, 4, 5), torch.rand(1, 2, 2, 2, 3) * 2 - 1
    with caplog.at_level(logging.WARNING, logger="engine.kernels.grid_sample"):
        for _ in range(3):
            out = ops.grid_sample3d(x, grid, align_corners=True)
    torch.testing.assert_close(out, F.grid_sample(x, grid, align_corners=True))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "status 7" in warnings[0].getMessage()


def test_kernel_mode_gives_one_clear_error(fake_library, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_library(_FakeLib(runtime=13000, driver=13000, devices=1))
    monkeypatch.setattr(ops, "_call_kernel", _failing_launch)
    ops.set_grid_sample_impl("kernel")
    with pytest.raises(ops.KernelLibraryError, match="status 7"):
        ops.grid_sample3d(torch.randn(1, 2, 3, 4, 5), torch.rand(1, 2, 2, 2, 3))


def test_built_library_exports_the_probe() -> None:
    lib = ops.load_kernel_library(required=False)
    if lib is None:
        missing("libfrvd_kernels.so is not built")
    if not hasattr(lib, "frvd_cuda_check"):
        missing("libfrvd_kernels.so predates frvd_cuda_check: rebuild with scripts/build_kernels.sh")
    runtime, driver, devices = ctypes.c_int(-1), ctypes.c_int(-1), ctypes.c_int(-1)
    status = lib.frvd_cuda_check(ctypes.byref(runtime), ctypes.byref(driver), ctypes.byref(devices))
    if not torch.cuda.is_available():  # here: no GPU, so never OK
        assert status in (ops.FRVD_ERR_CUDA, ops.FRVD_ERR_NO_CUDA) and devices.value == 0


# ------------------------------------------------------------------------- TensorRT-friendly resize


@pytest.mark.parametrize(("size", "side"), [(64, 32), (64, 48), (64, 40), (60, 7), (32, 48)])
def test_trunk_resize_matches_torch_antialias(size: int, side: int) -> None:
    from engine.graphs.modules import fit_trunk_to_latents

    x = torch.randn(3, 5, size, size)
    ref = F.interpolate(x, size=(side, side), mode="bilinear", antialias=size > side)
    torch.testing.assert_close(fit_trunk_to_latents(x, side), ref, rtol=0, atol=2e-5)


def test_trunk_resize_exports_without_antialiased_resize(tmp_path: Path) -> None:
    import onnx

    from engine.graphs.modules import fit_trunk_to_latents

    class Fit(torch.nn.Module):
        def forward(self, trunk: torch.Tensor) -> torch.Tensor:
            return fit_trunk_to_latents(trunk, 40)

    program = torch.onnx.export(Fit(), (torch.randn(2, 4, 64, 64),), dynamo=True, optimize=False, verbose=False)
    program.save(str(tmp_path / "fit.onnx"))
    model = onnx.load(str(tmp_path / "fit.onnx"))
    resizes = [n for n in model.graph.node if n.op_type == "Resize"]
    assert not any(a.name == "antialias" and a.i for n in resizes for a in n.attribute)
