"""fp16 ONNX graphs: the sinusoidal embeddings stay float32, and every fp16 graph of the tiny
preset passes parity against the torch float32 modules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from diffusers.models.embeddings import Timesteps
from torch import nn

from export import check


class _PositionTable(nn.Module):
    """The WFM's token-position embedding: sin/cos of every token index, then a projection."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = Timesteps(16, True, 0)
        self.linear = nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(x.shape[1], device=x.device)
        return x + self.linear(self.proj(positions))[None]


def test_sinusoidal_table_stays_fp32(tmp_path: Path) -> None:
    import onnxruntime as ort

    tokens = 4096  # positions above 2048 collide in fp16
    x = torch.zeros(1, tokens, 8)
    program = torch.onnx.export(_PositionTable().eval(), (x,), dynamo=True, optimize=False, verbose=False)
    src, dst = tmp_path / "fp32.onnx", tmp_path / "fp16.onnx"
    program.save(str(src))
    check.to_fp16(src, dst)
    model = onnx.load(str(dst))
    blocked = set(check.fp32_nodes(onnx.load(str(src))))
    assert any("sin" in n for n in blocked)
    session = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    table = torch.from_numpy(out[0]).float()
    # fp16 positions would give runs of identical rows; fp32 positions keep every row distinct
    assert len(np.unique(table.numpy().round(3), axis=0)) > tokens * 0.99
    sins = [n for n in model.graph.node if n.op_type == "Sin"]
    assert sins and all(n.name in blocked for n in sins)


@pytest.mark.slow
def test_every_fp16_graph_passes_parity(tiny_engines) -> None:
    """Converts the session's fp32 artifacts (the build's own fp16 path) and checks parity."""
    from engine.backends.ort_backend import OrtGraph
    from engine.graphs.modules import GraphOptions, build_specs
    from export.sources import from_preset

    engines, report = tiny_engines
    source = from_preset("tiny", None, 0, "release")
    specs = build_specs(source.model, GraphOptions(**report["options"]))
    nets = source.networks()
    for name, spec in specs.items():
        if spec.fp32_only:  # the LivePortrait graphs are never converted
            continue
        dst = engines.parent / "fp16" / name / "model.onnx"
        dst.parent.mkdir(parents=True, exist_ok=True)
        check.to_fp16(engines / name / "onnx-fp32" / "model.onnx", dst)
        runner = OrtGraph(spec, dst, providers=["CPUExecutionProvider"])
        with torch.no_grad():
            errors = check.parity(spec, spec.factory(nets), runner, points=["export"])
        assert check.worst(errors) <= spec.tol("fp16"), (name, errors)
