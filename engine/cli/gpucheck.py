"""``python -m engine.gpucheck --out report.json``: prove (or disprove) the GPU paths on one CUDA machine.

Run it first on a GPU (scripts/gpu_selfcheck.sh runs it on a freshly lent box). Sections, in order; each
runs in its own process (a fatal CUDA error or a crash ends that section only), is timed, and records
``status`` = ok / failed / skipped with a ``reason``:

1. ``environment``     driver, nvcc, torch CUDA/cuDNN, GPU, onnxruntime (providers), TensorRT, PyAV,
                       diffusers/transformers, our kernel library and its CUDA probe.
2. ``kernel_build``    the kernel library the CUDA sections use: ``--kernel PATH``, else compiled here by
                       nvcc (its CUDA major must be torch's; machine code for this GPU's architecture).
3. ``kernel``          our CUDA grid-sample kernel vs ``F.grid_sample`` at LivePortrait's shape (every
                       mode / padding / align_corners, float32 and float16) and its speed ratio.
4. ``sanitizer``       compute-sanitizer memcheck over small kernel calls, when it is installed.
5. ``streams``         the op on a side stream and inside a CUDA-graph capture, vs eager.
6. ``tiny_pipeline``   the tiny preset end to end on CUDA (float32/float16/bfloat16, float16 + fp32 VAE)
                       vs CPU float32; arrays in and out (no PyAV, no OpenCV).
7. ``denoiser``        the official-size denoiser (random weights): ms per window-step, peak memory,
                       TFLOP/s against a matrix product's on this GPU (``--compile``: torch.compile too).
8. ``onnxruntime_gpu`` tiny fp16 graphs on onnxruntime's CUDA provider vs torch (providers asserted).
9. ``tensorrt``        tiny fp16 engines (fused denoiser, turbo's split graphs) vs torch.
10. ``trt_plugin``     the warp graph through our ``frvd::GridSample3D`` TensorRT plugin vs torch.

A section whose Python package is missing is skipped with the import named; without CUDA every CUDA
section is skipped with its reason (exit 0). ``--require-kernel`` makes a missing or unusable CUDA
kernel a failure (exit 3, one clear line). Exit 1 when any section failed. Budget: a few minutes.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.cli.gpu_sections import Skip, count_flops, precheck, rel_err, sections

SECTIONS = ("environment", "kernel_build", "kernel", "sanitizer", "streams", "tiny_pipeline", "denoiser",
            "onnxruntime_gpu", "tensorrt", "trt_plugin")
KERNEL_SECTIONS = ("kernel_build", "kernel")  # what --require-kernel reads
TIMEOUT_S = {"denoiser": 300, "onnxruntime_gpu": 900, "tensorrt": 1200, "trt_plugin": 900, "sanitizer": 300}
DEFAULT_TIMEOUT_S = 240
REQUIRE_KERNEL_EXIT = 3
__all__ = ["SECTIONS", "Skip", "count_flops", "main", "rel_err", "run_all", "run_section"]


def run_section(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """One section in this process: its dict with ``status`` and ``seconds`` (never raises)."""
    t0 = time.perf_counter()
    try:
        result = {"status": "ok", **fn()}
        if result.get("passed") is False:
            result["status"] = "failed"
    except Skip as why:
        result = {"status": "skipped", "reason": str(why)}
    except Exception as exc:  # a broken section is a finding, not the end of the check
        result = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}",
                  "traceback": traceback.format_exc()[-4000:]}
    result["seconds"] = round(time.perf_counter() - t0, 2)
    return result


def run_isolated(name: str, work: Path, kernel: str | None, compile_too: bool, timeout: float) -> dict[str, Any]:
    """``name`` in a child interpreter (``--child``); a crash or a hang is that section's failure."""
    out = work / f"section-{name}.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "engine.cli.gpucheck", "--child", name, "--out", str(out), "--work", str(work)]
    cmd += ["--compile"] if compile_too else []
    env = dict(os.environ)
    if kernel and name != "kernel_build":
        env["FRVD_KERNEL_LIB"] = kernel
    elif kernel:
        cmd += ["--kernel", kernel]
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        rc, tail = done.returncode, (done.stdout + done.stderr)[-3000:]
    except subprocess.TimeoutExpired as exc:
        rc, tail = 124, f"{str(exc.stdout or '')[-1500:]}{str(exc.stderr or '')[-1500:]}"
    if out.is_file():
        return json.loads(out.read_text())
    return {"status": "failed", "reason": f"the section's process ended with exit {rc} and no result"
            + (f" (timed out after {timeout:.0f} s)" if rc == 124 else ""), "output_tail": tail,
            "seconds": round(time.perf_counter() - t0, 2)}


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically (a reader, or a run killed half-way, never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(path)


def run_all(names: list[str], work: Path, kernel: str | None = None, compile_too: bool = False,
            isolated: bool = True, log: Callable[[str], None] = print, out: Path | None = None) -> dict[str, Any]:
    """Every section of ``names`` in order; ``kernel_build``'s library is handed to the later ones. With
    ``out`` the report is rewritten after each section (a run stopped by a time limit keeps what finished)."""
    report: dict[str, Any] = {"format": 2, "isolated": isolated, "sections": {}}
    for name in names:
        if isolated:
            skipped = run_section(name, functools.partial(_precheck, name, kernel))  # no child for a skip
            result = skipped if skipped["status"] == "skipped" else run_isolated(
                name, work, kernel, compile_too, TIMEOUT_S.get(name, DEFAULT_TIMEOUT_S))
        else:
            result = run_section(name, sections(work, kernel, compile_too)[name])
        report["sections"][name] = result
        if name == "kernel_build" and result.get("library"):
            kernel = str(result["library"])
            if not isolated:  # this process loads the library from here on
                from engine.kernels import grid_sample as ops

                os.environ[ops.LIB_ENV] = kernel
                ops._reset_kernel_library()
        why = f" ({result['reason']})" if "reason" in result else ""
        log(f"gpucheck: {name:<16} {result['status']:<8} {result['seconds']:>7.1f} s{why}")
        report["kernel_library"] = kernel
        statuses = [s["status"] for s in report["sections"].values()]
        report["summary"] = {k: statuses.count(k) for k in ("ok", "failed", "skipped")}
        if out is not None:
            write_json(out, report)
    return report


def _precheck(name: str, kernel: str | None) -> dict[str, Any]:
    precheck(name, kernel)
    return {}


def kernel_problem(report: dict[str, Any]) -> str | None:
    """Why there is no usable CUDA kernel (for ``--require-kernel``), or None when the kernel section passed."""
    found = report["sections"]
    for name in ("kernel", "kernel_build"):
        s = found.get(name)
        if s is None:
            continue
        if s["status"] == "ok" and name == "kernel":
            return None
        if s["status"] != "ok":
            return f"{name} {s['status']}: {s.get('reason', 'see the report')}"
    return "the kernel section did not run (add it to --sections)"


def _child(args: argparse.Namespace) -> int:
    """One section in this process, its result written to ``--out`` (the parent reads it)."""
    write_json(args.out, run_section(args.child, sections(args.work, args.kernel, args.compile)[args.child]))
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m engine.gpucheck", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="JSON report path")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--kernel", default=None, help="use this libfrvd_kernels.so instead of building one here")
    p.add_argument("--require-kernel", action="store_true",
                   help="a missing or unusable CUDA kernel is a failure (exit 3)")
    p.add_argument("--compile", action="store_true", help="also time the denoiser under torch.compile")
    p.add_argument("--work", type=Path, default=None, help="folder for the built kernel and graphs (kept)")
    p.add_argument("--in-process", action="store_true", help="run every section in this process (debugging)")
    p.add_argument("--child", choices=SECTIONS, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return _child(args)
    with tempfile.TemporaryDirectory(prefix="frvd-gpucheck-") as tmp:
        work = (args.work or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        report = run_all(args.sections, work, args.kernel, args.compile, isolated=not args.in_process, out=args.out)
    report["require_kernel"] = args.require_kernel
    problem = kernel_problem(report) if args.require_kernel else None
    report["kernel_problem"] = problem
    write_json(args.out, report)
    s = report["summary"]
    print(f"gpucheck: {s['ok']} ok, {s['failed']} failed, {s['skipped']} skipped -> {args.out}")
    if problem:
        print(f"error: --require-kernel: no usable CUDA grid-sample kernel ({problem})", file=sys.stderr)
        return REQUIRE_KERNEL_EXIT
    return 1 if s["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
