"""Reproduce the ``liveportrait_*`` fixture: FRVD's motion branch (MotionExtractorEval.forward).

It runs the production stages (``SourceStage.source_motion`` and ``MotionStage``) on the torch
backend; the intermediates the stages do not return (raw M heads, W's deformation, occlusion and
warped volume) are captured with forward hooks, as the fixture itself was recorded. The networks
are built from ``liveportrait_config.json`` and the four strictly loaded weight files (the HeadNet
at the end of the warp graph is seeded: the fixture has none and its output is not compared).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from engine import presets
from engine.backends import create_backend
from engine.config import ModelConfig, RunConfig
from engine.fixture_kinds import TensorCheck, read_config, read_tensors
from engine.models.liveportrait.motion_branch import INPUT_SIZE, SUBMODULES
from engine.networks import Networks, build_networks
from engine.stages import MOTION_CHUNK, MotionChunk, MotionStage, SourceMotion, SourceStage

KIND = "liveportrait"
INPUTS = ("source_u8", "driving_u8")
TOL = 1e-5
# grid_sample over keypoint-driven grids amplifies rounding ~10x (fixture README).
LOOSE_TOL = {"out": 5e-5, "warp_out": 5e-5}
INFO_KEYS = ("pitch", "yaw", "roll", "t", "exp", "scale", "kp")


def fixture_model(fixture_dir: Path) -> ModelConfig:
    """The tiny preset with the fixture's LivePortrait; the image size puts the latent grid on the
    trunk grid, so the warp graph needs no resize."""
    lp = read_config(fixture_dir, KIND)["model_params"]
    side = INPUT_SIZE >> int(lp["appearance_feature_extractor_params"]["num_down_blocks"])
    return replace(presets.tiny(), name="liveportrait-fixture", liveportrait=lp, image_size=side * 8,
                   trunk_channels=presets.spade_trunk_channels(lp["spade_generator_params"]))


def build_networks_for(fixture_dir: Path) -> Networks:
    """Networks with the fixture's four LivePortrait files loaded strictly (the rest seeded, unused)."""
    torch.manual_seed(0)
    nets = build_networks(fixture_model(fixture_dir))
    nets.motion.load_weights({n: read_tensors(fixture_dir, f"{KIND}_{n}.safetensors") for n in SUBMODULES})
    return nets


def fixture_inputs(io: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The README's input recipe -> (source [1, 3, H, W], driving [F, 3, H, W]) in [-1, 1]."""
    source = io["source_u8"].to(torch.float32) / 255.0
    driving = io["driving_u8"].to(torch.float32) / 255.0
    # The release receives the source repeated per frame but only reads frame 0; pass it once.
    return source * 2.0 - 1.0, (driving * 2.0 - 1.0)[0]


class _Hooks:
    """Raw M heads (source first, then each driving frame) and W's outputs, per call."""

    def __init__(self, nets: Networks) -> None:
        self.raw: list[dict[str, torch.Tensor]] = []
        self.warp: list[dict[str, torch.Tensor]] = []
        m = nets.motion
        self.handles = [
            m.motion_extractor.register_forward_hook(lambda mod, args, out: self.raw.append(out._asdict())),
            m.warping_module.register_forward_hook(lambda mod, args, out: self.warp.append(
                {k: v for k, v in (("warp_out", out.out), ("deformation", out.deformation),
                                   ("occlusion_map", out.occlusion_map)) if v is not None})),
        ]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _info(prefix: str, info, rotation: torch.Tensor, raw: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    out = {f"{prefix}_raw_{k}": torch.cat([r[k] for r in raw]) for k in raw[0]}
    out.update({f"{prefix}_{k}": getattr(info, k) for k in INFO_KEYS})
    out[f"{prefix}_R"] = rotation
    return out


def run_motion(nets: Networks, model: ModelConfig, source_pm1: torch.Tensor, driving_pm1: torch.Tensor,
               relative: bool = True, chunk: int = MOTION_CHUNK) -> dict[str, torch.Tensor]:
    """The production motion stages on [-1, 1] tensors; every intermediate under the fixture's names."""
    cfg = RunConfig(model=model, size=model.image_size)
    backend = create_backend("torch", cfg, nets=nets)
    source_stage = SourceStage(backend, cfg)
    hooks = _Hooks(nets)
    try:
        src: SourceMotion = source_stage.source_motion(source_pm1)
        record = _info("src", src.info, src.rotation, hooks.raw)
        record.update(f_s=src.f_s, x_s=src.x_s)
        stage = MotionStage(source_stage, src, relative)
        chunks: list[tuple[MotionChunk, int]] = []
        for start in range(0, driving_pm1.shape[0], chunk):
            before = len(hooks.raw)
            chunks.append((stage.run_pm1(driving_pm1[start : start + chunk]), before))
    finally:
        hooks.remove()
    drv = [c for c, _ in chunks]
    cat = lambda values: torch.cat(list(values))  # noqa: E731
    record.update(_info("drv", _cat_info(drv), cat(c.rotation for c in drv), hooks.raw[1:]))
    kp = [c.keypoints for c in drv]
    record.update(R_new=cat(k.rotation for k in kp), delta_new=cat(k.delta for k in kp),
                  scale_new=cat(k.scale for k in kp), t_new=cat(k.t for k in kp), x_d_new=cat(k.x_d for k in kp),
                  out=cat(c.trunk for c in drv))
    for name in hooks.warp[0]:
        record[name] = cat(w[name] for w in hooks.warp)
    return record


def _cat_info(chunks: list[MotionChunk]):
    from engine.motion import KeypointInfo

    return KeypointInfo(**{k: torch.cat([getattr(c.info, k) for c in chunks]) for k in INFO_KEYS})


def reproduce(fixture_dir: Path, chunk_size: int = MOTION_CHUNK) -> list[TensorCheck]:
    fixture_dir = Path(fixture_dir)
    io = read_tensors(fixture_dir, f"{KIND}_io.safetensors")
    nets = build_networks_for(fixture_dir)
    source, driving = fixture_inputs(io)
    ours_all = run_motion(nets, fixture_model(fixture_dir), source, driving, chunk=chunk_size)
    ours_all["out"] = ours_all["out"].unsqueeze(0)  # release layout [B=1, F, C, h, w]

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
