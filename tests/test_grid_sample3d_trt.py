"""TensorRT plugin frvd::GridSample3D: pure-Python rules, and registration glue without TensorRT.

TensorRT cannot be installed here, so registration is exercised against a stand-in
``tensorrt.plugin`` module that records the decorated functions; the real API is only
mimicked, not verified.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from needs import missing

from engine.kernels import grid_sample as ops

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def plugin() -> types.ModuleType:
    # A fresh copy of the installed module per test keeps its "registered" flag from leaking between tests.
    spec = importlib.util.find_spec("engine.kernels.trt_plugin")
    assert spec is not None and spec.origin is not None
    spec = importlib.util.spec_from_file_location("frvd_trt_plugin", spec.origin)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_attribute_parsing(plugin: types.ModuleType) -> None:
    attrs = plugin.parse_attributes(b"linear", b"reflection\x00", 1)
    assert attrs == plugin.GridSampleAttrs(mode=0, padding=2, align_corners=1)
    assert plugin.parse_attributes("bilinear", "zeros", False) == plugin.GridSampleAttrs(0, 0, 0)
    assert plugin.parse_attributes("NEAREST", "border", True) == plugin.GridSampleAttrs(1, 1, 1)
    with pytest.raises(ValueError, match="mode"):
        plugin.parse_attributes("cubic", "zeros", 0)
    with pytest.raises(ValueError, match="padding_mode"):
        plugin.parse_attributes("linear", "wrap", 0)
    with pytest.raises(ValueError, match="align_corners"):
        plugin.parse_attributes("linear", "zeros", 2)


def test_codes_match_the_c_abi_table_used_by_engine_ops(plugin: types.ModuleType) -> None:
    for name, code in ops.MODE_CODES.items():
        assert plugin.MODE_CODES[name] == code
    assert plugin.PADDING_CODES == ops.PADDING_CODES
    assert plugin.dtype_code("FLOAT") == ops.DTYPE_CODES[ops.torch.float32]
    assert plugin.dtype_code("DataType.HALF") == ops.DTYPE_CODES[ops.torch.float16]
    with pytest.raises(ValueError, match="FP32 or FP16"):
        plugin.dtype_code("BF16")


def test_shape_inference(plugin: types.ModuleType) -> None:
    assert plugin.infer_output_shape((1, 32, 16, 64, 64), (1, 16, 64, 64, 3)) == (1, 32, 16, 64, 64)
    assert plugin.infer_output_shape((22, 4, 16, 64, 64), (22, 8, 9, 10, 3)) == (22, 4, 8, 9, 10)
    assert plugin.infer_output_shape((-1, 4, 16, 64, 64), (5, 8, 9, 10, 3)) == (5, 4, 8, 9, 10)
    with pytest.raises(ValueError, match="5-D"):
        plugin.infer_output_shape((1, 4, 64, 64), (1, 8, 9, 10, 3))
    with pytest.raises(ValueError, match="grid"):
        plugin.infer_output_shape((1, 4, 16, 64, 64), (1, 8, 9, 10, 2))
    with pytest.raises(ValueError, match="batch"):
        plugin.infer_output_shape((2, 4, 16, 64, 64), (3, 8, 9, 10, 3))


def test_type_and_format_rules(plugin: types.ModuleType) -> None:
    assert plugin.supports_combination(["FP32"] * 3, ["LINEAR"] * 3)
    assert plugin.supports_combination(["fp16"] * 3, ["linear"] * 3)
    assert not plugin.supports_combination(["FP32", "FP16", "FP32"], ["LINEAR"] * 3)  # one type for all
    assert not plugin.supports_combination(["INT8"] * 3, ["LINEAR"] * 3)
    assert not plugin.supports_combination(["FP16"] * 3, ["LINEAR", "CHW32", "LINEAR"])
    assert plugin.IO_TYPES == "FP32|FP16,FP32|FP16,FP32|FP16" and plugin.IO_LAYOUTS == "LINEAR"


def test_launch_arguments(plugin: types.ModuleType) -> None:
    attrs = plugin.GridSampleAttrs(1, 2, 1)
    args = plugin.launch_arguments((22, 4, 16, 64, 64), (22, 8, 9, 10, 3), attrs, 1)
    assert args == (22, 4, 16, 64, 64, 8, 9, 10, 1, 1, 2, 1)
    with pytest.raises(ValueError, match="concrete"):
        plugin.launch_arguments((-1, 4, 16, 64, 64), (-1, 8, 9, 10, 3), attrs, 0)


def test_register_without_tensorrt_is_one_clear_error(
    plugin: types.ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` fail
    with pytest.raises(plugin.TensorRTUnavailableError, match="tensorrt Python package") as err:
        plugin.register()
    assert "form='decomposed'" in str(err.value)


class _FakeDesc:
    def __init__(self, shape: tuple[int, ...], dtype: str = "FLOAT") -> None:
        self.shape_expr = shape
        self.dtype = types.SimpleNamespace(name=dtype)


class _FakeTensor:
    def __init__(self, shape: tuple[int, ...], dtype: str = "FLOAT") -> None:
        self.shape, self.data_ptr = shape, 0
        self.dtype = types.SimpleNamespace(name=dtype)


def _fake_tensorrt(
    registry: dict[str, dict[str, Callable[..., Any]]],
) -> tuple[types.ModuleType, types.ModuleType]:
    trtp = types.ModuleType("tensorrt.plugin")

    def decorator(kind: str) -> Callable[[str], Callable[[Callable[..., Any]], Callable[..., Any]]]:
        def with_id(plugin_id: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
            def record(fn: Callable[..., Any]) -> Callable[..., Any]:
                registry.setdefault(plugin_id, {})[kind] = fn
                return fn

            return record

        return with_id

    trtp.register, trtp.autotune, trtp.impl = decorator("register"), decorator("autotune"), decorator("impl")
    trtp.TensorDesc = _FakeDesc
    trtp.from_shape_expr = lambda shape, dtype: ("desc", tuple(shape), dtype.name)
    trtp.AutoTuneCombination = lambda io_types, layouts: (io_types, layouts)
    trt = types.ModuleType("tensorrt")
    trt.plugin = trtp
    return trt, trtp


def test_registration_glue_with_a_stand_in_tensorrt(
    plugin: types.ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry: dict[str, dict[str, Callable[..., Any]]] = {}
    trt, trtp = _fake_tensorrt(registry)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "tensorrt.plugin", trtp)
    plugin.register()
    plugin.register()  # idempotent
    fns = registry[plugin.PLUGIN_ID]
    assert set(fns) == {"register", "autotune", "impl"}

    inp, grid = _FakeDesc((1, 32, 16, 64, 64)), _FakeDesc((1, 8, 9, 10, 3))
    assert fns["register"](inp, grid, "linear", "zeros", 0) == ("desc", (1, 32, 8, 9, 10), "FLOAT")
    with pytest.raises(ValueError, match="mode"):
        fns["register"](inp, grid, "cubic", "zeros", 0)
    assert fns["autotune"](inp, grid, ()) == [(plugin.IO_TYPES, plugin.IO_LAYOUTS)]

    if ops.load_kernel_library(required=False) is None:
        missing("libfrvd_kernels.so is not built: the enqueue path cannot be exercised")
    # Null device pointers: the C ABI rejects the call before any launch, so the enqueue
    # path (argument order and count across ctypes) runs end to end without a GPU.
    outputs = (_FakeTensor((1, 32, 8, 9, 10)),)
    with pytest.raises(ops.KernelLibraryError, match="null data pointer|without CUDA"):
        fns["impl"](
            _FakeTensor(inp.shape_expr), _FakeTensor(grid.shape_expr), "linear", "zeros", 0, outputs, 0
        )
