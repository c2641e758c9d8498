"""``python -m engine.gpucheck --out report.json``: prove (or disprove) the GPU paths on one CUDA machine.

Run it first on a GPU. Sections, in order (each is timed, each records ``status`` = ok / failed /
skipped with a ``reason``; a failing section never stops the next one):

1. ``environment``  - torch, CUDA runtime, driver, GPU, our kernel library and its CUDA probe,
                      optional packages (onnxruntime providers, tensorrt, cuda-python, PyAV).
2. ``kernel``       - our CUDA grid-sample kernel vs ``F.grid_sample`` for every mode / padding /
                      align_corners in float32 and float16 at LivePortrait's shape, and its speed.
3. ``streams``      - the op on a side stream and inside a CUDA-graph capture, vs eager.
4. ``tiny_pipeline`` - the tiny preset end to end on CUDA in float32/float16/bfloat16 vs CPU float32.
5. ``denoiser``     - the official-size denoiser with random weights: ms per window-step, peak
                      memory and achieved TFLOP/s at 1 and 2 windows per call, fp16 and bf16, eager
                      (and ``torch.compile`` with ``--compile``).
6. ``onnxruntime_gpu`` / ``tensorrt`` - tiny fp16 builds and parity (``engine.cli.build`` +
                      ``engine.cli.verify`` in subprocesses), when those packages are installed.

Needs torch with CUDA and this package's pure-Python dependencies (diffusers, transformers,
safetensors, numpy, pillow, opencv-python-headless, tqdm); PyAV, onnxruntime-gpu and TensorRT are
used when present. Without CUDA every GPU section is skipped with its reason (that is what the CPU
test suite runs). Budget: well under 8 minutes on one GPU.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

SECTIONS = ("environment", "kernel", "streams", "tiny_pipeline", "denoiser", "onnxruntime_gpu", "tensorrt")
LP_INPUT, LP_GRID = (1, 32, 16, 64, 64), (1, 16, 64, 64, 3)  # LivePortrait's warp: volume and grid
TOL = {torch.float32: 1e-4, torch.float16: 2e-2}


class Skip(Exception):
    """A section cannot run here; the message says why."""


def need_cuda() -> None:
    if not torch.cuda.is_available():
        raise Skip(f"no CUDA device (torch {torch.__version__}, built for CUDA {torch.version.cuda})")


def has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.float()
    return float((ours.float() - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


def cuda_time_ms(fn: Callable[[], Any], warmup: int = 2, iters: int = 5) -> float:
    """Median of CUDA-event timings of ``fn``."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


