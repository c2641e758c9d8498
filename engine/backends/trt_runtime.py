"""TensorRT helpers shared by the runtime (trt_backend) and the engine builder (export.trt_build).

Everything here is plain data or a lazy import: TensorRT is optional, and importing this module
never imports it.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from engine.errors import EngineError
from engine.graphs.spec import GraphSpec

INSTALL_HINT = (
    "TensorRT is not installed: --target trt / --backend tensorrt need the tensorrt and cuda-python "
    "packages and an NVIDIA GPU (pip install 'frvd-engine[trt-cu12]' or '[trt-cu13]'); --target onnx and "
    "--backend onnxruntime work without them"
)
PLUGIN_MODULE = "engine.kernels.trt_plugin"


class TensorRTUnavailable(EngineError):
    """The tensorrt package cannot be imported."""


def require_tensorrt() -> Any:
    """``import tensorrt``, or one clear error saying what to install."""
    try:
        return importlib.import_module("tensorrt")
    except ImportError:
        raise TensorRTUnavailable(INSTALL_HINT) from None


def engine_precision(spec: GraphSpec, precision: str) -> str:
    return "fp32" if spec.fp32_only else precision


def needs_plugin(spec: GraphSpec) -> bool:
    return spec.grid_sample == "custom"


def register_plugin() -> None:
    """Register frvd::GridSample3D (engine/kernels/trt_plugin.py, shipped in the wheel) with TensorRT (idempotent)."""
    # the module keeps a "registered" flag: a second import would be a no-op, a second register refused
    module = importlib.import_module(PLUGIN_MODULE)
    module.register()


# ------------------------------------------------------------------------ TensorRT 10 vs 11
def tensorrt_major(trt: Any) -> int:
    """Major version of an imported tensorrt module (``"10.13.0.35"`` -> 10)."""
    try:
        return int(str(trt.__version__).split(".")[0])
    except (AttributeError, ValueError):
        raise EngineError(f"cannot read the TensorRT version from {getattr(trt, '__version__', None)!r}") from None


def strongly_typed(trt: Any) -> bool:
    """Whether engines are built strongly typed: whenever TensorRT offers it (10.x has
    ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``; 11 builds nothing else). A strongly typed fp16 engine
    is parsed from the fp16 ONNX graph, whose types keep the sinusoidal position/timestep tables and the
    normalisations in float32 by construction; under the weakly typed ``BuilderFlag.FP16`` TensorRT may
    pick fp16 for any layer, position tables included. Only a TensorRT without the flag builds weakly."""
    flags = getattr(trt, "NetworkDefinitionCreationFlag", None)
    return tensorrt_major(trt) >= 11 or getattr(flags, "STRONGLY_TYPED", None) is not None


def onnx_kind_for_engine(trt: Any, spec: GraphSpec, precision: str) -> str:
    """Which ONNX artifact an engine is parsed from. Strongly typed networks take their
    precision from the graph's own tensor types, so an fp16 engine needs the fp16 graph (its
    sinusoidal tables and normalisations kept in fp32); a TensorRT without strong typing lowers the
    fp32 graph under BuilderFlag.FP16."""
    if engine_precision(spec, precision) == "fp16" and strongly_typed(trt):
        return "onnx-fp16"
    return "onnx-fp32"


def network_flags(trt: Any) -> int:
    """``create_network`` flags: STRONGLY_TYPED where engines are strongly typed (required on
    10.x to get that mode, accepted and ignored by 11), else none (explicit batch is the only
    mode since TensorRT 10)."""
    if strongly_typed(trt) and hasattr(trt, "NetworkDefinitionCreationFlag"):
        flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        if flag is not None:
            return 1 << int(flag)
    return 0


def builder_flags(trt: Any, spec: GraphSpec, precision: str) -> list[Any]:
    """BuilderFlags to set: FP16 for an fp16 engine on a TensorRT without strong typing, else nothing."""
    if engine_precision(spec, precision) == "fp16" and not strongly_typed(trt):
        return [trt.BuilderFlag.FP16]
    return []
