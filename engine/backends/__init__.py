"""Backends: torch (eager reference), onnxruntime, tensorrt - one ``run(feeds) -> outputs`` per graph.

``create_backend`` is the one place that maps a name to an implementation; onnxruntime and
TensorRT are imported only when asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.backends.base import Backend, BackendError, GraphRunner
from engine.config.settings import EngineConfig, ModelConfig

if TYPE_CHECKING:  # the networks (diffusers, transformers) load only for the torch backend
    from engine.models.networks import Networks

BACKENDS = ("torch", "onnxruntime", "tensorrt")

__all__ = ["BACKENDS", "Backend", "BackendError", "GraphRunner", "create_backend", "torch_specs"]


def torch_specs(model: ModelConfig, size: int, window: int, time_context: str, nets: Networks | None = None) -> dict:
    from engine.graphs.modules import ALL_GRAPH_NAMES, GraphOptions, build_specs

    # eager modules cost nothing until called: the fast modes' graphs are always there; the tiny
    # decoder's when the networks carry one
    opts = GraphOptions(image_size=size, window=window, time_context=time_context)
    optional = ("tiny_decoder",) if getattr(nets, "tiny_decoder", None) is not None else ()
    return build_specs(model, opts, ALL_GRAPH_NAMES + optional)


def precision_for_dtype(kind: str, dtype: str) -> str:
    """The artifacts a run in ``dtype`` uses: float16 -> the fp16 graphs / engines (the LivePortrait
    graphs stay fp32), float32 -> fp32. ONNX and TensorRT artifacts have no bfloat16 form."""
    if dtype == "float16":
        return "fp16"
    if dtype == "float32":
        return "fp32"
    raise BackendError(f"--backend {kind} runs float32 or float16 artifacts; dtype {dtype} needs --backend torch")


def create_backend(kind: str, cfg: EngineConfig, nets: Networks | None = None, engines: Path | None = None,
                   **options: Any) -> Backend:
    """``kind`` for an engine built with ``cfg``: torch needs ``nets``, the others ``engines``."""
    if kind == "torch":
        from engine.backends.torch_backend import TorchBackend

        if nets is None:
            raise BackendError("the torch backend needs the networks (weights)")
        if nets.time_context != cfg.time_context:
            # the layout is baked into the modules; a run config saying otherwise would be a lie
            raise BackendError(
                f"the networks were built with time context {nets.time_context!r} but the engine asks for "
                f"{cfg.time_context!r}; build them with the run's setting"
            )
        specs = torch_specs(cfg.model, cfg.size, cfg.windows.size, cfg.time_context, nets)
        return TorchBackend(nets, specs)
    if kind not in BACKENDS:
        raise BackendError(f"unknown backend {kind!r}; choose one of {BACKENDS}")
    if engines is None:
        raise BackendError(f"--backend {kind} needs --engines DIR (built with python -m engine.build)")
    expect = {"model": cfg.model, "time_context": cfg.time_context, "image_size": cfg.size,
              "window": cfg.windows.size}
    options.setdefault("precision", precision_for_dtype(kind, cfg.dtype))
    if kind == "onnxruntime":
        from engine.backends.ort_backend import OrtBackend

        return OrtBackend(Path(engines), expect=expect, device=cfg.device, **options)
    from engine.backends.trt_backend import TrtBackend

    return TrtBackend(Path(engines), expect=expect, **options)
