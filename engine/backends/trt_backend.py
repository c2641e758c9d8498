"""TensorRT: one deserialised engine per graph, run with ``execute_async_v3`` on a CUDA stream.

Buffers are torch CUDA tensors. Per input-shape combination the runner binds static input and
output buffers once (``set_input_shape`` + ``set_tensor_address``), so a call is: copy the feeds
into the bound inputs, enqueue, clone the outputs - all on the runner's stream, which waits for
and is waited on by torch's current stream (no host synchronisation). With ``cuda_graphs`` the
enqueue is captured into a CUDA graph per shape (cuda-python) after one warm-up enqueue, as
TensorRT requires, and replayed from then on.

A backend's engines run one after another, so they share one CUDA stream and one block of device
scratch memory sized for the largest engine (``SharedScratch``), instead of each context holding its
own: for the official graphs that is the denoiser's alone, not the sum of seven. Sharing is safe
because the scratch is only touched by work queued on that one stream, in order.

tensorrt and cuda-python are imported when a runner is created; without them creating the
backend raises one ``TensorRTUnavailable`` error saying what to install.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from engine.backends.artifacts import check_expected, graphs_to_open, open_artifact
from engine.backends.base import Backend, BackendError, GraphRunner, Tensors, check_names
from engine.backends.trt_runtime import (
    TensorRTUnavailable,
    engine_precision,
    needs_plugin,
    register_plugin,
    require_tensorrt,
)
from engine.graphs.spec import GraphSpec


def require_cudart() -> Any:
    """cuda-python's runtime module (``cuda.bindings.runtime``, or ``cuda.cudart`` before 12.6)."""
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise TensorRTUnavailable("cuda-python is not installed (pip install 'frvd-engine[trt-cu12]' or "
                              "'[trt-cu13]'); the TensorRT backend uses it for its CUDA stream graph capture")


