"""Checks of an exported graph: onnx.checker, shape inference, an onnxruntime session, parity vs torch."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from engine.graphs.spec import GraphSpec, max_errors


class CheckError(RuntimeError):
    """An exported graph failed a structural check."""


# Domains whose ops onnxruntime itself implements (com.microsoft: its contrib ops, e.g. the
# fused MultiHeadAttention of export/attention_onnx.py); any other domain is a plugin's.
ORT_DOMAINS = ("", "ai.onnx", "com.microsoft")


def custom_ops(path: Path) -> list[str]:
    """The ops onnxruntime cannot run (TensorRT plugins), as ``domain::op``."""
    model = onnx.load(str(path), load_external_data=False)
    return sorted({f"{n.domain}::{n.op_type}" for n in model.graph.node if n.domain not in ORT_DOMAINS})


def check_onnx(path: Path, spec: GraphSpec) -> dict[str, Any]:
    """onnx.checker and (strict, when no custom op is present) shape inference on the saved file.

    Both run on the path, which is what works for models beyond 2 GB with external data.
    """
    from export.attention_onnx import count_ops

    onnx.checker.check_model(str(path))
    custom = custom_ops(path)
    proto = onnx.load(str(path), load_external_data=False)
    # onnx has no schema for non-standard domains: strict inference would stop at their nodes
    standard = all(n.domain in ("", "ai.onnx") for n in proto.graph.node)
    inferred_path = path.with_name(path.stem + ".inferred.onnx")
    try:
        onnx.shape_inference.infer_shapes_path(str(path), str(inferred_path), check_type=True, strict_mode=standard)
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
    return {"opset": opsets.get("ai.onnx"), "nodes": len(graph.node), "custom_ops": custom, **count_ops(proto)}


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


# Part of the fp16 artifact's cache key: a change to what stays fp32 rebuilds the fp16 graphs.
FP16_CONVERTER = "ort-float16/keep-sinusoids-and-norms-fp32/v3"
# Modules whose nodes stay float32: the sinusoidal embeddings (diffusers' Timesteps: token
# positions up to 57,344 and their sin/cos tables are not representable in fp16 - positions above
# 2,048 collide, the tiny preset's [3584, 16] table has only 2,817 distinct fp16 values).
FP32_MODULES = ("diffusers.models.embeddings.Timesteps",)
# Normalisations stay float32 too (their inputs are cast up, their outputs down): a GroupNorm's variance
# over 32 x h x w values or a LayerNorm's over the channels overflows / loses its digits in fp16 on
# activations of a few hundred. TensorRT 11 (strongly typed) would otherwise run them in fp16.
FP32_OPS = ("InstanceNormalization", "GroupNormalization", "LayerNormalization")


def fp32_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes to keep in float32: every node inside an ``FP32_MODULES`` module (from the
    exporter's class-hierarchy metadata), every Sin/Cos (in case the metadata is missing) and
    everything upstream of them - the positions and timesteps they embed - except through the
    data input of Shape/Size, which carries no values (and would reach the whole network)."""
    graph = model.graph
    producer = {out: n for n in graph.node for out in n.output}
    seeds = [n for n in graph.node if n.op_type in ("Sin", "Cos") or any(
        p.key == "pkg.torch.onnx.class_hierarchy" and any(m in p.value for m in FP32_MODULES)
        for p in n.metadata_props)]
    keep: dict[str, onnx.NodeProto] = {n.name: n for n in graph.node if n.op_type in FP32_OPS}  # themselves only
    stack = list(seeds)
    while stack:
        node = stack.pop()
        if node.name in keep:
            continue
        keep[node.name] = node
        if node.op_type in ("Shape", "Size"):
            continue
        stack.extend(producer[i] for i in node.input if i in producer)
    return sorted(keep)


def _fp32_constants(model: onnx.ModelProto, blocked: set[str]) -> list[str]:
    """Give the blocked nodes private Constant copies of the float initializers they read (the
    converter turns every shared float initializer to fp16, e.g. the embeddings' frequency
    table); returns the new Constant nodes' names, to block too."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    added: list[str] = []
    copies: dict[str, str] = {}
    new_nodes = []
    for node in graph.node:
        if node.name not in blocked:
            continue
        for k, name in enumerate(node.input):
            if name not in inits:
                continue
            if name not in copies:
                copies[name] = f"{name}__fp32"
                const = onnx.helper.make_node("Constant", [], [copies[name]], name=f"{name}__fp32_const",
                                              value=inits[name])
                new_nodes.append(const)
                added.append(const.name)
            node.input[k] = copies[name]
    for const in reversed(new_nodes):
        graph.node.insert(0, const)
    return added


def to_fp16(src: Path, dst: Path) -> None:
    """float16 copy of an fp32 graph (inputs/outputs stay float32; the model casts at its edges),
    with the sinusoidal embeddings computed in float32 (``fp32_nodes``)."""
    import onnx_ir as ir
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))  # with external data
    blocked = fp32_nodes(model)
    blocked += _fp32_constants(model, set(blocked))
    # The exporter's fp32 annotations would contradict the converted nodes, except at the edges of
    # the blocked nodes: there they are what tells the converter where to insert its Casts.
    # Only tensors that cross the boundary (one side blocked, the other not) keep their annotation;
    # an annotated tensor between two blocked nodes would be cast to fp16 and back.
    is_blocked = set(blocked)
    sides: dict[str, set[bool]] = {}
    for n in model.graph.node:
        for t in (*n.input, *n.output):
            sides.setdefault(t, set()).add(n.name in is_blocked)
    kept = [v for v in model.graph.value_info if len(sides.get(v.name, ())) == 2]
    # The exporter leaves some tensors unannotated (e.g. a GroupNorm's Reshape before its
    # InstanceNormalization); without a float annotation the converter inserts no Cast there and the
    # node would see fp16 beside its fp32 scale. The FP32_OPS take and give float tensors only
    # (type T of X, scale, B and Y), so their crossing tensors are annotated as float here.
    annotated = {v.name for v in kept} | {i.name for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type not in FP32_OPS or n.name not in is_blocked:
            continue
        for t in (*n.input, *n.output):
            if t and t not in annotated and len(sides.get(t, ())) == 2:
                kept.append(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
                annotated.add(t)
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)
    half = ir.from_proto(convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True,
                                                  node_block_list=blocked))
    half.graph.sort()  # the converter appends its input casts at the end of the node list
    ir.save(half, dst, external_data=dst.name + ".data")
