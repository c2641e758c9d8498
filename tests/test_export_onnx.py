"""Every tiny graph exports, passes the checker and equals torch on onnxruntime; the pipeline on
onnxruntime equals torch; the official pipeline fixtures reproduce on onnxruntime; 5-D sampling
exports in its three forms."""

from __future__ import annotations

from pathlib import Path

import engines_support
import numpy as np
import onnx
import pytest
import torch

from engine.backends.ort_backend import OrtGraph
from engine.backends.torch_backend import TorchGraph
from engine.config import presets
from engine.graphs.modules import GRAPH_NAMES, GraphOptions, build_specs
from engine.graphs.spec import max_errors
from engine.models.networks import build_tiny
from export.build import BuildConfig, Builder
from export.check import check_onnx
from export.onnx_export import export_module
from export.sources import from_networks

REL_TOL = 1e-4


@pytest.fixture(scope="module")
def tiny_nets():
    return build_tiny(presets.tiny(), 0, "release")


@pytest.fixture(scope="module")
def fixture_job(fixtures_dir: Path) -> engines_support.Job:
    return engines_support.fixture_run(fixtures_dir)


def test_build_report_has_every_graph_within_tolerance(tiny_engines) -> None:
    _, report = tiny_engines
    rows = {r["graph"]: r for r in report["graphs"]}
    assert list(rows) == list(GRAPH_NAMES) and not report["failed"]
    for graph, row in rows.items():
        assert row["artifact"] == "onnx-fp32" and row["passed"], graph
        assert set(row["parity"]) == set(build_specs(presets.tiny(), GraphOptions(image_size=128))[graph].output_names)
        for output, err in row["parity"].items():
            assert err["max_rel"] <= REL_TOL, (graph, output, err)


@pytest.mark.parametrize("graph", GRAPH_NAMES)
def test_graph_passes_checker_and_equals_torch_per_output(graph: str, tiny_engines, tiny_nets) -> None:
    engines, _ = tiny_engines
    spec = build_specs(presets.tiny(), GraphOptions(image_size=128))[graph]
    path = engines / graph / "onnx-fp32" / "model.onnx"
    onnx.checker.check_model(str(path))
    assert (engines / graph / "onnx-fp32" / "model.onnx.data").stat().st_size > 0  # weights as external data
    model = onnx.load(str(path), load_external_data=False)
    assert [i.name for i in model.graph.input] == spec.input_names
    assert [o.name for o in model.graph.output] == spec.output_names
    ours = OrtGraph(spec, path, providers=["CPUExecutionProvider"])
    ref = TorchGraph(spec, spec.factory(tiny_nets))
    feeds = spec.sample_inputs("opt", seed=11)
    got, want = ours.run(feeds), ref.run(feeds)
    for name in spec.output_names:
        assert got[name].shape == want[name].shape
        assert max_errors(got[name], want[name])[1] <= REL_TOL, name


def test_denoiser_takes_any_number_of_windows(tiny_engines, tiny_nets) -> None:
    engines, _ = tiny_engines
    spec = build_specs(presets.tiny(), GraphOptions(image_size=128))["denoiser"]
    ours = OrtGraph(spec, engines / "denoiser" / "onnx-fp32" / "model.onnx", providers=["CPUExecutionProvider"])
    ref = TorchGraph(spec, spec.factory(tiny_nets))
    for windows in (1, 3):
        feeds = spec.sample_inputs("export", seed=5, windows=windows)
        got, want = ours.run(feeds), ref.run(feeds)
        assert got["unet_out"].shape[0] == 2 * windows
        for name in spec.output_names:
            assert max_errors(got[name], want[name])[1] <= REL_TOL, (windows, name)


