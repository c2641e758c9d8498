"""Checks of an exported graph: onnx.checker, shape inference, an onnxruntime session, parity vs torch."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from engine.graph_spec import GraphSpec, max_errors


class CheckError(RuntimeError):
    """An exported graph failed a structural check."""


def custom_ops(path: Path) -> list[str]:
    model = onnx.load(str(path), load_external_data=False)
    return sorted({f"{n.domain}::{n.op_type}" for n in model.graph.node if n.domain not in ("", "ai.onnx")})


def check_onnx(path: Path, spec: GraphSpec) -> dict[str, Any]:
    """onnx.checker and (strict, when no custom op is present) shape inference on the saved file.

    Both run on the path, which is what works for models beyond 2 GB with external data.
    """
    onnx.checker.check_model(str(path))
    custom = custom_ops(path)
    inferred_path = path.with_name(path.stem + ".inferred.onnx")
    try:
        onnx.shape_inference.infer_shapes_path(str(path), str(inferred_path), check_type=True, strict_mode=not custom)
        inferred = onnx.load(str(inferred_path), load_external_data=False)
    finally:
        inferred_path.unlink(missing_ok=True)
    graph = inferred.graph
    for value, t in zip(graph.output, spec.outputs):
        dims = value.type.tensor_type.shape.dim
        want = spec.onnx_shape(t)
        got = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]
        if len(got) != len(want) or any(isinstance(w, int) and g != w for g, w in zip(got, want)):
            raise CheckError(f"{spec.name}.{t.name}: inferred shape {got} does not match the spec {want}")
    opsets = {o.domain or "ai.onnx": o.version for o in inferred.opset_import}
    return {"opset": opsets.get("ai.onnx"), "nodes": len(graph.node), "custom_ops": custom}


def sample_points(spec: GraphSpec) -> list[str]:
    """Where parity is measured: the export sizes and, when different, the smallest accepted."""
    points = ["export"]
    if spec.dim_values("min") != spec.dim_values("export"):
        points.append("min")
    return points


def parity(spec: GraphSpec, reference: nn.Module, runner: Any, points: Iterable[str] | None = None,
           seed: int = 1) -> dict[str, dict[str, float]]:
    """Max abs / relative error of ``runner`` (any GraphRunner) vs the torch module, per output."""
    from engine.backends.torch_backend import TorchGraph

    torch_graph = TorchGraph(spec, reference)
    errors = {name: {"max_abs": 0.0, "max_rel": 0.0} for name in spec.output_names}
    for which in points or sample_points(spec):
        feeds = spec.sample_inputs(which, seed=seed)
        with torch.no_grad():
            ref = torch_graph.run(feeds)
            out = runner.run(feeds)
        for name in spec.output_names:
            abs_err, rel_err = max_errors(out[name].float().cpu(), ref[name].float().cpu())
            errors[name]["max_abs"] = max(errors[name]["max_abs"], abs_err)
            errors[name]["max_rel"] = max(errors[name]["max_rel"], rel_err)
    return errors


def worst(errors: dict[str, dict[str, float]]) -> float:
    return max((e["max_rel"] for e in errors.values()), default=0.0)


def to_fp16(src: Path, dst: Path) -> None:
    """float16 copy of an fp32 graph (inputs/outputs stay float32; the model casts at its edges)."""
    import onnx_ir as ir
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))  # with external data
    del model.graph.value_info[:]  # the exporter's fp32 annotations would contradict the converted nodes
    half = ir.from_proto(convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True))
    half.graph.sort()  # the converter appends its input casts at the end of the node list
    ir.save(half, dst, external_data=dst.name + ".data")
