"""TensorRT engines from the exported ONNX graphs (imported lazily: TensorRT is optional).

One engine per graph with one optimisation profile (the spec's min/opt/max shapes), FP16 when
asked (the LivePortrait graphs stay FP32, as the release runs them): on TensorRT 10 by lowering the
fp32 graph under ``BuilderFlag.FP16``; on TensorRT 11, which builds strongly typed networks only
and has no such flag, by parsing the fp16 ONNX graph, whose types set the precision
(``engine.backends.trt_runtime.onnx_kind_for_engine``). A persistent timing cache
shared by every build in the output folder, and the ``frvd::GridSample3D`` plugin registered
when the warp graph was exported in the "custom" form. Everything except ``build_engine`` and
``require_tensorrt`` is plain data and is unit-tested without TensorRT. The helpers the runtime
shares (``require_tensorrt``, ``engine_precision``, ``needs_plugin``, ``register_plugin``) live in
``engine.backends.trt_runtime``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from engine.backends.trt_runtime import (
    TensorRTUnavailable,
    builder_flags,
    engine_precision,
    needs_plugin,
    network_flags,
    onnx_kind_for_engine,
    register_plugin,
    require_tensorrt,
    strongly_typed,
)
from engine.errors import EngineError
from engine.graphs.spec import GraphSpec

TIMING_CACHE = "timing.cache"


def tensorrt_version() -> str:
    try:
        return require_tensorrt().__version__
    except TensorRTUnavailable:
        return "absent"


def gpu_name() -> str:
    """The GPU an engine is built for (engines are specific to the device and TensorRT version)."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no-gpu"


def profile_shapes(spec: GraphSpec) -> list[tuple[str, tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """``(input, min, opt, max)`` rows for ``IOptimizationProfile.set_shape``."""
    return [(name, *shapes) for name, shapes in spec.profile().items()]


def onnx_source_kind(spec: GraphSpec, precision: str) -> str:
    """The ONNX artifact the engine is parsed from, for the installed TensorRT (fp32 without it)."""
    try:
        trt = require_tensorrt()
    except TensorRTUnavailable:
        return "onnx-fp32"
    return onnx_kind_for_engine(trt, spec, precision)


def key_inputs(spec: GraphSpec, onnx_key: str, precision: str) -> dict[str, Any]:
    """What a TensorRT engine depends on beyond its ONNX graph (``onnx_key``: the parsed one)."""
    return {
        "onnx": onnx_key,
        "onnx_kind": onnx_source_kind(spec, precision),
        "precision": engine_precision(spec, precision),
        "profile": [[n, list(lo), list(opt), list(hi)] for n, lo, opt, hi in profile_shapes(spec)],
        "plugin": needs_plugin(spec),
        "tensorrt": tensorrt_version(),
        "gpu": gpu_name(),
    }


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
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # from the file, so external data is found
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT could not parse {onnx_path}: {errors}")

    config = builder.create_builder_config()
    for flag in builder_flags(trt, spec, precision):
        config.set_flag(flag)
    if workspace_gib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    profile = builder.create_optimization_profile()
    for name, lo, opt, hi in profile_shapes(spec):
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)

    cache_path = cache_dir / TIMING_CACHE
    set_timing_cache(config, _read(cache_path))

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineError(f"TensorRT failed to build an engine for {spec.name} (see the log above)")
    plan_path.write_bytes(memoryview(plan))
    _write_atomic(cache_path, memoryview(config.get_timing_cache().serialize()).tobytes())
    return {"tensorrt": trt.__version__, "gpu": gpu_name(), "precision": engine_precision(spec, precision),
            "strongly_typed": strongly_typed(trt), "onnx": str(onnx_path)}


def set_timing_cache(config: Any, blob: bytes) -> str:
    """Attach the persistent timing cache; returns "reused", "fresh" or "replaced".

    ``set_timing_cache`` returns False for a cache from another TensorRT version or GPU
    (ignore_mismatch=False); that cache is then replaced by an empty one instead of being
    silently dropped, and a refusal of the empty one is an error."""
    if blob:
        if config.set_timing_cache(config.create_timing_cache(blob), ignore_mismatch=False):
            return "reused"
        outcome = "replaced"
    else:
        outcome = "fresh"
    if not config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False):
        raise EngineError("TensorRT refused an empty timing cache")
    return outcome
