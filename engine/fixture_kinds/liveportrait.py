"""Reproduce the ``liveportrait_*`` fixture: FRVD's motion branch (MotionExtractorEval.forward).

Everything is derived from ``liveportrait_config.json`` (widths, backbone, frame count) and the
four strictly loaded weight files; every float tensor of ``liveportrait_io.safetensors`` except
the inputs is compared.
"""

from __future__ import annotations

from pathlib import Path

import torch

from engine.fixture_kinds import TensorCheck, read_config, read_tensors
from engine.models.liveportrait.motion_branch import SUBMODULES, MotionBranch

KIND = "liveportrait"
INPUTS = ("source_u8", "driving_u8")
TOL = 1e-5
# grid_sample over keypoint-driven grids amplifies rounding ~10x (fixture README).
LOOSE_TOL = {"out": 5e-5, "warp_out": 5e-5}


def build_motion_branch(fixture_dir: Path) -> MotionBranch:
    """MotionBranch from the fixture config with its four weight files loaded strictly."""
    config = read_config(fixture_dir, KIND)
    branch = MotionBranch(config["model_params"])
    branch.load_weights({n: read_tensors(fixture_dir, f"{KIND}_{n}.safetensors") for n in SUBMODULES})
    return branch.eval()


def fixture_inputs(io: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The README's input recipe -> (source [1, 3, H, W], driving [F, 3, H, W]) in [-1, 1]."""
    source = io["source_u8"].to(torch.float32) / 255.0
    driving = io["driving_u8"].to(torch.float32) / 255.0
    # The release receives the source repeated per frame but only reads frame 0; pass it once.
    return source * 2.0 - 1.0, (driving * 2.0 - 1.0)[0]


def reproduce(fixture_dir: Path, chunk_size: int = 16) -> list[TensorCheck]:
    fixture_dir = Path(fixture_dir)
    io = read_tensors(fixture_dir, f"{KIND}_io.safetensors")
    branch = build_motion_branch(fixture_dir)
    source, driving = fixture_inputs(io)
    result = branch.run(source, driving, relative=True, chunk_size=chunk_size, record=True)
    ours_all = dict(result.intermediates)
    ours_all["out"] = result.trunk.unsqueeze(0)  # release layout [B=1, F, C, h, w]

    checks = []
    for name, ref in sorted(io.items()):
        if name in INPUTS or not ref.is_floating_point():
            continue
        ours = ours_all.get(name)
        if ours is None:
            ours = torch.full((0,), float("nan"))  # missing: shape mismatch -> infinite error
        elif ours.numel() == ref.numel():
            # Per-frame tensors are stacked with the batch dim kept ([F, 1, ...]) in the fixture.
            ours = ours.reshape(ref.shape)
        checks.append(TensorCheck(name=name, ours=ours.detach(), ref=ref, tol=LOOSE_TOL.get(name, TOL)))
    return checks
