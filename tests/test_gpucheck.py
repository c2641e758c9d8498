"""engine.cli.gpucheck's CPU-side logic: sections skip with reasons without CUDA, failures are
recorded (not raised), the JSON report is written, and the FLOP count works on the meta device."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine.cli import gpucheck


def test_runs_here_and_writes_its_report(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "report.json"
    rc = gpucheck.main(["--out", str(out)])
    report = json.loads(out.read_text())
    sections = report["sections"]
    assert list(sections) == list(gpucheck.SECTIONS)
    assert sections["environment"]["status"] == "ok" and "torch" in sections["environment"]
    if not torch.cuda.is_available():
        assert rc == 0
        for name in gpucheck.SECTIONS[1:]:
            assert sections[name]["status"] == "skipped" and "CUDA" in sections[name]["reason"]
    assert "gpucheck:" in capsys.readouterr().out


def test_section_outcomes() -> None:
    def skip() -> dict:
        raise gpucheck.Skip("tensorrt is not installed")

    def boom() -> dict:
        raise RuntimeError("kernel mismatch")

    assert gpucheck.run_section("a", skip) | {"seconds": 0} == {"status": "skipped",
                                                               "reason": "tensorrt is not installed", "seconds": 0}
    failed = gpucheck.run_section("b", boom)
    assert failed["status"] == "failed" and "kernel mismatch" in failed["reason"] and "traceback" in failed
    assert gpucheck.run_section("c", lambda: {"passed": False})["status"] == "failed"
    assert gpucheck.run_section("d", lambda: {"passed": True, "x": 1})["status"] == "ok"


def test_rel_err() -> None:
    ref = torch.tensor([1.0, -2.0, 4.0])
    assert gpucheck.rel_err(ref.clone(), ref) == 0.0
    assert gpucheck.rel_err(ref + torch.tensor([0.0, 0.0, 0.4]), ref) == pytest.approx(0.1)


@pytest.mark.slow
def test_official_denoiser_flops_on_meta() -> None:
    one, two = gpucheck.count_flops(1), gpucheck.count_flops(2)
    assert 1e13 < one < 1e15  # tens of TFLOP per window (CFG pair) at 512^2
    assert two == pytest.approx(2 * one, rel=0.05)
