"""Reproduction of the official release's recorded fixtures, one module per fixture kind.

Each kind module exposes ``reproduce(fixture_dir: Path, **options) -> list[TensorCheck]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from engine.config import read_json_object
from engine.errors import InputError


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
    """A kind's JSON config; any way of failing is one InputError naming the file."""
    path = Path(fixture_dir) / f"{kind}_config.json"
    return read_json_object(path, InputError, "fixture config", "copy it again")


def read_tensors(fixture_dir: Path, filename: str) -> dict[str, torch.Tensor]:
    """A fixture's safetensors file; a missing or damaged one is one InputError naming it."""
    path = Path(fixture_dir) / filename
    if not path.is_file():
        raise InputError(f"fixture file {path} is missing: copy the fixture set again")
    try:
        return load_file(str(path))
    except Exception:  # noqa: BLE001 - any reader failure means a damaged file
        raise InputError(f"fixture file {path} is damaged (not a complete safetensors file): copy it again") from None