# ----------------------------------------------------------------------------------- sections
def environment() -> dict[str, Any]:
    from engine.kernels import grid_sample as ops
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "packages": {m: has_module(m) for m in ("onnxruntime", "tensorrt", "cuda", "av", "diffusers")},
    }
    if has_module("onnxruntime"):
        import onnxruntime as ort

        info["onnxruntime"] = {"version": ort.__version__, "providers": ort.get_available_providers()}
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        info["nvidia_smi"] = f"unavailable ({exc})"
    lib = ops.load_kernel_library(required=False)
    info["kernel_library"] = {
        "loaded": lib is not None,
        "error": ops._lib_error,
        "has_cuda": bool(lib is not None and lib.frvd_kernels_has_cuda()),
        "cuda_problem": ops.cuda_kernel_problem() if lib is not None else None,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = {"name": props.name, "capability": f"{props.major}.{props.minor}",
                       "memory_gib": round(props.total_memory / 2**30, 1), "count": torch.cuda.device_count()}
    return info


def _kernel_ready() -> None:
    from engine.kernels import grid_sample as ops
    need_cuda()
    if not ops.kernel_library_has_cuda():
        raise Skip(f"libfrvd_kernels.so has no CUDA kernel ({ops._lib_error or 'built without nvcc'}); "
                   "build it with scripts/build_kernels.sh")
    problem = ops.cuda_kernel_problem()
    if problem:
        raise Skip(problem)


def kernel() -> dict[str, Any]:
    from engine.kernels.grid_sample import grid_sample3d, grid_sample_impl

    _kernel_ready()
    gen = torch.Generator("cuda").manual_seed(0)
    x32 = torch.randn(LP_INPUT, device="cuda", generator=gen)
    g32 = torch.rand(LP_GRID, device="cuda", generator=gen) * 2.2 - 1.1  # some taps outside the volume
    cases: list[dict] = []
    worst: dict[str, float] = {}
    for dtype in (torch.float32, torch.float16):
        x, g = x32.to(dtype), g32.to(dtype)
        for mode in ("bilinear", "nearest"):
            for padding in ("zeros", "border", "reflection"):
                for align in (False, True):
                    ref = F.grid_sample(x.float(), g.float(), mode=mode, padding_mode=padding, align_corners=align)
                    with grid_sample_impl("kernel"):
                        ours = grid_sample3d(x, g, mode=mode, padding_mode=padding, align_corners=align)
                    err = rel_err(ours, ref)
                    cases.append({"dtype": str(dtype)[6:], "mode": mode, "padding": padding, "align_corners": align,
                                  "max_rel_err": err, "passed": err <= TOL[dtype]})
                    worst[str(dtype)[6:]] = max(worst.get(str(dtype)[6:], 0.0), err)
    with grid_sample_impl("kernel"):
        ms_kernel = cuda_time_ms(lambda: grid_sample3d(x32, g32, align_corners=False), iters=20)
    ms_torch = cuda_time_ms(lambda: F.grid_sample(x32, g32, align_corners=False), iters=20)
    failed = [c for c in cases if not c["passed"]]
    return {"passed": not failed, "cases": cases, "worst": worst, "ms_kernel": ms_kernel, "ms_torch": ms_torch,
            "speedup_vs_torch": ms_torch / ms_kernel if ms_kernel else None}


def streams() -> dict[str, Any]:
    from engine.kernels.grid_sample import grid_sample3d, grid_sample_impl

    _kernel_ready()
    x = torch.randn(LP_INPUT, device="cuda")
    g = torch.rand(LP_GRID, device="cuda") * 2 - 1
    with grid_sample_impl("kernel"):
        eager = grid_sample3d(x, g)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            on_side = grid_sample3d(x, g)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        warm = torch.cuda.Stream()
        warm.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(warm):
            grid_sample3d(x, g)  # allocations before capture
        torch.cuda.current_stream().wait_stream(warm)
        with torch.cuda.graph(graph):
            captured = grid_sample3d(x, g)
        x.mul_(-1.0)  # replay must see the new input
        graph.replay()
        replay_ref = grid_sample3d(x, g)
    torch.cuda.synchronize()
    side_err, graph_err = rel_err(on_side, eager), rel_err(captured, replay_ref)
    return {"side_stream_rel_err": side_err, "cuda_graph_rel_err": graph_err,
            "passed": side_err == 0.0 and graph_err == 0.0}


def _tiny_frames(device: str, dtype: str) -> Any:
    """Frames of a 2-step tiny run on random media (arrays in and out: no PyAV needed)."""
    import numpy as np

    from engine.api import EngineOptions, Reenactor, RunOptions

    rng = np.random.default_rng(0)
    source = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
    driving = rng.integers(0, 256, (14, 128, 128, 3), dtype=np.uint8)
    with Reenactor.from_preset("tiny", EngineOptions(device=device, dtype=dtype)) as engine:
        return engine.render(source, driving, options=RunOptions(steps=2, seed=0)).frames



def tiny_pipeline() -> dict[str, Any]:
    need_cuda()
    if not has_module("diffusers"):
        raise Skip("diffusers is not installed (the SVD UNet blocks are diffusers modules)")
    ref = _tiny_frames("cpu", "float32").astype("float32")
    out: dict[str, Any] = {}
    for dtype in ("float32", "float16", "bfloat16"):
        t0 = time.perf_counter()
        frames = _tiny_frames("cuda", dtype).astype("float32")
        diff = abs(frames - ref)
        out[dtype] = {"max_abs_8bit": float(diff.max()), "mean_abs_8bit": float(diff.mean()),
                      "seconds": round(time.perf_counter() - t0, 2)}
    # float32 on CUDA must match CPU to a few 8-bit levels; half precisions are reported, not judged
    out["passed"] = out["float32"]["max_abs_8bit"] <= 4
    return out


def _official_denoiser(device: str, dtype: torch.dtype) -> tuple[Any, Any]:
    from engine.config import presets
    from engine.graphs.modules import GraphOptions, build_specs
    from engine.models.networks import build_networks

    model = presets.official()
    spec = build_specs(model, GraphOptions(image_size=512))["denoiser"]
    with torch.device("meta"):
        nets = build_networks(model)
    module = spec.factory(nets).to_empty(device=device)
    if device != "meta":
        gen = torch.Generator(device).manual_seed(0)
        with torch.no_grad():
            for p in module.parameters():
                p.normal_(0.0, 0.02, generator=gen)
        module = module.to(dtype)
    return spec, module.eval()


def count_flops(windows: int) -> int:
    """FLOPs of one official-size denoiser call at ``windows`` windows (meta device, no GPU)."""
    from torch.utils.flop_counter import FlopCounterMode

    spec, module = _official_denoiser("meta", torch.float32)
    feeds = {k: v.to("meta") for k, v in spec.sample_inputs("min", windows=windows).items()}
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(*[feeds[n] for n in spec.input_names])
    return int(counter.get_total_flops())


def denoiser(compile_too: bool = False) -> dict[str, Any]:
    need_cuda()
    out: dict[str, Any] = {}
    for dtype in (torch.float16, torch.bfloat16):
        spec, module = _official_denoiser("cuda", dtype)
        modes = [("eager", module)] + ([("compile", torch.compile(module))] if compile_too else [])
        for mode, fn in modes:
            for windows in (1, 2):
                feeds = spec.sample_inputs("min", windows=windows)
                args = [feeds[n].to("cuda", dtype) for n in spec.input_names]
                torch.cuda.reset_peak_memory_stats()
                with torch.no_grad():
                    ms = cuda_time_ms(functools.partial(fn, *args), warmup=2 if mode == "eager" else 3, iters=3)
                flops = count_flops(windows)
                out[f"{str(dtype)[6:]}/{mode}/{windows}w"] = {
                    "ms_per_call": ms, "ms_per_window_step": ms / windows, "flops": flops,
                    "tflops": flops / (ms / 1e3) / 1e12, "peak_gib": torch.cuda.max_memory_allocated() / 2**30}
        del module
        torch.cuda.empty_cache()
    return out


def _subprocess(cmd: list[str], timeout: float) -> dict[str, Any]:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    return {"cmd": " ".join(cmd[2:]), "rc": done.returncode, "seconds": round(time.perf_counter() - t0, 1),
            "tail": (done.stdout + done.stderr)[-3000:]}


GPU_BUILD_GRAPHS = ["vae_decoder", "image_encoder", "denoiser"]


def onnxruntime_gpu(work: Path) -> dict[str, Any]:
    need_cuda()
    if not has_module("onnxruntime"):
        raise Skip("onnxruntime is not installed")
    import onnxruntime as ort

    providers = ort.get_available_providers()
    if "CUDAExecutionProvider" not in providers:
        raise Skip(f"onnxruntime {ort.__version__} has no CUDA provider ({providers}); install frvd-engine[gpu]")
    return _build_and_verify(work / "ort", "onnx", "onnxruntime", 600)


def tensorrt(work: Path) -> dict[str, Any]:
    need_cuda()
    if not has_module("tensorrt"):
        raise Skip("tensorrt is not installed (pip install 'frvd-engine[trt]')")
    return _build_and_verify(work / "trt", "trt", "tensorrt", 900)


def _build_and_verify(out: Path, target: str, backend: str, build_timeout: int) -> dict[str, Any]:
    """The tiny fp16 graphs built for ``target`` and checked on ``backend``, in subprocesses (the
    build is the export toolchain, which the engine package never imports)."""
    py = [sys.executable, "-m"]
    build = _subprocess(py + ["engine.cli.build", "--preset", "tiny", "--target", target, "--precision", "fp16",
                              "--out", str(out), "--graphs", *GPU_BUILD_GRAPHS, "--quiet"], build_timeout)
    verify = _subprocess(py + ["engine.cli.verify", "--backend", backend, "--engines", str(out),
                               "--precision", "fp16"], 300)
    return {"build": build, "verify": verify, "passed": build["rc"] == 0 and verify["rc"] == 0}


# ----------------------------------------------------------------------------------- runner
def run_section(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
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


def run_all(sections: list[str], work: Path, compile_too: bool = False,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    table: dict[str, Callable[[], dict[str, Any]]] = {
        "environment": environment, "kernel": kernel, "streams": streams, "tiny_pipeline": tiny_pipeline,
        "denoiser": lambda: denoiser(compile_too), "onnxruntime_gpu": lambda: onnxruntime_gpu(work),
        "tensorrt": lambda: tensorrt(work),
    }
    report: dict[str, Any] = {"format": 1, "sections": {}}
    for name in sections:
        result = report["sections"][name] = run_section(name, table[name])
        why = f" ({result['reason']})" if "reason" in result else ""
        log(f"gpucheck: {name:<16} {result['status']:<8} {result['seconds']:>7.1f} s{why}")
    statuses = [s["status"] for s in report["sections"].values()]
    report["summary"] = {k: statuses.count(k) for k in ("ok", "failed", "skipped")}
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine.gpucheck", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="JSON report path")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--compile", action="store_true", help="also time the denoiser under torch.compile")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="frvd-gpucheck-") as work:
        report = run_all(args.sections, Path(work), args.compile)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=str))
    s = report["summary"]
    print(f"gpucheck: {s['ok']} ok, {s['failed']} failed, {s['skipped']} skipped -> {args.out}")
    return 1 if s["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
