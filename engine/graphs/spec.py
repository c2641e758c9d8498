"""Graph specs: everything one graph promises (to the backends and to the exporter), as data.

A ``GraphSpec`` names the graph's tensors (inputs and outputs, with dtypes and symbolic dims),
the ranges of its dynamic dims (which give both the exporter's ``dynamic_shapes`` and the
TensorRT optimisation profile), the module that computes it (built from ``Networks``), sample
inputs, the opset and the parity tolerances. The exporter, the cache, the backends, ``verify``
and the tests all read these objects; nothing about a graph is written down twice.

Shapes are tuples of ints and dim expressions: ``"frames"`` or ``"2*windows"`` (an integer
multiple of a named dim; the denoiser's batch is two CFG halves per window).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

DimExpr = int | str
_EXPR = re.compile(r"^(?:(\d+)\*)?([A-Za-z_][A-Za-z0-9_]*)$")

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "int64": torch.int64}
PRECISIONS = ("fp32", "fp16")


def parse_dim(expr: DimExpr) -> tuple[int, str | None]:
    """``16 -> (16, None)``, ``"frames" -> (1, "frames")``, ``"2*windows" -> (2, "windows")``."""
    if isinstance(expr, int):
        return expr, None
    match = _EXPR.match(expr.replace(" ", ""))
    if match is None:
        raise ValueError(f"bad dim expression {expr!r}: use an int, 'name' or 'k*name'")
    return int(match.group(1) or 1), match.group(2)


@dataclass(frozen=True)
class Dim:
    """A dynamic dim and its range; ``opt`` is what TensorRT tunes for."""

    name: str
    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise ValueError(f"dim {self.name}: need 1 <= min <= opt <= max, got {self.min}, {self.opt}, {self.max}")

    @property
    def export_value(self) -> int:
        # torch.export specialises dims traced at 0 or 1, so trace dynamic dims at >= 2.
        return min(max(self.opt, 2), self.max)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[DimExpr, ...]
    dtype: str = "float32"

    def concrete(self, values: Mapping[str, int]) -> tuple[int, ...]:
        out = []
        for expr in self.shape:
            factor, name = parse_dim(expr)
            out.append(factor if name is None else factor * values[name])
        return tuple(out)

    def symbolic(self) -> list[int | str]:
        """Shape with symbolic dims as ONNX ``dim_param`` strings."""
        return [expr if isinstance(expr, int) else str(expr).replace(" ", "") for expr in self.shape]


SampleFn = Callable[["GraphSpec", Mapping[str, int], torch.Generator], dict[str, torch.Tensor]]
Factory = Callable[[Any], nn.Module]  # Networks -> module whose forward takes the inputs in order


@dataclass(frozen=True)
class GraphSpec:
    name: str
    doc: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    dims: tuple[Dim, ...]
    factory: Factory = field(compare=False)
    sample: SampleFn = field(compare=False)
    slots: tuple[str, ...]  # weight files (engine.models.weights.LAYOUT names) this graph is made of
    opset: int = 20
    tolerance: Mapping[str, float] = field(default_factory=lambda: {"fp32": 1e-4, "fp16": 2e-2})
    fp32_only: bool = False  # LivePortrait graphs: the release never runs them in half precision
    grid_sample: str | None = None  # 5-D sampling form (export.grid_sample_onnx.FORMS) when the graph samples
    config: Mapping[str, Any] = field(default_factory=dict)  # what else shapes the graph (widths, modes)

    # -- names ---------------------------------------------------------------------------------
    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def dim(self, name: str) -> Dim:
        for d in self.dims:
            if d.name == name:
                return d
        raise KeyError(f"graph {self.name} has no dim {name!r}")

    # -- shapes --------------------------------------------------------------------------------
    def dim_values(self, which: str = "export") -> dict[str, int]:
        """Values of every dim at ``min`` / ``opt`` / ``max`` / ``export``."""
        return {d.name: getattr(d, "export_value" if which == "export" else which) for d in self.dims}

    def input_shapes(self, values: Mapping[str, int]) -> dict[str, tuple[int, ...]]:
        return {t.name: t.concrete(values) for t in self.inputs}

    def output_shapes(self, values: Mapping[str, int]) -> dict[str, tuple[int, ...]]:
        return {t.name: t.concrete(values) for t in self.outputs}

    def solve_dims(self, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, int]:
        """Dim values from concrete input shapes; raises if a shape contradicts the spec."""
        values: dict[str, int] = {}
        for t in self.inputs:
            shape = tuple(shapes[t.name])
            if len(shape) != len(t.shape):
                raise ValueError(f"{self.name}.{t.name}: expected rank {len(t.shape)}, got shape {shape}")
            for axis, (expr, size) in enumerate(zip(t.shape, shape)):
                factor, name = parse_dim(expr)
                if name is None:
                    if size != factor:
                        raise ValueError(f"{self.name}.{t.name}: axis {axis} must be {factor}, got shape {shape}")
                    continue
                if size % factor or values.setdefault(name, size // factor) != size // factor:
                    raise ValueError(f"{self.name}.{t.name}: axis {axis} ({expr}) inconsistent in {shape}")
        for name, value in values.items():
            d = self.dim(name)
            if not d.min <= value <= d.max:
                raise ValueError(f"{self.name}: {name} = {value} is outside the built range [{d.min}, {d.max}]")
        return values

    def onnx_shape(self, t: TensorSpec) -> list[int | str]:
        """``t``'s shape for the ONNX file: dim names where dynamic, numbers where the range is one value."""
        fixed = {d.name: d.min for d in self.dims if d.min == d.max}
        out: list[int | str] = []
        for expr, sym in zip(t.shape, t.symbolic()):
            factor, name = parse_dim(expr)
            out.append(factor * fixed[name] if name in fixed else sym)
        return out

    def profile(self) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """TensorRT optimisation profile: input name -> (min, opt, max) shapes."""
        lo, opt, hi = (self.input_shapes(self.dim_values(w)) for w in ("min", "opt", "max"))
        return {name: (lo[name], opt[name], hi[name]) for name in self.input_names}

    def dynamic_shapes(self) -> dict[str, dict[int, Any]]:
        """``torch.export`` dynamic_shapes keyed by input name (derived dims for ``k*name``)."""
        dims = {d.name: torch.export.Dim(d.name, min=d.min, max=d.max) for d in self.dims if d.min < d.max}
        out: dict[str, dict[int, Any]] = {}
        for t in self.inputs:
            axes = {}
            for axis, expr in enumerate(t.shape):
                factor, name = parse_dim(expr)
                if name is not None and name in dims:
                    axes[axis] = dims[name] if factor == 1 else factor * dims[name]
            out[t.name] = axes
        return out

    def sample_inputs(self, which: str = "export", seed: int = 0, **overrides: int) -> dict[str, torch.Tensor]:
        values = {**self.dim_values(which), **overrides}
        return self.sample(self, values, torch.Generator("cpu").manual_seed(seed))

    # -- identity ------------------------------------------------------------------------------
    def tol(self, precision: str) -> float:
        return float(self.tolerance[precision])

    def describe(self) -> dict[str, Any]:
        """JSON-able description: everything that changes the exported graph except the weights."""
        return {
            "name": self.name,
            "inputs": [[t.name, t.symbolic(), t.dtype] for t in self.inputs],
            "outputs": [[t.name, t.symbolic(), t.dtype] for t in self.outputs],
            "dims": [[d.name, d.min, d.opt, d.max] for d in self.dims],
            "slots": list(self.slots),
            "opset": self.opset,
            "tolerance": dict(self.tolerance),
            "fp32_only": self.fp32_only,
            "grid_sample": self.grid_sample,
            "config": self.config,
        }

    def fingerprint(self) -> str:
        text = json.dumps(self.describe(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()


def random_tensor(shape: tuple[int, ...], gen: torch.Generator, low: float = -1.0, high: float = 1.0) -> torch.Tensor:
    return torch.rand(shape, generator=gen) * (high - low) + low


def max_errors(ours: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(max |ours - ref|, that / max |ref|): the fixtures' relative-error convention."""
    diff = (ours.double() - ref.double()).abs().max().item() if ref.numel() else 0.0
    scale = ref.double().abs().max().item() if ref.numel() else 0.0
    return diff, diff / scale if scale > 0 else diff
