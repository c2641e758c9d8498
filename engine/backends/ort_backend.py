"""onnxruntime: one InferenceSession per exported graph, run through IOBinding.

Inputs are bound in place (torch tensors, no copy); outputs are preallocated torch tensors of
the shape the spec gives for the call's dims, so onnxruntime writes straight into memory the
caller owns. Execution providers: TensorRT and CUDA when this onnxruntime build has them (the
``[gpu]`` extra installs onnxruntime-gpu), CPU otherwise. On a GPU the session runs on torch's
current CUDA stream (``user_compute_stream``), so a call needs no host synchronisation; the
TensorRT EP gets an engine cache beside the artifact and FP16 for fp16 runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.backends.artifacts import check_expected, graphs_to_open, open_artifact
from engine.backends.base import Backend, BackendError, GraphRunner, Tensors, check_names
from engine.graphs.spec import GraphSpec

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
_NP = {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64}
_ORT_TYPES = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16, "tensor(int64)": torch.int64}


def choose_providers(preferred: Sequence[str] | None = None) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    wanted = list(preferred) if preferred is not None else list(GPU_PROVIDERS)
    return [p for p in wanted if p in available and p != "CPUExecutionProvider"] + ["CPUExecutionProvider"]


def check_providers(requested: Sequence[str], active: Sequence[str], path: Path) -> None:
    """onnxruntime drops an execution provider it cannot load (missing CUDA/cuDNN/TensorRT libraries, a
    driver too old) with a log line and runs on CPU: a GPU run would silently be a CPU run, and a parity
    check would compare CPU with CPU. Every GPU provider asked for must be active."""
    missing = [p for p in requested if p in GPU_PROVIDERS and p not in active]
    if missing:
        raise BackendError(f"{path}: onnxruntime could not start {', '.join(missing)} (the session runs on "
                           f"{', '.join(active)}): check that onnxruntime-gpu's CUDA/cuDNN (and TensorRT) "
                           "libraries match this machine (docs/gpu.md), or run on CPU with device='cpu'")


def provider_options(providers: Sequence[str], cache_dir: Path | None, fp16: bool,
                     stream: int | None = None, device: int = 0) -> list[dict[str, str]]:
    """Per-provider options, in ``providers`` order.

    TensorRT EP: engines cached in ``cache_dir`` (its first session otherwise rebuilds every
    engine, minutes at full size) with a timing cache, FP16 for an fp16 run. CUDA and TensorRT EPs:
    ``stream`` (torch's current stream) as their compute stream, so ORT's work is ordered with
    torch's without a host synchronisation."""
    options = []
    for name in providers:
        opts: dict[str, str] = {}
        if name in GPU_PROVIDERS:
            opts["device_id"] = str(device)
            if stream is not None:
                opts["has_user_compute_stream"] = "1"
                opts["user_compute_stream"] = str(stream)
        if name == "TensorrtExecutionProvider":
            if cache_dir is not None:
                opts.update(trt_engine_cache_enable="1", trt_engine_cache_path=str(cache_dir),
                            trt_timing_cache_enable="1", trt_timing_cache_path=str(cache_dir))
            if fp16:
                opts["trt_fp16_enable"] = "1"
        options.append(opts)
    return options


class OrtGraph(GraphRunner):
    def __init__(self, spec: GraphSpec, path: Path, providers: Sequence[str] | None = None,
                 threads: int | None = None, fp16: bool = False) -> None:
        import onnxruntime as ort

        super().__init__(spec)
        options = ort.SessionOptions()
        options.log_severity_level = 3  # constant-folding notices are not the user's business
        if threads:
            options.intra_op_num_threads = threads
        providers = list(providers or choose_providers())
        # The session is bound to the torch stream current at creation; run() orders other streams
        # against it with events.
        self.stream = torch.cuda.current_stream() if providers[0] in GPU_PROVIDERS else None
        handle = self.stream.cuda_stream if self.stream is not None else None
        cache = Path(path).parent / "ort_trt_cache"
        opts = provider_options(providers, cache, fp16, handle)
        self.session = ort.InferenceSession(str(path), options, providers=providers, provider_options=opts)
        check_providers(providers, self.session.get_providers(), Path(path))
        self.run_options = ort.RunOptions()
        if self.stream is not None:
            # outputs are consumed on the same stream: ORT need not block the host at the end of a run
            self.run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        if list(inputs) != spec.input_names or list(outputs) != spec.output_names:
            raise BackendError(f"{path}: tensors {list(inputs)} -> {list(outputs)} do not match the {spec.name} spec")
        self.in_dtypes = {n: _ORT_TYPES[i.type] for n, i in inputs.items()}
        self.out_dtypes = {n: _ORT_TYPES[o.type] for n, o in outputs.items()}
        on_gpu = self.session.get_providers()[0] in GPU_PROVIDERS
        self.device = torch.device("cuda", 0) if on_gpu else torch.device("cpu")
        self._fixed = {d.name: d.min for d in spec.dims if d.min == d.max}

    def fixed_dims(self) -> dict[str, int]:
        return dict(self._fixed)

    def max_dims(self) -> dict[str, int]:
        return {d.name: d.max for d in self.spec.dims}

    def _bind(self, binding: Any, name: str, t: torch.Tensor, output: bool) -> None:
        kind = self.device.type
        index = self.device.index or 0
        bind = binding.bind_output if output else binding.bind_input
        bind(name, kind, index, _NP[t.dtype], tuple(t.shape), t.data_ptr())

    def run(self, feeds: Mapping[str, torch.Tensor]) -> Tensors:
        check_names(self.spec, feeds)
        try:
            dims = self.spec.solve_dims({n: tuple(t.shape) for n, t in feeds.items()})
        except ValueError as err:
            raise BackendError(str(err)) from None
        if self.session is None:
            raise BackendError(f"graph {self.spec.name} is closed")
        binding = self.session.io_binding()
        keep = []  # the bound tensors must outlive the run
        for name in self.spec.input_names:
            t = feeds[name].to(self.device, self.in_dtypes[name]).contiguous()
            keep.append(t)
            self._bind(binding, name, t, output=False)
        outputs = {}
        for spec_t in self.spec.outputs:
            buf = torch.empty(spec_t.concrete(dims), dtype=self.out_dtypes[spec_t.name], device=self.device)
            outputs[spec_t.name] = buf
            self._bind(binding, spec_t.name, buf, output=True)
        own = self.stream
        current = torch.cuda.current_stream() if own is not None else None
        if own is not None and current is not None and current != own:
            own.wait_stream(current)  # inputs were made on the caller's stream
        self.session.run_with_iobinding(binding, self.run_options)
        if own is not None and current is not None and current != own:
            current.wait_stream(own)
        return outputs

    def close(self) -> None:
        self.session = None


class OrtBackend(Backend):
    name = "onnxruntime"

    def __init__(self, engines: Path, graphs: Sequence[str] | None = None, precision: str = "fp32",
                 providers: Sequence[str] | None = None, expect: Mapping[str, Any] | None = None,
                 threads: int | None = None, verify: bool = True, device: str | None = None) -> None:
        if precision not in ("fp32", "fp16"):
            raise BackendError(f"precision must be fp32 or fp16, got {precision!r}")
        kinds = ["onnx-fp16", "onnx-fp32"] if precision == "fp16" else ["onnx-fp32"]
        chosen = choose_providers(providers)
        if device is not None and torch.device(device).type == "cpu":
            chosen = ["CPUExecutionProvider"]
        runners = {}
        self.artifacts = {}
        for graph in graphs if graphs is not None else graphs_to_open(engines, kinds):
            art = open_artifact(engines, graph, kinds, target="onnx", verify=verify)
            if art.kind == "onnx-fp32" and precision == "fp16" and not art.spec.fp32_only:
                raise BackendError(f"{engines} has no fp16 {graph} graph: build with --precision fp16")
            check_expected(art, expect)
            self.artifacts[graph] = art
            runners[graph] = OrtGraph(art.spec, art.file("model.onnx"), chosen, threads,
                                      fp16=art.kind == "onnx-fp16")
        first = next(iter(runners.values()), None)
        super().__init__(runners, first.device if first else "cpu")
