"""ONNX export of ``F.scaled_dot_product_attention`` as a fused attention op, chosen per target.

Every attention of the engine's networks (the WFM's full spatio-temporal attentions, the SVD
blocks' spatial and temporal ones, the VAE's and CLIP's) reaches the exporter as one
``aten.scaled_dot_product_attention`` node; ``custom_translation_table`` maps it to:

* ``"mha"`` (onnxruntime, the default of ``--target onnx``): onnxruntime's
  ``com.microsoft::MultiHeadAttention`` on 3-D ``[B, S, N*H]`` query/key/value. Its CPU kernel
  runs an L2-tiled flash attention (``MlasFlashAttention``) when there is no mask, bias-free past
  or present state, so the ``[B, N, Sq, Skv]`` score matrix is never allocated (unless
  ``ORT_DISABLE_FLASH_ATTENTION=1`` is set, or the runtime reports no L2 cache size); its CUDA
  kernel picks flash / memory-efficient attention. 4-D key/value would select the kernel's
  "past key/value" path, which is not fused, hence the 3-D layout.
* ``"onnx23"`` (TensorRT >= 10.14, whose ONNX parser maps ``Attention`` to ``IAttention``): the
  standard ``Attention`` of opset 23 on 4-D ``[B, N, S, H]`` with a single output (the parser
  rejects Attention nodes with more than one). The graph is exported at opset 23. onnxruntime
  runs it too, but its CPU kernel materialises the scores - not for long sequences.
* ``"decomposed"`` (TensorRT < 10.14): no translation; the exporter's own MatMul - Softmax -
  MatMul, with Q and K^T each scaled by sqrt(scale) before the first MatMul, which is the form of
  TensorRT's documented attention-fusion pattern ("Method 2" of its fused-attention guide).

Calls with a mask, causal masking, dropout or grouped K/V heads (none in these networks) fall back
to the exporter's decomposition in every form, so the result is always correct.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import onnx_ir as ir
import torch
from onnx.defs import OpSchema
from onnxscript import opset20, opset23
from onnxscript.values import Op, Opset

FORMS = ("mha", "onnx23", "decomposed")
ORT_DOMAIN = "com.microsoft"
# The lowest opset each form needs (None: the graph's own).
MIN_OPSET: dict[str, int | None] = {"mha": None, "onnx23": 23, "decomposed": None}
# TensorRT's ONNX parser gained the Attention operator in 10.14 (onnx-tensorrt 10.14 GA notes).
TRT_ATTENTION_VERSION = (10, 14)
FUSED_OPS = {(ORT_DOMAIN, "MultiHeadAttention"), ("", "Attention")}


def _mha_schema() -> OpSchema:
    """The part of com.microsoft::MultiHeadAttention we emit (query, key, value -> output).

    The exporter's tracer needs a schema to build the node; onnxruntime's contrib schemas are not
    in onnx, and registering one globally would change onnx for the whole process, so it is not.
    The optional inputs (bias, masks, past state) and outputs (present state) are left out: a node
    may omit trailing optional inputs and outputs.
    """
    return OpSchema(
        "MultiHeadAttention",
        ORT_DOMAIN,
        1,
        doc="onnxruntime contrib op: softmax(Q K^T * scale) V per head, Q/K/V as [B, S, N*H].",
        inputs=[OpSchema.FormalParameter(n, "T") for n in ("query", "key", "value")],
        outputs=[OpSchema.FormalParameter("output", "T")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "query, key, value and output type")],
        attributes=[
            OpSchema.Attribute("num_heads", OpSchema.AttrType.INT, "number of attention heads"),
            OpSchema.Attribute("scale", OpSchema.AttrType.FLOAT, "Q K^T scale; 1/sqrt(H) when absent",
                               required=False),
        ],
    )


_MHA = Op(Opset(ORT_DOMAIN, 1), "MultiHeadAttention", op_schema=_mha_schema())


def _plain(attn_mask: Any, dropout_p: float, is_causal: bool, enable_gqa: bool) -> bool:
    """Whether a call is the plain, unmasked, non-causal attention the fused forms cover."""
    return attn_mask is None and not dropout_p and not is_causal and not enable_gqa


def _fallback(query: Any, key: Any, value: Any, attn_mask: Any, dropout_p: float, is_causal: bool,
              scale: float | None, enable_gqa: bool) -> Any:
    """The exporter's own translation (onnxscript's torchlib), for the calls the fused forms skip."""
    from onnxscript.function_libs.torch_lib.ops.nn import aten_scaled_dot_product_attention

    return aten_scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                                             is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)


def _heads(query: Any, key: Any, value: Any) -> tuple[int, int]:
    """(heads, value head size) as static ints: SDPA's [B, N, S, H] has static N and H here."""
    heads, v_head = query.shape[1], value.shape[3]
    if not isinstance(heads, int) or not isinstance(v_head, int) or key.shape[1] != heads:
        raise ValueError(f"fused attention export needs static, equal head counts and head sizes; got "
                         f"query {query.shape}, key {key.shape}, value {value.shape}")
    return heads, v_head