def test_tiny_pipeline_on_onnxruntime_equals_torch(tiny_engines) -> None:
    engines, _ = tiny_engines
    rng = np.random.default_rng(3)
    source = rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)
    driving = rng.integers(0, 255, (20, 128, 128, 3), dtype=np.uint8)
    from engine.api import EngineOptions, Reenactor, RunOptions

    for window_batch in (1, 2):
        runs = {}
        for backend in ("torch", "onnxruntime"):
            opts = EngineOptions(window_batch=window_batch, backend=backend, engines=engines)
            frames = Reenactor.from_preset("tiny", opts).render(source, driving, options=RunOptions(steps=2)).frames
            runs[backend] = torch.from_numpy(frames).float()
        assert runs["torch"].shape == (20, 128, 128, 3)
        # uint8 frames: float results equal to ~1e-5 may truncate to neighbouring values
        assert (runs["onnxruntime"] - runs["torch"]).abs().max() <= 1


def test_official_pipeline_fixtures_reproduce_on_onnxruntime(fixture_job) -> None:
    out = fixture_job.output
    assert fixture_job.returncode == 0, out[-4000:]
    rows = [line.split() for line in out.splitlines() if line.startswith("pipeline ")]
    names = {r[1] for r in rows}
    assert len(rows) >= 30 and all(r[-1] == "pass" for r in rows)
    assert {"frames", "motion_trunk", "step2_win1_unet_out", "step2_win1_infofill"} <= names
    assert "0 failed" in out


def _warp_module(nets, form: str):
    spec = build_specs(presets.tiny(), GraphOptions(image_size=128, grid_sample=form))["warp"]
    return spec, spec.factory(nets)


def test_plugin_free_warp_exports_at_opset17_without_custom_ops(tmp_path: Path, tiny_nets) -> None:
    spec, module = _warp_module(tiny_nets, "decomposed")
    path = tmp_path / "warp.onnx"
    export_module(spec, module, path, opset=17)
    facts = check_onnx(path, spec)
    model = onnx.load(str(path), load_external_data=False)
    ops = {(n.domain, n.op_type) for n in model.graph.node}
    assert facts["custom_ops"] == [] and all(domain == "" for domain, _ in ops)
    assert ("", "GridSample") not in ops and ("", "Gather") in ops
    assert {o.domain: o.version for o in model.opset_import}[""] == 17
    ours = OrtGraph(spec, path, providers=["CPUExecutionProvider"])
    ref = TorchGraph(spec, module)
    feeds = spec.sample_inputs("export", seed=2)
    got, want = ours.run(feeds), ref.run(feeds)
    for name in spec.output_names:
        assert max_errors(got[name], want[name])[1] <= REL_TOL, name


def test_warp_with_the_plugin_op_is_built_but_not_run_by_onnxruntime(tmp_path: Path, tiny_nets) -> None:
    source = from_networks(tiny_nets, presets.tiny(), "release", {"kind": "test"})
    opts = GraphOptions(image_size=128, grid_sample="custom")
    report = Builder(source, opts, tmp_path, BuildConfig(graphs=("warp",), quiet=True)).run()
    row = report["graphs"][0]
    assert row["status"] == "built" and row["passed"]
    assert "frvd::GridSample3D" in row["parity_note"] and row["max_rel_err"] is None
    model = onnx.load(str(tmp_path / "warp" / "onnx-fp32" / "model.onnx"), load_external_data=False)
    plugin = [n for n in model.graph.node if n.op_type == "GridSample3D"]
    assert plugin and all(n.domain == "frvd" for n in plugin)
    assert not [n for n in model.graph.node if n.op_type == "GridSample"]


def test_verify_cli_passes_on_the_tiny_engines(tiny_engines, capsys) -> None:
    from engine.cli import verify
    engines, _ = tiny_engines
    code = verify.main(["--backend", "onnxruntime", "--engines", str(engines), "--graphs", "warp", "motion"])
    out = capsys.readouterr().out
    assert code == 0, out
    rows = [line.split() for line in out.splitlines() if line.startswith(("warp ", "motion "))]
    assert {r[1] for r in rows} == {"trunk", "head_latents", "pitch", "yaw", "roll", "t", "exp", "scale", "kp"}
    assert all(r[-1] == "pass" and float(r[4]) <= float(r[5]) for r in rows)
    assert torch.is_grad_enabled()  # the CLI's no_grad does not leak into the caller
