"""The sections of ``python -m engine.gpucheck`` (each runs in its own process; see engine.cli.gpucheck).

A section returns a dict (``passed`` False makes it a failure), or raises ``Skip`` with the reason it
cannot run here. What a section needs is checked in this order: the Python packages it imports (a
missing one is named: ``Skip("needs diffusers ...")``), then a CUDA device, then the kernel library.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

LP_INPUT, LP_GRID = (1, 32, 16, 64, 64), (1, 16, 64, 64, 3)  # LivePortrait's warp: volume and grid
TOL = {torch.float32: 1e-4, torch.float16: 2e-2}
MODEL_PACKAGES = ("diffusers", "transformers")  # the SVD / CLIP blocks


class Skip(Exception):
    """A section cannot run here; the message says why."""


def has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def need_modules(*names: str, why: str) -> None:
    missing = [n for n in names if not has_module(n)]
    if missing:
        raise Skip(f"needs {', '.join(missing)} ({why}); import {missing[0]} failed: not installed "
                   "(docs/gpu.md: what a lent box carries, which extra installs it)")


def need_cuda() -> None:
    if not torch.cuda.is_available():
        raise Skip(f"no CUDA device (torch {torch.__version__}, built for CUDA {torch.version.cuda})")


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


def _command(cmd: list[str], timeout: float = 30) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        return (done.stdout or done.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"


# ----------------------------------------------------------------------------------- sections
def environment() -> dict[str, Any]:
    """Versions: driver, nvcc, torch and its CUDA/cuDNN, the GPU, ORT (providers), TensorRT, the kernel."""
    from engine.kernels import grid_sample as ops
    from engine.kernels.build import find_nvcc

    nvcc = find_nvcc()
    info: dict[str, Any] = {
        "python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__,
        "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "nvcc": _command([str(nvcc), "--version"]).splitlines()[-2:] if nvcc else None,
        "compute_sanitizer": shutil.which("compute-sanitizer"),
        "packages": {m: has_module(m) for m in ("onnxruntime", "tensorrt", "cuda", "av", "cv2", *MODEL_PACKAGES)},
        "nvidia_smi": _command(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                "--format=csv,noheader"]),
    }
    if has_module("onnxruntime"):
        import onnxruntime as ort

        info["onnxruntime"] = {"version": ort.__version__, "providers": ort.get_available_providers()}
    if has_module("tensorrt"):
        try:
            import tensorrt as trt

            info["tensorrt"] = trt.__version__
        except Exception as exc:  # a broken install is a finding
            info["tensorrt"] = f"import failed: {exc}"
    lib = ops.load_kernel_library(required=False)
    info["kernel_library"] = {
        "path": os.environ.get(ops.LIB_ENV), "loaded": lib is not None, "error": ops._lib_error,
        "has_cuda": bool(lib is not None and lib.frvd_kernels_has_cuda()),
        "cuda_problem": ops.cuda_kernel_problem() if lib is not None else None,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = {"name": props.name, "capability": f"{props.major}.{props.minor}",
                       "memory_gib": round(props.total_memory / 2**30, 1), "count": torch.cuda.device_count(),
                       "multiprocessors": props.multi_processor_count}
    return info


def kernel_build(work: Path, given: str | None) -> dict[str, Any]:
    """The kernel library the CUDA sections use: ``--kernel PATH`` when given, else compiled here by nvcc
    (torch's CUDA major, this GPU's architecture). The runner passes ``library`` to later sections."""
    if given:
        if not Path(given).is_file():
            return {"passed": False, "reason": f"--kernel {given}: no such file"}
        return {"library": str(Path(given).resolve()), "built": False}
    need_cuda()
    from engine.kernels.build import KernelBuildError, build_library

    capability = torch.cuda.get_device_capability(0)
    try:
        out = build_library(work / "kernel", capability, torch.version.cuda)
    except KernelBuildError as err:
        raise Skip(str(err)) from None
    return {**out, "built": True}


def _kernel_ready() -> None:
    from engine.kernels import grid_sample as ops

    need_cuda()
    if not ops.kernel_library_has_cuda():
        raise Skip(f"libfrvd_kernels.so has no CUDA kernel ({ops._lib_error or 'built without nvcc'}); "
                   "let gpucheck build it (nvcc on PATH) or pass --kernel")
    problem = ops.cuda_kernel_problem()
    if problem:
        raise Skip(problem)


def kernel() -> dict[str, Any]:
    """Our kernel vs F.grid_sample at LivePortrait's warp shape: every mode / padding / align_corners,
    float32 and float16; and its speed against F.grid_sample (float32)."""
    from engine.kernels.grid_sample import grid_sample3d, grid_sample_impl

    _kernel_ready()
    gen = torch.Generator("cuda").manual_seed(0)
    x32 = torch.randn(LP_INPUT, device="cuda", generator=gen)
    g32 = torch.rand(LP_GRID, device="cuda", generator=gen) * 2.2 - 1.1  # some taps outside the volume
    cases: list[dict[str, Any]] = []
    worst: dict[str, float] = {}
    for dtype in (torch.float32, torch.float16):
        x, g = x32.to(dtype), g32.to(dtype)
        name = str(dtype)[6:]
        for mode in ("bilinear", "nearest"):
            for padding in ("zeros", "border", "reflection"):
                for align in (False, True):
                    ref = F.grid_sample(x.float(), g.float(), mode=mode, padding_mode=padding, align_corners=align)
                    with grid_sample_impl("kernel"):
                        ours = grid_sample3d(x, g, mode=mode, padding_mode=padding, align_corners=align)
                    err = rel_err(ours, ref)
                    cases.append({"dtype": name, "mode": mode, "padding": padding, "align_corners": align,
                                  "max_rel_err": err, "passed": err <= TOL[dtype]})
                    worst[name] = max(worst.get(name, 0.0), err)
    with grid_sample_impl("kernel"):
        ms_kernel = cuda_time_ms(lambda: grid_sample3d(x32, g32, align_corners=False), iters=20)
    ms_torch = cuda_time_ms(lambda: F.grid_sample(x32, g32, align_corners=False), iters=20)
    return {"passed": all(c["passed"] for c in cases), "cases": cases, "worst": worst, "ms_kernel": ms_kernel,
            "ms_torch": ms_torch, "speedup_vs_torch": ms_torch / ms_kernel if ms_kernel else None}


SANITIZED_CALLS = """
import torch
from engine.kernels.grid_sample import grid_sample3d, grid_sample_impl
g = torch.Generator("cuda").manual_seed(0)
with grid_sample_impl("kernel"):
    for dtype in (torch.float32, torch.float16):
        for shape, grid in (((1, 3, 4, 5, 6), (1, 2, 3, 4, 3)), ((2, 5, 3, 7, 2), (2, 1, 5, 3, 3))):
            x = torch.randn(shape, device="cuda", generator=g).to(dtype)
            gr = (torch.rand(grid, device="cuda", generator=g) * 3 - 1.5).to(dtype)
            for mode in ("bilinear", "nearest"):
                for padding in ("zeros", "border", "reflection"):
                    for align in (False, True):
                        grid_sample3d(x, gr, mode=mode, padding_mode=padding, align_corners=align)
