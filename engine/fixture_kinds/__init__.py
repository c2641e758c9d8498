"""Reproduction of the official release's recorded fixtures, one module per fixture kind.

Each kind module exposes ``reproduce(fixture_dir: Path, **options) -> list[TensorCheck]``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

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
    try:
        config = json.loads(path.read_text())
    except OSError as err:
        raise InputError(f"fixture config {path} cannot be read ({err.strerror or err})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        where = f" (line {err.lineno}, column {err.colno})" if isinstance(err, json.JSONDecodeError) else ""
        raise InputError(f"fixture config {path} is not valid JSON{where}: copy it again") from None
    if not isinstance(config, dict):
        raise InputError(f"fixture config {path} is JSON but not an object: copy it again")
    return config


def read_tensors(fixture_dir: Path, filename: str) -> dict[str, torch.Tensor]:
    """A fixture's safetensors file; a missing or damaged one is one InputError naming it."""
    path = Path(fixture_dir) / filename
    if not path.is_file():
        raise InputError(f"fixture file {path} is missing: copy the fixture set again")
    try:
        return load_file(str(path))
    except Exception:  # noqa: BLE001 - any reader failure means a damaged file
        raise InputError(f"fixture file {path} is damaged (not a complete safetensors file): copy it again") from None
