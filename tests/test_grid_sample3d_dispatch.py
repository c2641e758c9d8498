"""engine.kernels.grid_sample.grid_sample3d: implementation choice, library loading and fallbacks."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from needs import missing

import engine.kernels.decomposed
from engine.kernels import grid_sample as ops

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated_state(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(ops.IMPL_ENV, raising=False)
    ops.set_grid_sample_impl(None)
    ops._reset_kernel_library()
    yield
    ops.set_grid_sample_impl(None)
    ops._reset_kernel_library()


@pytest.fixture()
def built_library() -> Path:
    path = next((p for p in ops.kernel_library_candidates() if p.is_file()), None)
    if path is None:
        missing("libfrvd_kernels.so is not built (run scripts/build_kernels.sh)")
    return path


@pytest.fixture()
def no_library(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    missing = tmp_path / "nowhere" / ops.LIB_NAME
    monkeypatch.setenv(ops.LIB_ENV, str(missing))
    ops._reset_kernel_library()
    return missing


def _data(seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((2, 3, 4, 5, 6), generator=gen, dtype=dtype)
    g = torch.rand((2, 3, 4, 2, 3), generator=gen, dtype=dtype) * 2.4 - 1.2
    return x, g


class _Spy:
    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn, self.calls = fn, 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.fn(*args, **kwargs)


def test_default_candidates_are_build_dir_then_package_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ops.LIB_ENV, raising=False)
    expected = [REPO / "build" / ops.LIB_NAME, REPO / "engine" / "kernels" / ops.LIB_NAME]
    assert ops.kernel_library_candidates() == expected


def test_env_override_accepts_a_folder(monkeypatch: pytest.MonkeyPatch, built_library: Path) -> None:
    monkeypatch.setenv(ops.LIB_ENV, str(built_library.parent))
    ops._reset_kernel_library()
    assert ops.kernel_library_candidates() == [built_library]
    assert ops.kernel_library_available()


def test_impl_choice_setter_context_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ops.get_grid_sample_impl() == "auto"
    monkeypatch.setenv(ops.IMPL_ENV, "Decomposed")
    assert ops.get_grid_sample_impl() == "decomposed"
    ops.set_grid_sample_impl("torch")
    assert ops.get_grid_sample_impl() == "torch"  # the setter beats the environment
    with ops.grid_sample_impl("kernel"):
        assert ops.get_grid_sample_impl() == "kernel"
    assert ops.get_grid_sample_impl() == "torch"
    with pytest.raises(ValueError, match="must be one of"):
        ops.set_grid_sample_impl("fast")
    ops.set_grid_sample_impl(None)
    monkeypatch.setenv(ops.IMPL_ENV, "fast")
    with pytest.raises(ValueError, match="must be one of"):
        ops.get_grid_sample_impl()


def test_torch_and_decomposed_impls_are_what_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    x, g = _data()
    torch_spy = _Spy(F.grid_sample)
    monkeypatch.setattr(torch.nn.functional, "grid_sample", torch_spy)
    dec_spy = _Spy(engine.kernels.decomposed.grid_sample3d_decomposed)
    monkeypatch.setattr(engine.kernels.decomposed, "grid_sample3d_decomposed", dec_spy)
    ref = torch_spy.fn(x, g, align_corners=False)

    ops.set_grid_sample_impl("torch")
    torch.testing.assert_close(ops.grid_sample3d(x, g), ref, atol=0, rtol=0)
    assert (torch_spy.calls, dec_spy.calls) == (1, 0)

    monkeypatch.setenv(ops.IMPL_ENV, "decomposed")
    ops.set_grid_sample_impl(None)
    torch.testing.assert_close(ops.grid_sample3d(x, g), ref, atol=1e-5, rtol=1e-5)
    assert (torch_spy.calls, dec_spy.calls) == (1, 1)


def test_auto_uses_the_kernel_when_built(monkeypatch: pytest.MonkeyPatch, built_library: Path) -> None:
    spy = _Spy(ops.run_cpu_kernel)
    monkeypatch.setattr(ops, "run_cpu_kernel", spy)
    x, g = _data()
    out = ops.grid_sample3d(x, g, "nearest", "reflection", True)
    assert spy.calls == 1
    ref = F.grid_sample(x, g, mode="nearest", padding_mode="reflection", align_corners=True)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_auto_falls_back_and_warns_once_without_library(
    no_library: Path, caplog: pytest.LogCaptureFixture
) -> None:
    x, g = _data()
    with caplog.at_level(logging.WARNING, logger="engine.kernels.grid_sample"):
        first = ops.grid_sample3d(x, g, padding_mode="border")
        second = ops.grid_sample3d(x, g, padding_mode="border")
    ref = F.grid_sample(x, g, padding_mode="border", align_corners=False)
    torch.testing.assert_close(first, ref, atol=0, rtol=0)
    torch.testing.assert_close(second, ref, atol=0, rtol=0)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "torch.nn.functional.grid_sample" in warnings[0].getMessage()
    assert str(no_library) in warnings[0].getMessage()


def test_explicit_kernel_without_library_is_a_clear_error(no_library: Path) -> None:
    x, g = _data()
    with ops.grid_sample_impl("kernel"), pytest.raises(ops.KernelLibraryError) as err:
        ops.grid_sample3d(x, g)
    message = str(err.value)
    assert str(no_library) in message and "scripts/build_kernels.sh" in message
    with pytest.raises(ops.KernelLibraryError):
        ops.load_kernel_library(required=True)
    assert ops.load_kernel_library(required=False) is None


def test_cases_the_kernel_does_not_serve_go_to_torch(built_library: Path) -> None:
    # float64, 4-D input and autograd keep torch's exact behaviour even with "kernel" chosen.
    with ops.grid_sample_impl("kernel"):
        x64, g64 = _data(1, torch.float64)
        out = ops.grid_sample3d(x64, g64)
        assert out.dtype == torch.float64
        torch.testing.assert_close(out, F.grid_sample(x64, g64, align_corners=False), atol=0, rtol=0)

        x4, g4 = torch.randn(1, 2, 5, 6), torch.rand(1, 3, 4, 2) * 2 - 1
        torch.testing.assert_close(ops.grid_sample3d(x4, g4), F.grid_sample(x4, g4, align_corners=False))

        x, g = _data(2)
        x.requires_grad_(True)
        ops.grid_sample3d(x, g).sum().backward()
        x_ref = x.detach().clone().requires_grad_(True)
        F.grid_sample(x_ref, g, align_corners=False).sum().backward()
        torch.testing.assert_close(x.grad, x_ref.grad)


def test_export_records_the_op_without_a_built_library(no_library: Path) -> None:
    class Warp(torch.nn.Module):
        def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
            return ops.grid_sample3d(x, g, "bilinear", "zeros", False)

    with ops.grid_sample_impl("kernel"):
        program = torch.export.export(Warp(), _data())
    targets = [n.target for n in program.graph.nodes if n.op == "call_function"]
    assert torch.ops.frvd.grid_sample3d.default in targets


def test_decomposed_impl_keeps_torch_semantics_for_4d_input() -> None:
    x4, g4 = torch.randn(1, 2, 5, 6), torch.rand(1, 3, 4, 2) * 2 - 1
    with ops.grid_sample_impl("decomposed"):
        out = ops.grid_sample3d(x4, g4, padding_mode="reflection")
    torch.testing.assert_close(out, F.grid_sample(x4, g4, padding_mode="reflection", align_corners=False))


def test_decomposition_rejects_bad_arguments() -> None:
    x, g = _data()
    with pytest.raises(ValueError, match="mode"):
        engine.kernels.decomposed.grid_sample3d_decomposed(x, g, mode="bicubic")
    with pytest.raises(ValueError, match="padding_mode"):
        engine.kernels.decomposed.grid_sample3d_decomposed(x, g, padding_mode="circular")
    with pytest.raises(ValueError, match="batch"):
        engine.kernels.decomposed.grid_sample3d_decomposed(x, g[:1])