def mha_translation(query: Any, key: Any, value: Any, attn_mask: Any = None, dropout_p: float = 0.0,
                    is_causal: bool = False, scale: float | None = None, enable_gqa: bool = False) -> Any:
    """SDPA [B, N, S, H] -> com.microsoft::MultiHeadAttention on [B, S, N*H] -> [B, N, S, Hv]."""
    if not _plain(attn_mask, dropout_p, is_causal, enable_gqa):
        return _fallback(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)
    heads, v_head = _heads(query, key, value)

    def packed(x: Any) -> Any:  # [B, N, S, H] -> [B, S, N*H]; the callers' own transposes cancel it
        return opset20.Reshape(opset20.Transpose(x, perm=[0, 2, 1, 3]), opset20.Constant(value_ints=[0, 0, -1]))

    attrs: dict[str, Any] = {"num_heads": heads}
    if scale is not None:
        attrs["scale"] = float(scale)
    out = _MHA(packed(query), packed(key), packed(value), **attrs)
    out = opset20.Reshape(out, opset20.Constant(value_ints=[0, 0, heads, v_head]))
    return opset20.Transpose(out, perm=[0, 2, 1, 3])


def onnx23_translation(query: Any, key: Any, value: Any, attn_mask: Any = None, dropout_p: float = 0.0,
                       is_causal: bool = False, scale: float | None = None, enable_gqa: bool = False) -> Any:
    """SDPA -> opset-23 ``Attention`` on the same 4-D tensors (its extra outputs are trimmed later)."""
    if not _plain(attn_mask, dropout_p, is_causal, enable_gqa):
        return _fallback(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)
    _heads(query, key, value)
    attrs: dict[str, Any] = {} if scale is None else {"scale": float(scale)}
    outputs = opset23.Attention(query, key, value, **attrs)
    return outputs[0] if isinstance(outputs, (tuple, list)) else outputs


def translation_table(form: str) -> dict[Callable[..., Any], Callable[..., Any]]:
    """custom_translation_table entries for ``form``; empty for "decomposed"."""
    sdpa = torch.ops.aten.scaled_dot_product_attention.default
    if form == "mha":
        return {sdpa: mha_translation}
    if form == "onnx23":
        return {sdpa: onnx23_translation}
    if form == "decomposed":
        return {}
    raise ValueError(f"attention export form must be one of {FORMS}, got {form!r}")


def export_opset(form: str, opset: int) -> int:
    """The opset a graph is exported at: its own, raised to what the form needs."""
    need = MIN_OPSET[form]
    return opset if need is None else max(opset, need)


def trim_attention_outputs(model: ir.Model) -> int:
    """Give every ``Attention`` node only its first output when the others are unused.

    The tracer creates all four outputs of the opset-23 schema (Y, present K/V, QK); TensorRT's
    parser accepts Attention nodes with one output only. Returns the number of nodes rebuilt.
    """
    count = 0
    for graph in model.graphs():
        for node in list(graph):
            if node.domain not in ("", "ai.onnx") or node.op_type != "Attention" or len(node.outputs) == 1:
                continue
            if any(out.uses() or out.is_graph_output() for out in node.outputs[1:]):
                continue
            attrs = [ir.Attr(a.name, a.type, a.value) for a in node.attributes.values()]
            new = ir.Node(node.domain, node.op_type, node.inputs, attributes=attrs, num_outputs=1,
                          name=node.name, version=node.version, metadata_props=dict(node.metadata_props))
            old_out, new_out = node.outputs[0], new.outputs[0]
            name = old_out.name
            old_out.name = f"{name}__untrimmed"  # value names are unique in a graph
            new_out.name, new_out.shape, new_out.type = name, old_out.shape, old_out.type
            graph.insert_after(node, new)
            old_out.replace_all_uses_with(new_out, replace_graph_outputs=True)
            graph.remove(node, safe=True)
            count += 1
    return count


def default_form(target: str, tensorrt_version: str | None = None) -> str:
    """The form a target gets: MultiHeadAttention for onnxruntime; for TensorRT, ``Attention`` when
    the installed TensorRT parses it (>= 10.14), else the MatMul-Softmax-MatMul fusion pattern."""
    if target == "onnx":
        return "mha"
    if target != "trt":
        raise ValueError(f"target must be onnx or trt, got {target!r}")
    if tensorrt_version is None:
        from export.trt_build import tensorrt_version as installed

        tensorrt_version = installed()
    return "onnx23" if _version_tuple(tensorrt_version) >= TRT_ATTENTION_VERSION else "decomposed"


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def count_ops(model: Any) -> dict[str, int]:
    """Fused attention, MatMul and Softmax node counts of an ``onnx.ModelProto`` (the report's facts)."""
    nodes = model.graph.node
    return {
        "fused_attention": sum((n.domain, n.op_type) in FUSED_OPS for n in nodes),
        "matmul": sum(n.op_type == "MatMul" and n.domain == "" for n in nodes),
        "softmax": sum(n.op_type == "Softmax" and n.domain == "" for n in nodes),
    }