torch.cuda.synchronize()
print("calls done")
"""


def sanitizer() -> dict[str, Any]:
    """compute-sanitizer memcheck over small kernel calls (every mode/padding, taps far outside)."""
    _kernel_ready()
    tool = shutil.which("compute-sanitizer")
    if tool is None:
        raise Skip("compute-sanitizer is not on PATH")
    cmd = [tool, "--tool", "memcheck", "--error-exitcode", "9", "--target-processes", "all",
           sys.executable, "-c", SANITIZED_CALLS]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    tail = (done.stdout + done.stderr)[-3000:]
    return {"rc": done.returncode, "seconds": round(time.perf_counter() - t0, 1), "tail": tail,
            "passed": done.returncode == 0 and "calls done" in done.stdout}


def streams() -> dict[str, Any]:
    """The op on a side stream and inside a CUDA-graph capture equals eager."""
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


def _tiny_frames(device: str, dtype: str, vae_fp32: bool = False) -> Any:
    """Frames of a 2-step tiny run on random media (arrays in and out: no PyAV, no OpenCV)."""
    import numpy as np

    from engine.api import EngineOptions, Reenactor, RunOptions

    rng = np.random.default_rng(0)
    with Reenactor.from_preset("tiny", EngineOptions(device=device, dtype=dtype, vae_fp32=vae_fp32)) as engine:
        size = engine.cfg.size
        source = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        driving = rng.integers(0, 256, (14, size, size, 3), dtype=np.uint8)
        return engine.render(source, driving, options=RunOptions(steps=2, seed=0)).frames


def _tiny_stream_frames(device: str) -> Any:
    """Frames of a 2-step tiny *stream* (three stage threads; on CUDA each on a stream of its own)."""
    import numpy as np

    from engine.api import EngineOptions, Reenactor, RunOptions

    rng = np.random.default_rng(0)
    with Reenactor.from_preset("tiny", EngineOptions(device=device)) as engine:
        size = engine.cfg.size
        source = engine.set_source(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        with engine.stream(source, RunOptions(steps=2, seed=0)) as stream:
            for frame in rng.integers(0, 256, (20, size, size, 3), dtype=np.uint8):
                stream.push(frame)
            stream.end()
            return np.stack([out.frame for out in sorted(stream.results(), key=lambda o: o.index)])


def tiny_pipeline() -> dict[str, Any]:
    """The tiny preset end to end on CUDA (float32 / float16 / bfloat16, and float16 with the VAE in
    float32) against CPU float32, in 8-bit levels. float32 must match to a few levels."""
    need_modules(*MODEL_PACKAGES, why="the SVD UNet/VAE and CLIP blocks")
    need_cuda()
    ref = _tiny_frames("cpu", "float32").astype("float32")
    out: dict[str, Any] = {}
    for name, dtype, vae32 in (("float32", "float32", False), ("float16", "float16", False),
                               ("bfloat16", "bfloat16", False), ("float16+vae_fp32", "float16", True)):
        t0 = time.perf_counter()
        diff = abs(_tiny_frames("cuda", dtype, vae32).astype("float32") - ref)
        out[name] = {"max_abs_8bit": float(diff.max()), "mean_abs_8bit": float(diff.mean()),
                     "seconds": round(time.perf_counter() - t0, 2)}
    t0 = time.perf_counter()
    diff = abs(_tiny_stream_frames("cuda").astype("float32") - _tiny_stream_frames("cpu").astype("float32"))
    out["stream_float32"] = {"max_abs_8bit": float(diff.max()), "mean_abs_8bit": float(diff.mean()),
                             "seconds": round(time.perf_counter() - t0, 2)}
    # half precisions are reported, not judged; the stream checks the per-stage CUDA streams' hand-offs
    out["passed"] = out["float32"]["max_abs_8bit"] <= 4 and out["stream_float32"]["max_abs_8bit"] <= 4
    return out


def official_denoiser(device: str, dtype: torch.dtype) -> tuple[Any, Any]:
    """The official-size fused denoiser (meta-built, then random weights on ``device``) and its spec."""
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

    spec, module = official_denoiser("meta", torch.float32)
    feeds = {k: v.to("meta") for k, v in spec.sample_inputs("min", windows=windows).items()}
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(*[feeds[n] for n in spec.input_names])
    return int(counter.get_total_flops())


def matmul_peak_tflops(dtype: torch.dtype, n: int = 8192) -> float:
    """Achieved TFLOP/s of an n^3 matrix product: the yardstick the denoiser's rate is read against."""
    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    ms = cuda_time_ms(lambda: a @ b, warmup=3, iters=10)
    return 2 * n**3 / (ms / 1e3) / 1e12


