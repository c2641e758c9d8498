"""TensorRT plugin ``frvd::GridSample3D`` over the C ABI of libfrvd_kernels.so.

Written against the Python plugin API ``tensorrt.plugin`` (TensorRT >= 10.7, IPluginV3
underneath), which needs no TensorRT C++ headers: ``register()`` declares the plugin, its
output shape, the type/format combinations it accepts and an enqueue function that hands
TensorRT's device pointers and stream to ``frvd_grid_sample3d``. ONNX models exported with
``export.grid_sample_onnx`` form="custom" carry ``plugin_namespace="frvd"``, which is how the
TensorRT ONNX parser maps the ``GridSample3D`` node onto this plugin.

Usage (before building or deserialising an engine, in the same process)::

    import sys; sys.path.insert(0, "<repo>")
    from kernels.grid_sample3d import trt_plugin
    trt_plugin.register()

Everything except ``register()`` is plain Python (attribute parsing, shape inference, dtype
and format rules) and is unit-tested without TensorRT. tensorrt is imported only inside
``register()``; without it, ``register()`` raises ``TensorRTUnavailableError``.

No ``from __future__ import annotations`` here: tensorrt.plugin reads the annotations of
the registered function as objects.
"""

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from engine.errors import EngineError

PLUGIN_NAMESPACE = "frvd"
PLUGIN_NAME = "GridSample3D"
PLUGIN_ID = f"{PLUGIN_NAMESPACE}::{PLUGIN_NAME}"

# Values of the C enums in frvd_grid_sample3d.h (engine.kernels.grid_sample holds the same table).
MODE_CODES = {"bilinear": 0, "linear": 0, "nearest": 1}
PADDING_CODES = {"zeros": 0, "border": 1, "reflection": 2}
DTYPE_CODES = {"FLOAT": 0, "FP32": 0, "FLOAT32": 0, "HALF": 1, "FP16": 1, "FLOAT16": 1}

# Input, grid and output share one type (FP32 or FP16, math in FP32); linear NCDHW only.
IO_TYPES = "FP32|FP16,FP32|FP16,FP32|FP16"
IO_LAYOUTS = "LINEAR"
SUPPORTED_DTYPES = ("FP32", "FP16")


class TensorRTUnavailableError(EngineError):
    """The tensorrt Python package (with tensorrt.plugin) cannot be imported."""


@dataclass(frozen=True)
class GridSampleAttrs:
    mode: int
    padding: int
    align_corners: int


def _text(value: Any) -> str:
    # The ONNX parser hands string attributes over as bytes, a uint8 array or str, with a
    # trailing NUL in some onnx-tensorrt versions (onnx/onnx-tensorrt#921): cut at the first NUL.
    if isinstance(value, bytes | bytearray):
        text = bytes(value).decode()
    elif hasattr(value, "tobytes"):
        text = value.tobytes().decode()
    else:
        text = str(value)
    return text.split("\x00", 1)[0]


def parse_attributes(mode: Any, padding_mode: Any, align_corners: Any) -> GridSampleAttrs:
    """Plugin/ONNX attributes -> C ABI codes. Accepts ONNX ("linear") and torch ("bilinear") names."""
    mode_s, pad_s = _text(mode).strip().lower(), _text(padding_mode).strip().lower()
    if mode_s not in MODE_CODES:
        raise ValueError(f"{PLUGIN_ID}: mode must be linear, bilinear or nearest, got {mode_s!r}")
    if pad_s not in PADDING_CODES:
        raise ValueError(f"{PLUGIN_ID}: padding_mode must be zeros, border or reflection, got {pad_s!r}")
    align = int(align_corners)
    if align not in (0, 1):
        raise ValueError(f"{PLUGIN_ID}: align_corners must be 0 or 1, got {align_corners!r}")
    return GridSampleAttrs(MODE_CODES[mode_s], PADDING_CODES[pad_s], align)


def infer_output_shape(input_shape: Sequence[int], grid_shape: Sequence[int]) -> tuple[int, ...]:
    """[N, C, D, H, W] and [N, Do, Ho, Wo, 3] -> [N, C, Do, Ho, Wo]; -1 marks a dynamic dim."""
    inp, grid = tuple(int(d) for d in input_shape), tuple(int(d) for d in grid_shape)
    if len(inp) != 5:
        raise ValueError(f"{PLUGIN_ID}: input must be 5-D [N, C, D, H, W], got shape {inp}")
    if len(grid) != 5 or grid[4] not in (3, -1):
        raise ValueError(f"{PLUGIN_ID}: grid must be [N, Do, Ho, Wo, 3], got shape {grid}")
    if inp[0] != -1 and grid[0] != -1 and inp[0] != grid[0]:
        raise ValueError(f"{PLUGIN_ID}: input batch {inp[0]} differs from grid batch {grid[0]}")
    batch = inp[0] if inp[0] != -1 else grid[0]
    return (batch, inp[1], grid[1], grid[2], grid[3])


