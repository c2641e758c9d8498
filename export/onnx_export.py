"""One spec -> one ONNX file (+ external data), through ``torch.export`` and the dynamo exporter.

Steps: trace with ``torch.export.export(strict=False)`` using the spec's dynamic dims, translate
with ``torch.onnx.export(dynamo=True)`` at the spec's opset (5-D sampling in the spec's form,
see export/grid_sample_onnx.py; attention as the target's fused op, see export/attention_onnx.py),
run a light optimisation, give the graph's inputs and outputs
the spec's names and symbolic dims, and save the weights as external data (full-size graphs
exceed protobuf's 2 GB limit).

The exporter's default optimiser is skipped on purpose: its pattern rewriter is quadratic in the
node count (10 minutes on the tiny denoiser's 19k nodes); constant folding, dead-node removal and
initializer deduplication give the same graph minus the fused-op patterns that onnxruntime and
TensorRT find by themselves.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import onnx_ir as ir
import onnx_ir.passes.common as common_passes
import torch
import torch.nn.functional as F
from diffusers.models.upsampling import Upsample2D
from torch import nn

from engine.graphs.spec import GraphSpec
from export import attention_onnx

log = logging.getLogger(__name__)

DATA_SUFFIX = ".data"


def _upsample_forward(self: Upsample2D, hidden_states: torch.Tensor, output_size: int | None = None,
                      *args: object, **kwargs: object) -> torch.Tensor:
    """diffusers' Upsample2D for the configuration SVD uses, minus its batch-size branch.

    The original calls ``.contiguous()`` when ``batch >= 64`` (a CUDA kernel workaround); the
    branch does not change values, but under torch.export it guards the denoiser's dynamic batch
    to one side of 64 frames. Other configurations run the original forward.
    """
    simple = self.use_conv and self.interpolate and not self.use_conv_transpose and self.norm is None
    if not simple or output_size is not None or args or kwargs:
        return _ORIGINAL_UPSAMPLE(self, hidden_states, output_size, *args, **kwargs)
    hidden_states = F.interpolate(hidden_states, scale_factor=2.0, mode="nearest")
    return self.conv(hidden_states) if self.name == "conv" else self.Conv2d_0(hidden_states)


_ORIGINAL_UPSAMPLE = Upsample2D.forward


@contextlib.contextmanager
def export_patches() -> Iterator[None]:
    """Export-friendly forwards for library modules with shape-dependent Python branches."""
    Upsample2D.forward = _upsample_forward
    try:
        yield
    finally:
        Upsample2D.forward = _ORIGINAL_UPSAMPLE


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter logs a warning per optional torchvision op it cannot register; none concern us."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecation chatter from torch.export / onnxscript
            yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def _grid_sample_form(form: str | None) -> Iterator[dict]:
    """Trace 5-D sampling as the form needs; yields the exporter's custom translation table."""
    if form is None:
        yield {}
        return
    from engine.kernels.grid_sample import grid_sample_impl
    from export.grid_sample_onnx import translation_table

    # onnx20/custom trace the kernel op (its fake kernel gives the shape) and translate it.
    with grid_sample_impl("decomposed" if form == "decomposed" else "kernel"):
        yield translation_table(form)


def light_optimize(model: ir.Model) -> None:
    """Constant folding and clean-up, without the exporter's slow pattern rewriter."""
    from onnxscript.optimizer import fold_constants

    common_passes.InlinePass()(model)
    fold_constants(model)
    for p in (
        common_passes.RemoveUnusedNodesPass(),
        common_passes.RemoveUnusedFunctionsPass(),
        common_passes.RemoveUnusedOpsetsPass(),
        common_passes.LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=1024),
        common_passes.DeduplicateInitializersPass(),
    ):
        p(model)


def _name_io(model: ir.Model, spec: GraphSpec) -> None:
    """The spec's tensor names and symbolic dims on the graph's inputs and outputs."""
    graph = model.graph
    if [v.name for v in graph.inputs] != spec.input_names:
        raise RuntimeError(f"{spec.name}: exported inputs {[v.name for v in graph.inputs]} != {spec.input_names}")
    if len(graph.outputs) != len(spec.outputs):
        raise RuntimeError(f"{spec.name}: exported {len(graph.outputs)} outputs, the spec has {len(spec.outputs)}")
    for value, t in zip([*graph.inputs, *graph.outputs], [*spec.inputs, *spec.outputs]):
        value.name = t.name
        value.shape = ir.Shape(spec.onnx_shape(t))


def export_module(spec: GraphSpec, module: nn.Module, path: Path, opset: int | None = None,
                  attention: str = "mha") -> ir.Model:
    """Export ``module`` (spec.factory(nets)) to ``path`` with its weights in ``path + '.data'``.

    ``attention`` is the form of every scaled-dot-product attention (attention_onnx.FORMS); the
    opset is raised to what that form needs (23 for "onnx23").
    """
    module = module.eval()
    sample = spec.sample_inputs("export")
    args = tuple(sample[n] for n in spec.input_names)
    opset = attention_onnx.export_opset(attention, opset or spec.opset)
    attention_table = attention_onnx.translation_table(attention)
    with torch.no_grad(), export_patches(), _quiet_exporter(), _grid_sample_form(spec.grid_sample) as table:
        program = torch.export.export(module, args, dynamic_shapes=spec.dynamic_shapes(), strict=False)
        onnx_program = torch.onnx.export(
            program,
            args,
            dynamo=True,
            opset_version=opset,
            custom_translation_table={**table, **attention_table} or None,
            optimize=False,
            verbose=False,
        )
    if onnx_program is None:  # torch.onnx.export returns None only for the legacy (TorchScript) exporter
        raise RuntimeError(f"torch.onnx.export returned no program for {spec.name}")
    model = onnx_program.model
    light_optimize(model)
    attention_onnx.trim_attention_outputs(model)
    _name_io(model, spec)
    model.graph.name = spec.name
    model.producer_name = "frvd-engine"
    path.parent.mkdir(parents=True, exist_ok=True)
    ir.save(model, path, external_data=path.name + DATA_SUFFIX)
    return model