def denoiser(compile_too: bool = False) -> dict[str, Any]:
    """The official-size denoiser with random weights: ms per window-step, peak memory and TFLOP/s at 1
    and 2 windows per call, fp16 and bf16, against a matrix product's TFLOP/s on this GPU."""
    need_modules(*MODEL_PACKAGES, why="the SVD UNet blocks")
    need_cuda()
    out: dict[str, Any] = {}
    for dtype in (torch.float16, torch.bfloat16):
        name = str(dtype)[6:]
        peak = matmul_peak_tflops(dtype)
        out[f"{name}/matmul_tflops"] = peak
        spec, module = official_denoiser("cuda", dtype)
        fns = [("eager", module)] + ([("compile", torch.compile(module))] if compile_too else [])
        for mode, fn in fns:
            for windows in (1, 2):
                feeds = spec.sample_inputs("min", windows=windows)
                args = [feeds[n].to("cuda", dtype) if feeds[n].is_floating_point() else feeds[n].to("cuda")
                        for n in spec.input_names]
                torch.cuda.reset_peak_memory_stats()
                with torch.no_grad():
                    ms = cuda_time_ms(functools.partial(fn, *args), warmup=2 if mode == "eager" else 3, iters=3)
                flops = count_flops(windows)
                tflops = flops / (ms / 1e3) / 1e12
                out[f"{name}/{mode}/{windows}w"] = {
                    "ms_per_call": ms, "ms_per_window_step": ms / windows, "flops": flops, "tflops": tflops,
                    "fraction_of_matmul": tflops / peak, "peak_gib": torch.cuda.max_memory_allocated() / 2**30}
        del module
        torch.cuda.empty_cache()
    return out


def _subprocess(cmd: list[str], timeout: float) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        rc, tail = done.returncode, (done.stdout + done.stderr)[-3000:]
    except subprocess.TimeoutExpired as exc:
        rc, tail = 124, f"timed out after {timeout} s: {str(exc.stdout or '')[-2000:]}"
    return {"cmd": " ".join(cmd[2:]), "rc": rc, "seconds": round(time.perf_counter() - t0, 1), "tail": tail}


