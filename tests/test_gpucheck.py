"""engine.cli.gpucheck's CPU-side logic: sections skip with reasons without CUDA (exit 0), each section
runs in its own process (a hang or crash is that section's failure), ``--require-kernel`` fails with
one clear line, the kernel builder picks the right nvcc and flags, and the FLOP count works on meta."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine.cli import gpu_sections, gpucheck
from engine.kernels import build as kbuild

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="asserts what a machine without CUDA reports")


def test_every_cuda_section_skips_here_with_its_reason(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "report.json"
    rc = gpucheck.main(["--out", str(out)])  # isolated: environment in a child, the rest skip in the parent
    report = json.loads(out.read_text())
    sections = report["sections"]
    assert rc == 0 and report["isolated"] and list(sections) == list(gpucheck.SECTIONS)
    assert sections["environment"]["status"] == "ok" and sections["environment"]["torch"] == torch.__version__
    for name in gpucheck.SECTIONS[1:]:
        assert sections[name]["status"] == "skipped", (name, sections[name])
        reason = sections[name]["reason"]
        # a missing package is named first (tensorrt, onnxruntime-gpu's provider), else the missing device
        assert "CUDA" in reason or "tensorrt" in reason, (name, reason)
    assert report["summary"] == {"ok": 1, "failed": 0, "skipped": len(gpucheck.SECTIONS) - 1}
    assert "gpucheck: kernel_build" in capsys.readouterr().out


def test_require_kernel_fails_with_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "report.json"
    rc = gpucheck.main(["--out", str(out), "--sections", "kernel_build", "kernel", "--require-kernel"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == gpucheck.REQUIRE_KERNEL_EXIT != 0
    assert len(err) == 1 and err[0].startswith("error: --require-kernel: no usable CUDA grid-sample kernel")
    assert "no CUDA device" in err[0]
    assert json.loads(out.read_text())["kernel_problem"]  # the report says it too


def test_a_section_that_hangs_or_dies_is_that_sections_failure(tmp_path: Path) -> None:
    hung = gpucheck.run_isolated("environment", tmp_path, None, False, timeout=0.01)
    assert hung["status"] == "failed" and "timed out" in hung["reason"]


def test_in_process_mode_gives_the_same_verdicts(tmp_path: Path) -> None:
    report = gpucheck.run_all(["kernel", "tensorrt"], tmp_path, isolated=False, log=lambda _: None)
    assert [s["status"] for s in report["sections"].values()] == ["skipped", "skipped"]
    assert "tensorrt" in report["sections"]["tensorrt"]["reason"]  # the package is named before the device


def test_a_missing_package_is_named_before_the_device() -> None:
    with pytest.raises(gpu_sections.Skip, match="needs definitely_not_installed_pkg"):
        gpu_sections.need_modules("definitely_not_installed_pkg", why="a test")


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


# ----------------------------------------------------------------------------------- kernel builder
def test_nvcc_version_and_major_check(tmp_path: Path) -> None:
    assert kbuild.parse_nvcc_version("Cuda compilation tools, release 12.8, V12.8.93") == "12.8"
    with pytest.raises(kbuild.KernelBuildError, match="cannot read"):
        kbuild.parse_nvcc_version("garbage")
    nvcc13 = kbuild.Toolkit(tmp_path / "nvcc", "13.0")
    kbuild.check_toolkit(nvcc13, "13.0")
    kbuild.check_toolkit(nvcc13, "13.2")  # same major: minor-version compatibility
    with pytest.raises(kbuild.KernelBuildError, match="CUDA 13, torch runs CUDA 12.8"):
        kbuild.check_toolkit(nvcc13, "12.8")
    with pytest.raises(kbuild.KernelBuildError, match="without CUDA"):
        kbuild.check_toolkit(nvcc13, None)


def test_build_command_targets_the_gpus_own_architecture(tmp_path: Path) -> None:
    cmd = kbuild.build_command(Path("/opt/cuda/bin/nvcc"), (8, 9), tmp_path / "lib.so")
    assert "-gencode=arch=compute_89,code=sm_89" in cmd and "-gencode=arch=compute_89,code=compute_89" in cmd
    assert "--cudart=static" in cmd and "-DFRVD_WITH_CUDA=1" in cmd
    sources = [Path(c) for c in cmd if c.endswith((".cpp", ".cu"))]
    assert sources and all(s.is_file() for s in sources)  # the sources the command names exist


def test_find_nvcc_prefers_an_explicit_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "bin" / "nvcc"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 12.6, V12.6.1'\n")
    fake.chmod(0o755)
    assert kbuild.find_nvcc(fake) == fake
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    assert kbuild.find_nvcc() == fake
    assert kbuild.nvcc_version(fake) == "12.6"


@pytest.mark.slow
def test_official_denoiser_flops_on_meta() -> None:
    one, two = gpucheck.count_flops(1), gpucheck.count_flops(2)
    assert 1e13 < one < 1e15  # tens of TFLOP per window (CFG pair) at 512^2
    assert two == pytest.approx(2 * one, rel=0.05)
