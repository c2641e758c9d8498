"""TensorRT engines from the exported ONNX graphs (imported lazily: TensorRT is optional).

One engine per graph with one optimisation profile (the spec's min/opt/max shapes), FP16 when
asked (the LivePortrait graphs stay FP32, as the release runs them), a persistent timing cache
shared by every build in the output folder, and the ``frvd::GridSample3D`` plugin registered
when the warp graph was exported in the "custom" form. Everything except ``build_engine`` and
``require_tensorrt`` is plain data and is unit-tested without TensorRT.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path
from typing import Any

from engine.errors import EngineError
from export.cache import REPO
from export.spec import GraphSpec

INSTALL_HINT = (
    "TensorRT is not installed: --target trt / --backend tensorrt need the tensorrt and cuda-python "
    "packages and an NVIDIA GPU (pip install 'frvd-engine[trt]'); --target onnx and "
    "--backend onnxruntime work without them"
)
TIMING_CACHE = "timing.cache"
PLUGIN_MODULE = "kernels.grid_sample3d.trt_plugin"


class TensorRTUnavailable(EngineError):
    """The tensorrt package cannot be imported."""


def require_tensorrt() -> Any:
    """``import tensorrt``, or one clear error saying what to install."""
    try:
        return importlib.import_module("tensorrt")
    except ImportError:
        raise TensorRTUnavailable(INSTALL_HINT) from None


def tensorrt_version() -> str:
    try:
        return require_tensorrt().__version__
    except TensorRTUnavailable:
        return "absent"


def gpu_name() -> str:
    """The GPU an engine is built for (engines are specific to the device and TensorRT version)."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no-gpu"


def engine_precision(spec: GraphSpec, precision: str) -> str:
    return "fp32" if spec.fp32_only else precision


def needs_plugin(spec: GraphSpec) -> bool:
    return spec.grid_sample == "custom"


def profile_shapes(spec: GraphSpec) -> list[tuple[str, tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """``(input, min, opt, max)`` rows for ``IOptimizationProfile.set_shape``."""
    return [(name, *shapes) for name, shapes in spec.profile().items()]


def key_inputs(spec: GraphSpec, onnx_key: str, precision: str) -> dict[str, Any]:
    """What a TensorRT engine depends on beyond its ONNX graph."""
    return {
        "onnx": onnx_key,
        "precision": engine_precision(spec, precision),
        "profile": [[n, list(lo), list(opt), list(hi)] for n, lo, opt, hi in profile_shapes(spec)],
        "plugin": needs_plugin(spec),
        "tensorrt": tensorrt_version(),
        "gpu": gpu_name(),
    }


def register_plugin() -> None:
    """Register frvd::GridSample3D (kernels/grid_sample3d/trt_plugin.py) with TensorRT."""
    try:
        module = importlib.import_module(PLUGIN_MODULE)
    except ImportError:  # the repository root is not on sys.path: load the file itself
        path = REPO / "kernels" / "grid_sample3d" / "trt_plugin.py"
        spec = importlib.util.spec_from_file_location(PLUGIN_MODULE, path)
        if spec is None or spec.loader is None:
            raise EngineError(f"the GridSample3D plugin module {path} is missing") from None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    module.register()


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_bytes(data)
    tmp.replace(path)


def build_engine(onnx_path: Path, spec: GraphSpec, precision: str, plan_path: Path, cache_dir: Path,
                 workspace_gib: float | None = None) -> dict[str, Any]:
    """Parse ``onnx_path``, build with the spec's profile, write ``plan_path``; returns build facts."""
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    if needs_plugin(spec):
        register_plugin()
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # from the file, so external data is found
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT could not parse {onnx_path}: {errors}")

    config = builder.create_builder_config()
    if engine_precision(spec, precision) == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    if workspace_gib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    profile = builder.create_optimization_profile()
    for name, lo, opt, hi in profile_shapes(spec):
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)

    # A timing cache from another TensorRT version or GPU is rejected by TensorRT itself
    # (ignore_mismatch=False) and then starts empty.
    cache_path = cache_dir / TIMING_CACHE
    timing_cache = config.create_timing_cache(_read(cache_path))
    config.set_timing_cache(timing_cache, ignore_mismatch=False)

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineError(f"TensorRT failed to build an engine for {spec.name} (see the log above)")
    plan_path.write_bytes(memoryview(plan))
    _write_atomic(cache_path, memoryview(config.get_timing_cache().serialize()).tobytes())
    return {"tensorrt": trt.__version__, "gpu": gpu_name(), "precision": engine_precision(spec, precision)}
