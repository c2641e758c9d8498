"""Reproduction of the official release's recorded fixtures, one module per fixture kind.

Each kind module exposes ``reproduce(fixture_dir: Path, **options) -> list[TensorCheck]``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file


@dataclass
class TensorCheck:
    """One recorded tensor compared with ours: error = max|ours - ref| / max|ref|."""

    name: str
    ours: torch.Tensor
    ref: torch.Tensor
    tol: float

    @property
    def error(self) -> float:
        if self.ours.shape != self.ref.shape:
            return float("inf")
        if not self.ref.is_floating_point():
            return 0.0 if torch.equal(self.ours.to(self.ref.dtype), self.ref) else float("inf")
        ours, ref = self.ours.double(), self.ref.double()
        scale = ref.abs().max().item()
        diff = (ours - ref).abs().max().item()
        return diff / scale if scale > 0 else diff

    @property
    def passed(self) -> bool:
        return self.error <= self.tol


def read_config(fixture_dir: Path, kind: str) -> dict:
    return json.loads((Path(fixture_dir) / f"{kind}_config.json").read_text())


def read_tensors(fixture_dir: Path, filename: str) -> dict[str, torch.Tensor]:
    return load_file(str(Path(fixture_dir) / filename))
