"""A distilled student's file: the WFM + UNet (``denoiser.*``) and HeadNet (``head_net.*``) weights
that replace the teacher's in an engine, plus what it was distilled for (safetensors metadata):

    steps           K: the student runs ``sampling.sample_distilled`` at ``student_indices(K)``
    kv_downsample   the WFM attention approximation it was trained under (a run must use the same)
    preset, size    the teacher it came from
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine.errors import WeightsError

FORMAT = "frvd-student"
HOW = "make one with python -m engine.distill --what student (docs/distillation.md)"


@dataclass(frozen=True)
class StudentInfo:
    path: Path
    steps: int
    kv_downsample: int
    preset: str
    extra: dict[str, Any]


def parts(nets: Any) -> dict[str, torch.nn.Module]:
    return {"denoiser": nets.denoiser, "head_net": nets.head_net}


def save(nets: Any, path: Path, steps: int, kv_downsample: int, preset: str, **extra: Any) -> None:
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {f"{name}.{k}": v.detach().contiguous().cpu()
               for name, module in parts(nets).items() for k, v in module.state_dict().items()}
    info = {"steps": steps, "kv_downsample": kv_downsample, "preset": preset, **extra}
    tmp = path.with_name(f".{path.name}.partial")
    save_file(tensors, str(tmp), metadata={"format": FORMAT, "info": json.dumps(info)})
    tmp.replace(path)


def read_info(path: Path) -> tuple[dict[str, torch.Tensor], StudentInfo]:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"student file {path} does not exist: {HOW}")
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # noqa: BLE001 - any way of failing to read is "not a student file"
        raise WeightsError(f"student file {path} cannot be read as safetensors ({type(err).__name__}): {HOW}") from None
    if meta.get("format") != FORMAT:
        raise WeightsError(f"{path} is not a distilled student (no '{FORMAT}' metadata): {HOW}")
    info = json.loads(meta["info"])
    return tensors, StudentInfo(path, int(info["steps"]), int(info["kv_downsample"]), str(info["preset"]), info)


def load_into(nets: Any, path: Path) -> StudentInfo:
    """Replace the teacher's denoiser and HeadNet weights with the student's; checked key by key first."""
    tensors, info = read_info(path)
    for name, module in parts(nets).items():
        want = module.state_dict()
        got = {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")}
        missing = [k for k in want if k not in got]
        shape = [k for k in want if k in got and tuple(got[k].shape) != tuple(want[k].shape)]
        if missing or shape or len(got) != len(want):
            first = (missing or shape or sorted(set(got) - set(want)))[0]
            raise WeightsError(f"student file {path} does not fit this engine's {name} (first mismatch: {first}): "
                               f"it was distilled from preset {info.preset!r}; use a student of this model or {HOW}")
        dtype = next(module.parameters()).dtype
        module.load_state_dict({k: v.to(dtype) for k, v in got.items()})
    return info


STUDENT_MODES = ("fast", "turbo")  # named modes that, on an engine given a student, run it (ultra always does)


def mode_knobs(mode: str, student: StudentInfo | None, given: dict[str, Any]) -> dict[str, Any]:
    """The knob overrides of a run: ``given`` (None = the mode's value), and on an engine carrying a student,
    ``fast`` and ``turbo`` run the student's sampler (its K steps and kv_downsample, no CFG: the student has
    the teacher's CFG baked in) while keeping their windows, WFM reuse and decoder. A knob given explicitly
    wins (``check_run`` then says what the student allows)."""
    if student is None or mode not in STUDENT_MODES:
        return given
    own = {"sampler": "distilled", "schedule": "student", "steps": student.steps, "guidance_mode": "none",
           "kv_downsample": student.kv_downsample}
    return {**given, **{k: v for k, v in own.items() if given.get(k) is None}}


def check_run(cfg: Any, student: StudentInfo | None, has_tiny_decoder: bool) -> None:
    """A student runs only its own sampler and step count; the tiny decoder must have been given.
    Raises ValueError with the fix."""
    st = student
    if cfg.decoder == "tiny" and not has_tiny_decoder:
        raise ValueError(f"mode {cfg.mode!r} decodes with the tiny VAE decoder, which this engine was not given: "
                         "pass --tiny-decoder FILE (EngineOptions.tiny_decoder): TAESD weights, or make them "
                         "with python -m engine.distill --what vae-decoder")
    if cfg.sampler == "distilled" and st is None:
        raise ValueError(f"mode {cfg.mode!r} runs a distilled student, which this engine was not given: pass "
                         "--student FILE (EngineOptions.student); make one with python -m engine.distill "
                         "--what student --steps K")
    if st is None:
        return
    if cfg.sampler != "distilled":
        raise ValueError(f"this engine's denoiser is the distilled student {st.path}: it runs only the distilled "
                         f"sampler (modes ultra, fast, turbo, or --sampler distilled --steps {st.steps}); "
                         f"mode {cfg.mode!r} with sampler {cfg.sampler!r} needs the teacher (an engine without "
                         "--student)")
    if cfg.steps != st.steps or cfg.kv_downsample != st.kv_downsample:
        raise ValueError(f"the student {st.path} was distilled for {st.steps} steps with kv_downsample "
                         f"{st.kv_downsample}; this run asks for {cfg.steps} and {cfg.kv_downsample}: give "
                         f"--steps {st.steps} --kv-downsample {st.kv_downsample}, or distil a student for these")