def _check(result: Any, what: str) -> Any:
    """cuda-python returns (err, *values); raise on an error, return the values."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise BackendError(f"{what} failed with CUDA error {err}")
    return values[0] if len(values) == 1 else values


_TORCH_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "INT64": torch.int64, "INT32": torch.int32,
                 "BOOL": torch.bool}


@dataclass
class _Binding:
    """Buffers bound for one input-shape combination (and its captured CUDA graph, if any)."""

    inputs: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]
    graph_exec: Any = None
    warm: bool = False
    extra: dict = field(default_factory=dict)


def new_context(trt: Any, engine: Any, own_memory: bool) -> Any:
    """An execution context that allocates its scratch memory, or one that is given it later
    (``USER_MANAGED`` since TensorRT 10; ``..._without_device_memory`` before)."""
    if own_memory:
        return engine.create_execution_context()
    strategy = getattr(trt, "ExecutionContextAllocationStrategy", None)
    if strategy is not None:
        return engine.create_execution_context(strategy.USER_MANAGED)
    return engine.create_execution_context_without_device_memory()


def scratch_bytes(engine: Any) -> int:
    """Device scratch an engine's context needs, over all its profiles (``device_memory_size_v2``
    since 10.1; the older property otherwise)."""
    size = getattr(engine, "device_memory_size_v2", None)
    return int(size if size is not None else engine.device_memory_size)


def give_memory(context: Any, address: int, size: int) -> None:
    if hasattr(context, "set_device_memory"):  # 10.1+: address and size
        context.set_device_memory(address, size)
    else:
        context.device_memory = address


class SharedScratch:
    """One device-memory block for the contexts of several engines that run on one stream."""

    def __init__(self, contexts: Mapping[str, tuple[Any, Any]], device: torch.device) -> None:
        """``contexts``: graph name -> (engine, context created without memory)."""
        self.size = max((scratch_bytes(engine) for engine, _ in contexts.values()), default=0)
        self.block = torch.empty(max(self.size, 1), dtype=torch.uint8, device=device)
        for _, context in contexts.values():
            give_memory(context, self.block.data_ptr(), self.size)


class TrtGraph(GraphRunner):
    def __init__(self, spec: GraphSpec, plan: Path, cuda_graphs: bool = False, device: int = 0,
                 stream: torch.cuda.Stream | None = None, own_memory: bool = True) -> None:
        """``stream``/``own_memory``: a backend passes its shared stream and gives the context its
        memory afterwards (``SharedScratch``); a runner alone (the builder's parity check) owns both."""
        super().__init__(spec)
        trt = require_tensorrt()
        self.cudart = require_cudart() if cuda_graphs else None
        if not torch.cuda.is_available():
            raise BackendError("the TensorRT backend needs a CUDA device")
        if needs_plugin(spec):
            register_plugin()  # before deserialising: the engine refers to frvd::GridSample3D
        self.device = torch.device("cuda", device)
        logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(Path(plan).read_bytes())
        if self.engine is None:
            raise BackendError(f"TensorRT could not deserialise {plan} (built by another TensorRT or GPU?)")
        self.context = new_context(trt, self.engine, own_memory)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        if [n for n in names if is_input[n]] != spec.input_names or {n for n in names if not is_input[n]} != set(
            spec.output_names
        ):
            raise BackendError(f"{plan}: engine tensors {names} do not match the {spec.name} spec")
        self.dtypes = {n: _TORCH_DTYPES[self.engine.get_tensor_dtype(n).name] for n in names}
        self.stream = stream if stream is not None else torch.cuda.Stream(self.device)
        self.cuda_graphs = cuda_graphs
        self._bindings: dict[tuple, _Binding] = {}
        self._active: tuple | None = None

    def fixed_dims(self) -> dict[str, int]:
        return {d.name: d.min for d in self.spec.dims if d.min == d.max}

    def max_dims(self) -> dict[str, int]:
        return {d.name: d.max for d in self.spec.dims}

    def _bind(self, shapes: dict[str, tuple[int, ...]]) -> _Binding:
        key = tuple(shapes[n] for n in self.spec.input_names)
        binding = self._bindings.get(key)
        if binding is None:
            inputs = {n: torch.empty(s, dtype=self.dtypes[n], device=self.device) for n, s in shapes.items()}
            for n, t in inputs.items():
                self.context.set_input_shape(n, tuple(t.shape))
            outputs = {n: torch.empty(tuple(self.context.get_tensor_shape(n)), dtype=self.dtypes[n],
                                      device=self.device) for n in self.spec.output_names}
            binding = self._bindings[key] = _Binding(inputs, outputs)
            self._active = None
        if self._active != key:  # shapes and addresses are context state: rebind when switching
            for n, t in {**binding.inputs, **binding.outputs}.items():
                if n in binding.inputs:
                    self.context.set_input_shape(n, tuple(t.shape))
                self.context.set_tensor_address(n, t.data_ptr())
            self._active = key
        return binding

    def _execute(self, handle: int, what: str = "enqueue") -> None:
        # execute_async_v3 returns False (and logs why) instead of raising
        if not self.context.execute_async_v3(handle):
            raise BackendError(f"TensorRT failed to {what} {self.spec.name} (see the TensorRT log above)")

    def _enqueue(self, binding: _Binding) -> None:
        handle = self.stream.cuda_stream
        if not self.cuda_graphs:
            self._execute(handle)
            return
        if binding.graph_exec is None:
            if not binding.warm:  # TensorRT must run once per shape before it can be captured
                self._execute(handle, "warm up")
                binding.warm = True
            cudart = self.cudart
            assert cudart is not None  # cuda_graphs requires it (__init__)
            _check(cudart.cudaStreamBeginCapture(handle, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal),
                   "cudaStreamBeginCapture")
            try:
                self._execute(handle, "capture")
            finally:  # a failed enqueue must not leave the stream capturing
                graph = _check(cudart.cudaStreamEndCapture(handle), "cudaStreamEndCapture")
            binding.graph_exec = _check(cudart.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
            _check(cudart.cudaGraphDestroy(graph), "cudaGraphDestroy")
        assert self.cudart is not None
        _check(self.cudart.cudaGraphLaunch(binding.graph_exec, handle), "cudaGraphLaunch")

    def run(self, feeds: Mapping[str, torch.Tensor]) -> Tensors:
        if self.context is None:
            raise BackendError(f"graph {self.spec.name} is closed")
        check_names(self.spec, feeds)
        shapes = {n: tuple(feeds[n].shape) for n in self.spec.input_names}
        try:
            self.spec.solve_dims(shapes)
        except ValueError as err:
            raise BackendError(str(err)) from None
        current = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            binding = self._bind(shapes)
            for n, t in binding.inputs.items():
                t.copy_(feeds[n], non_blocking=True)
            self._enqueue(binding)
            outputs = {n: binding.outputs[n].clone() for n in self.spec.output_names}
        current.wait_stream(self.stream)
        for t in feeds.values():  # the copies above read them on our stream
            if t.is_cuda:
                t.record_stream(self.stream)
        return outputs

    def close(self) -> None:
        """Destroy captured graphs, then drop the context before the engine (TensorRT's order)."""
        if getattr(self, "stream", None) is not None and self._bindings:
            self.stream.synchronize()  # nothing may still run on buffers about to be freed
        if self.cudart is not None:
            for binding in self._bindings.values():
                if binding.graph_exec is not None:
                    self.cudart.cudaGraphExecDestroy(binding.graph_exec)
                    binding.graph_exec = None
        self._bindings.clear()
        self._active = None
        self.context = None
        self.engine = None


def engine_kinds(precision: str | None) -> list[str]:
    """Artifact kinds to look for: the asked precision (fp32-only graphs are always trt-fp32), or
    with None whichever was built, fp16 first."""
    if precision is None:
        return ["trt-fp16", "trt-fp32"]
    if precision not in ("fp32", "fp16"):
        raise BackendError(f"precision must be fp32 or fp16, got {precision!r}")
    return ["trt-fp16", "trt-fp32"] if precision == "fp16" else ["trt-fp32"]


class TrtBackend(Backend):
    name = "tensorrt"

    def __init__(self, engines: Path, graphs: Sequence[str] | None = None, precision: str | None = None,
                 expect: Mapping[str, Any] | None = None, cuda_graphs: bool = False, verify: bool = True) -> None:
        """``precision`` None takes what the build made (engine.cli.build defaults to fp32); "fp16" or
        "fp32" insists on it (create_backend passes the run's dtype)."""
        require_tensorrt()  # the one clear error, before any file is opened
        runners: dict[str, TrtGraph] = {}
        self.artifacts = {}
        self.stream = torch.cuda.Stream() if torch.cuda.is_available() else None
        for graph in graphs if graphs is not None else graphs_to_open(engines, engine_kinds(precision)):
            art = open_artifact(engines, graph, engine_kinds(precision), target="trt", verify=verify)
            if precision is not None and art.kind != f"trt-{engine_precision(art.spec, precision)}":
                raise BackendError(f"{engines} has no {precision} {graph} engine: build with --precision {precision}")
            check_expected(art, expect)
            self.artifacts[graph] = art
            runners[graph] = TrtGraph(art.spec, art.file("model.plan"), cuda_graphs=cuda_graphs,
                                      stream=self.stream, own_memory=False)
        device = next(iter(runners.values())).device if runners else torch.device("cuda")
        contexts = {n: (r.engine, r.context) for n, r in runners.items()}
        self.scratch: SharedScratch | None = SharedScratch(contexts, device)
        super().__init__(runners, "cuda")

    def close(self) -> None:
        super().close()  # the contexts go first: the shared scratch outlives them
        self.scratch = None
