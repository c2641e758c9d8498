"""ONNX export of engine.kernels.grid_sample.grid_sample3d: opset-20 GridSample, frvd::GridSample3D, decomposition."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from engine.kernels import grid_sample as ops
from export.grid_sample_onnx import CUSTOM_DOMAIN, CUSTOM_OP, export_grid_sample_model, onnx_mode

CONFIGS = list(itertools.product(["bilinear", "nearest"], ["zeros", "border", "reflection"], [False, True]))


class AllConfigs(torch.nn.Module):
    """A small warping-like module: scale, sample with every configuration, shift."""

    def __init__(self, configs: list[tuple[str, str, bool]]) -> None:
        super().__init__()
        self.configs = configs

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(ops.grid_sample3d(x * 2, g, m, p, a) + 1 for m, p, a in self.configs)


def _reference(x: torch.Tensor, g: torch.Tensor, configs: list[tuple[str, str, bool]]) -> list[np.ndarray]:
    return [
        (F.grid_sample(x * 2, g, mode=m, padding_mode=p, align_corners=a) + 1).numpy() for m, p, a in configs
    ]


def _run(model: onnx.ModelProto, *inputs: torch.Tensor) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs, strict=True)})


def _data(shape: tuple[int, ...] = (2, 3, 4, 5, 6), out: tuple[int, ...] = (3, 4, 5), seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen)
    g = torch.rand((shape[0], *out, 3), generator=gen) * 3 - 1.5  # a third of the points outside
    return x, g


def _opsets(model: onnx.ModelProto) -> dict[str, int]:
    return {o.domain: o.version for o in model.opset_import}


def test_onnx20_form_runs_in_onnxruntime() -> None:
    x, g = _data()
    model = export_grid_sample_model(AllConfigs(CONFIGS), (x, g), form="onnx20")
    samplers = [n for n in model.graph.node if n.op_type == "GridSample"]
    assert len(samplers) == len(CONFIGS) and all(n.domain == "" for n in samplers)
    assert _opsets(model)[""] == 20
    modes = sorted(
        {onnx.helper.get_attribute_value(a) for n in samplers for a in n.attribute if a.name == "mode"}
    )
    assert modes == [b"linear", b"nearest"]
    for got, ref in zip(_run(model, x, g), _reference(x, g, CONFIGS), strict=True):
        np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-5)


def test_decomposition_exports_at_opset17_without_custom_ops() -> None:
    x, g = _data()
    model = export_grid_sample_model(AllConfigs(CONFIGS), (x, g), form="decomposed")
    assert _opsets(model) == {"": 17}
    assert {n.domain for n in model.graph.node} == {""}
    assert not model.functions
    op_types = {n.op_type for n in model.graph.node}
    assert "GridSample" not in op_types and "Gather" in op_types
    onnx.checker.check_model(model, full_check=True)
    for got, ref in zip(_run(model, x, g), _reference(x, g, CONFIGS), strict=True):
        np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-5)


def test_custom_form_passes_checker_and_carries_attributes() -> None:
    configs = [("bilinear", "zeros", False), ("nearest", "reflection", True)]
    x, g = _data()
    model = export_grid_sample_model(AllConfigs(configs), (x, g), form="custom")
    onnx.checker.check_model(model, full_check=True)
    assert _opsets(model)[CUSTOM_DOMAIN] == 1
    nodes = [n for n in model.graph.node if n.domain == CUSTOM_DOMAIN]
    assert [n.op_type for n in nodes] == [CUSTOM_OP, CUSTOM_OP]
    for node, (mode, padding, align) in zip(nodes, configs, strict=True):
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs == {
            "mode": onnx_mode(mode).encode(),
            "padding_mode": padding.encode(),
            "align_corners": int(align),
            "plugin_namespace": CUSTOM_DOMAIN.encode(),
        }
    shape = [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert shape == [2, 3, 3, 4, 5]


@pytest.mark.parametrize("form", ["onnx20", "decomposed"])
def test_liveportrait_warp_shape_in_onnxruntime(form: str, tmp_path: Path) -> None:
    config = [("bilinear", "zeros", False)]
    x, g = _data((1, 32, 16, 64, 64), (16, 64, 64), seed=3)
    path = tmp_path / f"warp_{form}.onnx"
    model = export_grid_sample_model(AllConfigs(config), (x, g), path=path, form=form)
    assert onnx.load(str(path)) == model
    (got,) = _run(model, x, g)
    np.testing.assert_allclose(got, _reference(x, g, config)[0], atol=1e-5, rtol=1e-5)


def test_export_rejects_unknown_form_and_old_opset_for_gridsample() -> None:
    x, g = _data()
    module = AllConfigs(CONFIGS[:1])
    with pytest.raises(ValueError, match="form"):
        export_grid_sample_model(module, (x, g), form="plugin")
    with pytest.raises(ValueError, match="opset 20"):
        export_grid_sample_model(module, (x, g), form="onnx20", opset_version=17)
    with pytest.raises(ValueError, match="mode"):
        onnx_mode("bicubic")
