"""ONNX export of ``engine.kernels.grid_sample.grid_sample3d`` in one of three forms, chosen at export time.

* ``"onnx20"``: the standard ``GridSample`` of opset 20 (5-D capable; what onnxruntime runs).
* ``"custom"``: a ``frvd::GridSample3D`` node (attributes ``mode`` = linear|nearest,
  ``padding_mode``, ``align_corners`` and ``plugin_namespace`` = "frvd", which the TensorRT
  ONNX parser uses to find the ``frvd::GridSample3D`` plugin of
  kernels/grid_sample3d/trt_plugin.py). Any default-domain opset works; 17 by default.
* ``"decomposed"``: ``engine.kernels.decomposed`` traced into plain ops (Gather, Where, Floor...)
  at opset 17, no custom domain: TensorRT builds it without a plugin.

The first two trace the model with the ``kernel`` implementation so the graph holds
``torch.ops.frvd.grid_sample3d`` (its fake kernel suffices; the library need not be built),
then map that op through ``custom_translation_table`` of the dynamo exporter.
"""

from __future__ import annotations

from collections.abc import Callable
from os import PathLike
from typing import Any

import onnx
import torch
from onnx.defs import OpSchema
from onnxscript import opset20
from onnxscript.values import Op, Opset

from engine.kernels.grid_sample import grid_sample_impl

FORMS = ("onnx20", "custom", "decomposed")
DEFAULT_OPSET = {"onnx20": 20, "custom": 17, "decomposed": 17}
CUSTOM_DOMAIN = "frvd"
CUSTOM_OP = "GridSample3D"
CUSTOM_VERSION = 1
_ONNX_MODES = {"bilinear": "linear", "nearest": "nearest"}


def onnx_mode(mode: str) -> str:
    """torch mode name -> ONNX GridSample mode name (bilinear on 5-D is ONNX "linear")."""
    if mode not in _ONNX_MODES:
        raise ValueError(f"grid_sample3d export: mode must be one of {sorted(_ONNX_MODES)}, got {mode!r}")
    return _ONNX_MODES[mode]


def grid_sample3d_schema() -> OpSchema:
    """Schema of frvd::GridSample3D; the exporter's tracer needs one to build the node.

    It is not registered with onnx globally: models stay checkable by any onnx install.
    """
    return OpSchema(
        CUSTOM_OP,
        CUSTOM_DOMAIN,
        CUSTOM_VERSION,
        doc="torch.nn.functional.grid_sample on [N, C, D, H, W] input and [N, Do, Ho, Wo, 3] grid.",
        inputs=[OpSchema.FormalParameter("X", "T"), OpSchema.FormalParameter("grid", "T")],
        outputs=[OpSchema.FormalParameter("Y", "T")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "input, grid and output type")],
        attributes=[
            OpSchema.Attribute("mode", OpSchema.AttrType.STRING, "linear or nearest"),
            OpSchema.Attribute("padding_mode", OpSchema.AttrType.STRING, "zeros, border or reflection"),
            OpSchema.Attribute("align_corners", OpSchema.AttrType.INT, "0 or 1"),
            OpSchema.Attribute("plugin_namespace", OpSchema.AttrType.STRING, "TensorRT plugin namespace"),
        ],
    )


_GRID_SAMPLE_3D = Op(Opset(CUSTOM_DOMAIN, CUSTOM_VERSION), CUSTOM_OP, op_schema=grid_sample3d_schema())


# Translation functions take the custom op's arguments (names must match its schema).
def standard_translation(
    input: Any, grid: Any, mode: str = "bilinear", padding_mode: str = "zeros", align_corners: bool = False
) -> Any:
    return opset20.GridSample(
        input, grid, mode=onnx_mode(mode), padding_mode=padding_mode, align_corners=int(align_corners)
    )


def custom_translation(
    input: Any, grid: Any, mode: str = "bilinear", padding_mode: str = "zeros", align_corners: bool = False
) -> Any:
    return _GRID_SAMPLE_3D(
        input,
        grid,
        mode=onnx_mode(mode),
        padding_mode=padding_mode,
        align_corners=int(align_corners),
        plugin_namespace=CUSTOM_DOMAIN,
    )


def translation_table(form: str) -> dict[Callable[..., Any], Callable[..., Any]]:
    """custom_translation_table for torch.onnx.export(dynamo=True); empty for "decomposed"."""
    if form == "onnx20":
        return {torch.ops.frvd.grid_sample3d.default: standard_translation}
    if form == "custom":
        return {torch.ops.frvd.grid_sample3d.default: custom_translation}
    if form == "decomposed":
        return {}
    raise ValueError(f"grid_sample3d export form must be one of {FORMS}, got {form!r}")


def export_grid_sample_model(
    model: torch.nn.Module,
    args: tuple[Any, ...],
    path: str | PathLike[str] | None = None,
    form: str = "onnx20",
    opset_version: int | None = None,
    **export_kwargs: Any,
) -> onnx.ModelProto:
    """Export ``model`` (which calls engine.kernels.grid_sample.grid_sample3d) with the chosen form.

    Returns the ModelProto and writes it to ``path`` when given. Extra keyword arguments go
    to ``torch.onnx.export`` (input_names, dynamic_shapes, ...).
    """
    table = translation_table(form)
    opset = DEFAULT_OPSET[form] if opset_version is None else opset_version
    if form == "onnx20" and opset < 20:
        raise ValueError(
            f"5-D GridSample needs opset 20, got {opset}; use form='decomposed' for older opsets"
        )
    impl = "decomposed" if form == "decomposed" else "kernel"
    export_kwargs.setdefault("verbose", False)
    with grid_sample_impl(impl), torch.no_grad():
        program = torch.onnx.export(
            model,
            args,
            dynamo=True,
            opset_version=opset,
            custom_translation_table=table or None,
            **export_kwargs,
        )
    if program is None:  # only the legacy exporter returns None
        raise RuntimeError("torch.onnx.export returned no ONNXProgram")
    proto = program.model_proto
    if path is not None:
        onnx.save(proto, str(path))
    return proto