GPU_BUILD_GRAPHS = ["vae_decoder", "image_encoder", "denoiser", "wfm_cond", "unet_cond"]


def _build_and_verify(out: Path, target: str, backend: str, build_timeout: int, graphs: list[str],
                      extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """The tiny fp16 graphs built for ``target`` and checked on ``backend`` against torch, in subprocesses
    (the build is the export toolchain, which the engine package never imports)."""
    py = [sys.executable, "-m"]
    build = _subprocess(py + ["engine.cli.build", "--preset", "tiny", "--target", target, "--precision", "fp16",
                              "--out", str(out), "--graphs", *graphs, "--quiet", *extra], build_timeout)
    verify = _subprocess(py + ["engine.cli.verify", "--backend", backend, "--engines", str(out),
                               "--precision", "fp16"], 300)
    return {"build": build, "verify": verify, "passed": build["rc"] == 0 and verify["rc"] == 0}


def onnxruntime_gpu(work: Path) -> dict[str, Any]:
    """Tiny fp16 graphs on onnxruntime's CUDA provider vs torch. The backend asserts that the session
    really runs on the GPU provider it asked for (OrtGraph: no silent CPU fallback)."""
    need_modules("onnxruntime", *MODEL_PACKAGES, why="onnxruntime-gpu; the graphs are exported from the model")
    need_cuda()
    import onnxruntime as ort

    providers = ort.get_available_providers()
    if "CUDAExecutionProvider" not in providers:
        raise Skip(f"onnxruntime {ort.__version__} has no CUDA provider ({providers}); install onnxruntime-gpu "
                   "(frvd-engine[gpu])")
    out = _build_and_verify(work / "ort", "onnx", "onnxruntime", 600, GPU_BUILD_GRAPHS)
    return {"onnxruntime": ort.__version__, **out}


def tensorrt(work: Path) -> dict[str, Any]:
    """Tiny fp16 TensorRT engines (fused denoiser and the turbo mode's split graphs) vs torch."""
    need_modules("tensorrt", *MODEL_PACKAGES, why="TensorRT (frvd-engine[trt-cu12] / [trt-cu13])")
    need_cuda()
    return _build_and_verify(work / "trt", "trt", "tensorrt", 900, GPU_BUILD_GRAPHS)


def trt_plugin(work: Path) -> dict[str, Any]:
    """The warp graph with our ``frvd::GridSample3D`` TensorRT plugin (``--grid-sample custom``) vs torch:
    the plugin registered, the engine built with it and run through the kernel library."""
    need_modules("tensorrt", *MODEL_PACKAGES, why="TensorRT's Python plugin API")
    _kernel_ready()
    return _build_and_verify(work / "trt_plugin", "trt", "tensorrt", 600, ["warp"], ("--grid-sample", "custom"))


# What each section needs before it can do anything: (Python packages, a CUDA device). The runner checks
# this in its own process first, so a section that would only skip costs no child interpreter.
NEEDS: dict[str, tuple[tuple[str, ...], bool]] = {
    "environment": ((), False), "kernel_build": ((), True), "kernel": ((), True), "sanitizer": ((), True),
    "streams": ((), True), "tiny_pipeline": (MODEL_PACKAGES, True), "denoiser": (MODEL_PACKAGES, True),
    "onnxruntime_gpu": (("onnxruntime", *MODEL_PACKAGES), True), "tensorrt": (("tensorrt", *MODEL_PACKAGES), True),
    "trt_plugin": (("tensorrt", *MODEL_PACKAGES), True),
}


def precheck(name: str, kernel_lib: str | None = None) -> None:
    """``Skip`` when ``name`` cannot run here for want of a package or a device (a given ``--kernel``
    needs neither for kernel_build)."""
    modules, cuda = NEEDS[name]
    if name == "kernel_build" and kernel_lib:
        return
    if modules:
        need_modules(*modules, why=f"the {name} section")
    if cuda:
        need_cuda()


def sections(work: Path, kernel_lib: str | None, compile_too: bool) -> dict[str, Callable[[], dict[str, Any]]]:
    """Section name -> the call that runs it (the runner's table, in the order they run)."""
    return {
        "environment": environment,
        "kernel_build": lambda: kernel_build(work, kernel_lib),
        "kernel": kernel,
        "sanitizer": sanitizer,
        "streams": streams,
        "tiny_pipeline": tiny_pipeline,
        "denoiser": lambda: denoiser(compile_too),
        "onnxruntime_gpu": lambda: onnxruntime_gpu(work),
        "tensorrt": lambda: tensorrt(work),
        "trt_plugin": lambda: trt_plugin(work),
    }
