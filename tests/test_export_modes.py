"""The fast modes' split graphs on onnxruntime: wfm -> unet must equal the fused torch denoiser.

Exporting the two tiny graphs takes minutes on a 2-core CPU, so this runs only when asked:
``FRVD_EXPORT_MODES=1 python -m pytest tests/test_export_modes.py``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("FRVD_EXPORT_MODES") != "1", reason="set FRVD_EXPORT_MODES=1 (minutes)"),
]


def test_split_graphs_on_onnxruntime_equal_the_fused_denoiser(tmp_path: Path) -> None:
    from engine.backends.ort_backend import OrtGraph
    from engine.config import presets
    from engine.graphs.modules import ALL_GRAPH_NAMES, GraphOptions, build_specs
    from engine.graphs.spec import max_errors
    from engine.models.networks import build_tiny
    from export.onnx_export import export_module

    specs = build_specs(presets.tiny(), GraphOptions(image_size=128), ALL_GRAPH_NAMES)
    nets = build_tiny(presets.tiny(), 0, "release")
    runners = {}
    for name in ("wfm", "unet"):
        path = tmp_path / name / "model.onnx"
        path.parent.mkdir()
        export_module(specs[name], specs[name].factory(nets), path)
        runners[name] = OrtGraph(specs[name], path, providers=["CPUExecutionProvider"])
    feeds = specs["denoiser"].sample_inputs("export", seed=3)
    with torch.no_grad():
        fused = specs["denoiser"].factory(nets)(*(feeds[n] for n in specs["denoiser"].input_names))
    parts = runners["wfm"].run(feeds)
    names = specs["unet"].input_names
    unet = runners["unet"].run({**{n: feeds[n] for n in names[:4]}, **{n: parts[n] for n in names[4:]}})
    errors = {"unet_out": max_errors(unet["unet_out"], fused[0])[1],
              "infofill": max_errors(parts["infofill"], fused[1])[1]}
    print("split graphs on onnxruntime vs fused torch (max rel):", errors)
    assert max(errors.values()) <= 1e-4, errors
