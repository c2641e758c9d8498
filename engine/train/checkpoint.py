"""Training checkpoints: ``RUN/checkpoint-<step>/`` written atomically, the last K kept.

Each holds ``state.pt`` (trainable weights, optimizer, scheduler, RNG states, data position, and what the
run was: preset, model-config fingerprint, layout) and the release's two files ``warping_feature_mapper.pth``
and ``head_embedder.pth`` (plain state dicts in the release's key layout), which ``--weights`` /
``Reenactor.from_pretrained`` load unchanged: for ``official`` the folder replaces
``checkpoint-30000-14frames/``; for ``tiny`` a folder holding just those two files overrides the seeded
WFM and HeadNet.

Atomic: everything is written into a hidden temporary folder next to the target, then renamed; a crash
leaves either the previous set of checkpoints or the new one, never a half-written ``checkpoint-N``.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.errors import InputError

PREFIX = "checkpoint-"
RELEASE_FILES = ("warping_feature_mapper.pth", "head_embedder.pth")


def config_fingerprint(model_config: Any) -> str:
    """A short hash of the architecture (so a checkpoint of another preset/config is refused)."""
    from dataclasses import asdict

    text = json.dumps(asdict(model_config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Finished checkpoints of a run, oldest first."""
    found = []
    if Path(run_dir).is_dir():
        for p in Path(run_dir).iterdir():
            if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit():
                if (p / "state.pt").is_file():
                    found.append((int(p.name[len(PREFIX):]), p))
    return sorted(found)


def latest(run_dir: Path) -> Path | None:
    found = checkpoints(run_dir)
    return found[-1][1] if found else None


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(run_dir: Path, step: int, trainable: dict[str, nn.Module], state: dict[str, Any], keep: int) -> Path:
    """Write ``RUN/checkpoint-<step>`` atomically, then delete all but the newest ``keep``."""
    run_dir = Path(run_dir)
    target = run_dir / f"{PREFIX}{step}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{PREFIX}{step}-", dir=run_dir))
    try:
        for name, module in trainable.items():
            torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, tmp / f"{name}.pth")
        torch.save(state, tmp / "state.pt")
        if target.exists():  # a re-run of the same step (resume after a crash right after saving)
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for _, old in checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return target


def load(path: Path, fingerprint: str, preset: str) -> dict[str, Any]:
    """``state.pt`` of a checkpoint, refusing one written for another preset or architecture."""
    try:
        state = torch.load(Path(path) / "state.pt", map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any reader failure means a damaged checkpoint
        raise InputError(f"checkpoint {path} cannot be read ({type(err).__name__}): delete it to start over") from None
    meta = state.get("meta", {})
    if meta.get("preset") != preset or meta.get("fingerprint") != fingerprint:
        raise InputError(
            f"checkpoint {path} was written for preset {meta.get('preset')!r} (config {meta.get('fingerprint')}), "
            f"not {preset!r} (config {fingerprint}): use another --out, or the matching --preset"
        )
    return state
