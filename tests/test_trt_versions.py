"""TensorRT 10 and 11 code paths, checked against fake ``tensorrt`` modules shaped like each API
(TensorRT 11 has no BuilderFlag.FP16 and builds strongly typed networks only), plus the return
values TensorRT reports instead of raising, backend ``close()`` and run-dtype -> artifact choice."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from engine.backends import BackendError, precision_for_dtype, trt_runtime
from engine.backends.base import Backend, GraphRunner
from engine.backends.ort_backend import provider_options
from engine.backends.trt_backend import engine_kinds
from engine.config import presets
from engine.graphs.modules import GraphOptions, build_specs
from export import trt_build


class _Flag:
    def __init__(self, name: str, value: int) -> None:
        self.name, self.value = name, value

    def __int__(self) -> int:
        return self.value


def fake_trt(major: int, cache_ok: tuple[bool, ...] = (True,), typed_flag: bool = True) -> types.ModuleType:
    """A tensorrt stand-in: 10.x has BuilderFlag.FP16, 11.x does not (the real removal); ``typed_flag``
    False: no NetworkDefinitionCreationFlag.STRONGLY_TYPED (a TensorRT older than 9.1)."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = f"{major}.3.0.1"
    flags = {"TF32": _Flag("TF32", 7)}
    if major < 11:
        flags["FP16"] = _Flag("FP16", 0)
    trt.BuilderFlag = types.SimpleNamespace(**flags)
    typed = {"STRONGLY_TYPED": _Flag("STRONGLY_TYPED", 1)} if typed_flag else {}
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(**typed)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE=0)
    calls: dict[str, list] = {"network_flags": [], "set_flag": [], "set_timing_cache": [], "parsed": []}
    answers = list(cache_ok)

    class Config:
        def set_flag(self, flag: _Flag) -> None:
            calls["set_flag"].append(flag.name)

        def create_timing_cache(self, blob: bytes) -> bytes:
            return bytes(blob)

        def set_timing_cache(self, cache: bytes, ignore_mismatch: bool) -> bool:
            calls["set_timing_cache"].append(cache)
            return answers.pop(0) if answers else True

        def set_memory_pool_limit(self, pool: int, size: int) -> None:
            pass

        def add_optimization_profile(self, profile: object) -> None:
            pass

        def get_timing_cache(self) -> types.SimpleNamespace:
            return types.SimpleNamespace(serialize=lambda: b"cache")

    class Builder:
        def __init__(self, logger: object) -> None:
            pass

        def create_network(self, flags: int) -> str:
            calls["network_flags"].append(flags)
            return "network"

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> types.SimpleNamespace:
            return types.SimpleNamespace(set_shape=lambda *a: None)

        def build_serialized_network(self, network: object, config: object) -> bytes:
            return b"plan"

    class OnnxParser:
        num_errors = 0

        def __init__(self, network: object, logger: object) -> None:
            pass

        def parse_from_file(self, path: str) -> bool:
            calls["parsed"].append(path)
            return True

    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    trt.Builder, trt.OnnxParser = Builder, OnnxParser
    trt.calls = calls
    return trt


@pytest.fixture(scope="module")
def specs():
    return build_specs(presets.tiny(), GraphOptions(image_size=128, grid_sample="decomposed"))


@pytest.mark.parametrize(("major", "typed_flag"), [(10, True), (11, True), (10, False)])
def test_version_selects_typing_flags_and_onnx_source(major: int, typed_flag: bool, specs) -> None:
    trt = fake_trt(major, typed_flag=typed_flag)
    denoiser, warp = specs["denoiser"], specs["warp"]
    assert trt_runtime.tensorrt_major(trt) == major
    typed = typed_flag or major >= 11
    assert trt_runtime.strongly_typed(trt) is typed
    if not typed:  # weakly typed (no STRONGLY_TYPED flag): the fp32 graph, lowered under the FP16 flag
        assert trt_runtime.builder_flags(trt, denoiser, "fp16") == [trt.BuilderFlag.FP16]
        assert trt_runtime.network_flags(trt) == 0
        assert trt_runtime.onnx_kind_for_engine(trt, denoiser, "fp16") == "onnx-fp32"
    else:  # strongly typed on 10 and 11: no precision flag; the fp16 graph's types (fp32 islands) decide
        assert trt_runtime.builder_flags(trt, denoiser, "fp16") == []
        assert trt_runtime.network_flags(trt) == 1 << 1
        assert trt_runtime.onnx_kind_for_engine(trt, denoiser, "fp16") == "onnx-fp16"
    # LivePortrait graphs are fp32 engines either way, built from the fp32 graph
    assert trt_runtime.builder_flags(trt, warp, "fp16") == []
    assert trt_runtime.onnx_kind_for_engine(trt, warp, "fp16") == "onnx-fp32"
    assert trt_runtime.onnx_kind_for_engine(trt, denoiser, "fp32") == "onnx-fp32"