def dtype_code(dtype_name: str) -> int:
    """TensorRT DataType name (FLOAT, HALF; or FP32, FP16) -> C ABI dtype code."""
    key = dtype_name.upper().split(".")[-1]
    if key not in DTYPE_CODES:
        raise ValueError(f"{PLUGIN_ID}: unsupported data type {dtype_name} (FP32 or FP16 only)")
    return DTYPE_CODES[key]


def supports_combination(dtypes: Sequence[str], layouts: Sequence[str]) -> bool:
    """Whether (input, grid, output) types and layouts form a combination the kernel runs."""
    names = [d.upper() for d in dtypes]
    if len(names) != 3 or len(layouts) != 3:
        return False
    return (
        names[0] in SUPPORTED_DTYPES and len(set(names)) == 1 and all(f.upper() == "LINEAR" for f in layouts)
    )


def launch_arguments(
    input_shape: Sequence[int], grid_shape: Sequence[int], attrs: GridSampleAttrs, dtype: int
) -> tuple[int, ...]:
    """Arguments of frvd_grid_sample3d between the three pointers and the stream."""
    out = infer_output_shape(input_shape, grid_shape)
    if any(d < 0 for d in (*input_shape, *out)):
        raise ValueError(f"{PLUGIN_ID}: shapes must be concrete at enqueue time")
    sizes = tuple(int(d) for d in input_shape) + out[2:]
    return (*sizes, dtype, attrs.mode, attrs.padding, attrs.align_corners)


def _import_tensorrt() -> tuple[Any, Any]:
    try:
        import tensorrt
        import tensorrt.plugin as trtp
    except ImportError as exc:
        raise TensorRTUnavailableError(
            f"cannot register the {PLUGIN_ID} TensorRT plugin: the tensorrt Python package "
            f"(>= 10.7, with tensorrt.plugin) is not importable ({exc}); install the 'trt' extra "
            "or export with form='decomposed', which needs no plugin"
        ) from exc
    return tensorrt, trtp


def _enqueue(inp: Any, grid: Any, out: Any, attrs: GridSampleAttrs, stream: int) -> None:
    from engine.kernels.grid_sample import KernelLibraryError, load_kernel_library

    lib = load_kernel_library(required=True)
    assert lib is not None
    if not lib.frvd_kernels_has_cuda():
        raise KernelLibraryError("libfrvd_kernels.so was built without CUDA; the plugin cannot run")
    args = launch_arguments(tuple(inp.shape), tuple(grid.shape), attrs, dtype_code(inp.dtype.name))
    status = lib.frvd_grid_sample3d(inp.data_ptr, grid.data_ptr, out.data_ptr, *args, ctypes.c_void_p(stream))
    if status != 0:
        raise KernelLibraryError(
            f"{PLUGIN_ID}: frvd_grid_sample3d failed: {lib.frvd_status_string(status).decode()}"
        )


_registered = False


def _already_in_registry(trt: Any) -> bool:
    """Whether TensorRT's registry already holds frvd::GridSample3D (registered by another copy of
    this module, e.g. one loaded from its file path and one imported as a package)."""
    try:
        registry = trt.get_plugin_registry()
        return registry.get_creator(PLUGIN_NAME, "1", PLUGIN_NAMESPACE) is not None
    except Exception:  # older/other registries: fall back on this module's own flag
        return False


def register() -> None:
    """Register frvd::GridSample3D with TensorRT's plugin registry (idempotent)."""
    global _registered
    if _registered:
        return
    trt, trtp = _import_tensorrt()
    if _already_in_registry(trt):
        _registered = True
        return

    @trtp.register(PLUGIN_ID)
    def _describe(
        inp: trtp.TensorDesc,  # type: ignore[name-defined]  # tensorrt.plugin reads these hints at run time
        grid: trtp.TensorDesc,  # type: ignore[name-defined]
        mode: str, padding_mode: str, align_corners: int,
    ) -> trtp.TensorDesc:  # type: ignore[name-defined]
        parse_attributes(mode, padding_mode, align_corners)  # reject bad attributes at build time
        se, ge = inp.shape_expr, grid.shape_expr
        return trtp.from_shape_expr((se[0], se[1], ge[1], ge[2], ge[3]), dtype=inp.dtype)

    # Unannotated on purpose: tensorrt.plugin checks any hints given here against the
    # register() signature, and the schema is fixed by it anyway.
    @trtp.autotune(PLUGIN_ID)
    def _combinations(inp, grid, outputs):
        return [trtp.AutoTuneCombination(IO_TYPES, IO_LAYOUTS)]

    @trtp.impl(PLUGIN_ID)
    def _run(inp, grid, mode, padding_mode, align_corners, outputs, stream):
        _enqueue(inp, grid, outputs[0], parse_attributes(mode, padding_mode, align_corners), stream)

    _registered = True