@pytest.mark.parametrize("major", [10, 11])
def test_build_engine_runs_against_each_api(major: int, specs, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    trt = fake_trt(major)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    onnx_path = tmp_path / "model.onnx"
    facts = trt_build.build_engine(onnx_path, specs["denoiser"], "fp16", tmp_path / "model.plan", tmp_path)
    assert (tmp_path / "model.plan").read_bytes() == b"plan"
    assert (tmp_path / trt_build.TIMING_CACHE).read_bytes() == b"cache"
    assert facts["strongly_typed"] is True  # 10.x strongly typed too (it has the flag)
    assert trt.calls["set_flag"] == []
    assert trt.calls["network_flags"] == [2]
    assert trt_build.key_inputs(specs["denoiser"], "k", "fp16")["onnx_kind"] == "onnx-fp16"


def test_rejected_timing_cache_is_replaced_by_an_empty_one(tmp_path: Path) -> None:
    trt = fake_trt(11, cache_ok=(False, True))
    config = trt.Builder(None).create_builder_config()
    assert trt_build.set_timing_cache(config, b"from another GPU") == "replaced"
    assert trt.calls["set_timing_cache"] == [b"from another GPU", b""]
    assert trt_build.set_timing_cache(config, b"") == "fresh"
    trt_refusing = fake_trt(11, cache_ok=(False,))
    config = trt_refusing.Builder(None).create_builder_config()
    with pytest.raises(Exception, match="empty timing cache"):
        trt_build.set_timing_cache(config, b"")


def test_failed_enqueue_raises(specs) -> None:
    from engine.backends.trt_backend import TrtGraph

    runner = TrtGraph.__new__(TrtGraph)  # no GPU here: only the enqueue logic
    GraphRunner.__init__(runner, specs["denoiser"])
    runner.context = types.SimpleNamespace(execute_async_v3=lambda handle: False)
    runner.cuda_graphs = False
    runner.stream = types.SimpleNamespace(cuda_stream=0)
    with pytest.raises(BackendError, match="failed to enqueue denoiser"):
        runner._enqueue(None)
    runner.context = types.SimpleNamespace(execute_async_v3=lambda handle: True)
    runner._enqueue(None)


def test_backend_close_closes_every_runner_once(specs) -> None:
    closed = []

    class Runner(GraphRunner):
        def run(self, feeds):  # pragma: no cover - not called
            return {}

        def close(self) -> None:
            closed.append(self.name)

    backend = Backend({n: Runner(specs[n]) for n in ("motion", "warp")})
    with backend:
        pass
    backend.close()
    assert closed == ["motion", "warp"]
    with pytest.raises(BackendError, match="no graph"):
        backend["motion"]


def test_run_dtype_picks_the_artifacts() -> None:
    assert precision_for_dtype("onnxruntime", "float16") == "fp16"
    assert precision_for_dtype("tensorrt", "float32") == "fp32"
    with pytest.raises(BackendError, match="bfloat16 needs --backend torch"):
        precision_for_dtype("onnxruntime", "bfloat16")
    assert engine_kinds(None) == ["trt-fp16", "trt-fp32"]  # whatever engine.cli.build made
    assert engine_kinds("fp32") == ["trt-fp32"]


def test_ort_provider_options() -> None:
    providers = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    trt_opts, cuda_opts, cpu_opts = provider_options(providers, Path("/e/denoiser"), fp16=True, stream=1234)
    assert trt_opts["trt_engine_cache_enable"] == "1" and trt_opts["trt_engine_cache_path"] == "/e/denoiser"
    assert trt_opts["trt_fp16_enable"] == "1" and trt_opts["user_compute_stream"] == "1234"
    assert cuda_opts == {"device_id": "0", "has_user_compute_stream": "1", "user_compute_stream": "1234"}
    assert cpu_opts == {}
    assert "trt_fp16_enable" not in provider_options(providers, None, fp16=False)[0]


@pytest.mark.parametrize("api", ["10.1+", "8.x"])
def test_engines_of_a_backend_share_one_scratch_block_sized_for_the_largest(api: str) -> None:
    import torch

    from engine.backends.trt_backend import SharedScratch, new_context

    class Context:
        def __init__(self, own: bool) -> None:
            self.own, self.given = own, None

        if api == "10.1+":
            def set_device_memory(self, address: int, size: int) -> None:
                self.given = (address, size)

    class Engine:
        def __init__(self, size: int) -> None:
            if api == "10.1+":
                self.device_memory_size_v2 = size
            else:
                self.device_memory_size = size

        def create_execution_context(self, strategy: object = None) -> Context:
            return Context(own=strategy is None)

        def create_execution_context_without_device_memory(self) -> Context:
            return Context(own=False)

    strategy = types.SimpleNamespace(USER_MANAGED="user")
    trt = types.SimpleNamespace()
    if api == "10.1+":
        trt = types.SimpleNamespace(ExecutionContextAllocationStrategy=strategy)
    engines = {"motion": Engine(3_000), "denoiser": Engine(70_000), "vae_decoder": Engine(20_000)}
    contexts = {n: (e, new_context(trt, e, own_memory=False)) for n, e in engines.items()}
    assert not any(c.own for _, c in contexts.values())
    assert new_context(trt, engines["motion"], own_memory=True).own  # a runner alone allocates its own
    scratch = SharedScratch(contexts, torch.device("cpu"))
    assert scratch.size == 70_000 and scratch.block.numel() >= 70_000
    given = {(c.given if api == "10.1+" else c.device_memory) for _, c in contexts.values()}
    expected = (scratch.block.data_ptr(), 70_000) if api == "10.1+" else scratch.block.data_ptr()
    assert given == {expected}  # one block for all: not the sum of three
