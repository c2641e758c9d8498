"""FRVD's motion branch: LivePortrait F, M, W and the truncated G, as the release's ``MotionExtractorEval``.

source (first frame only) -> kp info, R_s, f_s = F(I_s), x_s; every driving frame -> kp info,
keypoints relative to the first driving frame -> W(f_s; x_s, x_d) -> SPADE trunk feature.

Differences from the release, none numerical beyond float rounding:
* driving frames run through W and G ``chunk_size`` at a time instead of one by one (bounded
  memory); the keypoint maths broadcasts per frame (engine.motion) where the release's only
  works for one; the source volume is shared by all frames of a chunk, never copied per frame.
* M still sees ``kp_batch_size`` (default 1) frames per call. W amplifies keypoint rounding ~10x
  through its narrow Gaussian heatmaps, and batched convolutions round differently from the
  release's batch-1 calls: measured on the public fixture, M at batch 4 moves the occlusion map
  from 0.95e-5 to 1.03e-5 relative error (tolerance 1e-5). At full size M is ~2% of the FLOPs.

Precision: the release keeps these four modules outside the modules it casts to fp16 and runs
them in fp32 even under CUDA autocast. Here the compute runs in an autocast-disabled region on
float32 inputs, and ``_apply`` refuses floating-point dtype casts coming from a parent module's
``.half()`` / ``.to(dtype)`` (device moves still pass), so the weights stay float32.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from engine.models.liveportrait.appearance import AppearanceFeatureExtractor
from engine.models.liveportrait.motion import MotionExtractor
from engine.models.liveportrait.spade_trunk import SPADETrunk
from engine.models.liveportrait.warping import WarpingNetwork, WarpOutput
from engine.motion import (
    DrivingKeypoints,
    KeypointInfo,
    absolute_motion,
    refine_kp_info,
    relative_motion,
    transform_keypoint,
)

INPUT_SIZE = 256
SUBMODULES = ("appearance_feature_extractor", "motion_extractor", "warping_module", "spade_generator")


@dataclass(frozen=True)
class SourceMotion:
    """Everything the driving frames need from the source image."""

    info: KeypointInfo  # batch 1
    raw: dict[str, torch.Tensor]  # raw M heads
    rotation: torch.Tensor  # R_s [1, 3, 3]
    f_s: torch.Tensor  # [1, C, D, 64, 64]
    x_s: torch.Tensor  # [1, K, 3]


@dataclass
class MotionBranchResult:
    """Trunk features and, when recorded, every intermediate under the fixture's names."""

    trunk: torch.Tensor  # [F, C_trunk, 64, 64]
    intermediates: dict[str, torch.Tensor] = field(default_factory=dict)


@contextmanager
def _fp32_region(device: torch.device) -> Iterator[None]:
    with torch.no_grad(), torch.autocast(device_type=device.type, enabled=False):
        yield


def to_model_input(images_pm1: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in [-1, 1] -> float32 [B, 3, 256, 256] in [0, 1]: (x+1)/2 then bilinear resize."""
    x = (images_pm1.float() + 1.0) / 2.0
    if tuple(x.shape[-2:]) != (INPUT_SIZE, INPUT_SIZE):
        # align_corners=False and no antialias, as the release's F.interpolate call.
        x = F.interpolate(x, [INPUT_SIZE, INPUT_SIZE], mode="bilinear")
    return x


class MotionBranch(nn.Module):
    """LivePortrait F/M/W/G under the release's checkpoint names, built from a models.yaml dict."""

    def __init__(self, model_params: Mapping[str, Any]) -> None:
        super().__init__()
        self.appearance_feature_extractor = AppearanceFeatureExtractor(
            **model_params["appearance_feature_extractor_params"])
        self.motion_extractor = MotionExtractor(**model_params["motion_extractor_params"])
        self.warping_module = WarpingNetwork(**model_params["warping_module_params"])
        self.spade_generator = SPADETrunk(**model_params["spade_generator_params"])
        self.eval()

    @property
    def trunk_channels(self) -> int:
        return self.spade_generator.out_channels

    def load_weights(self, state_dicts: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
        """Strictly load one state dict per sub-module name (``SUBMODULES``)."""
        missing = set(SUBMODULES) - set(state_dicts)
        if missing:
            raise KeyError(f"no weights for {sorted(missing)}")
        for name in SUBMODULES:
            getattr(self, name).load_state_dict(state_dicts[name], strict=True)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> MotionBranch:
        def keep_float32(t: torch.Tensor) -> torch.Tensor:
            moved = fn(t)
            if t.is_floating_point() and moved.dtype != t.dtype:
                return t.to(device=moved.device)  # keep the dtype, honour only the device move
            return moved

        return super()._apply(keep_float32, recurse)

    # -- steps, named as in LivePortrait's wrapper; inputs are already in [0, 1] at 256x256 --

    def get_kp_info(self, images: torch.Tensor,
                    batch_size: int | None = None) -> tuple[KeypointInfo, dict[str, torch.Tensor]]:
        """M on [B, 3, 256, 256] in [0, 1], ``batch_size`` images per call -> (refined info, raw heads)."""
        step = images.shape[0] if batch_size is None else batch_size
        heads = [self.motion_extractor(images[i:i + step]) for i in range(0, images.shape[0], step)]
        raw = {k: torch.cat([getattr(h, k) for h in heads]) for k in heads[0]._fields}
        return refine_kp_info(raw), raw

    def extract_feature_3d(self, images: torch.Tensor) -> torch.Tensor:
        """F on [B, 3, 256, 256] in [0, 1] -> f_s [B, C, D, 64, 64]."""
        return self.appearance_feature_extractor(images)

    def prepare_source(self, source_pm1: torch.Tensor) -> SourceMotion:
        """Source [B, 3, H, W] in [-1, 1] (only the first image is used) -> SourceMotion."""
        with _fp32_region(source_pm1.device):
            image = to_model_input(source_pm1[:1])
            info, raw = self.get_kp_info(image)
            rotation = info.rotation()
            f_s = self.extract_feature_3d(image)
            x_s = transform_keypoint(info, rotation)
        return SourceMotion(info=info, raw=raw, rotation=rotation, f_s=f_s, x_s=x_s)

    def driving_keypoints(self, source: SourceMotion, driving: KeypointInfo, driving_rotation: torch.Tensor,
                          first: tuple[KeypointInfo, torch.Tensor] | None = None,
                          relative: bool = True) -> DrivingKeypoints:
        """Keypoints x_d per driving frame; relative mode needs the first driving frame's (info, R)."""
        with _fp32_region(driving_rotation.device):
            if not relative:
                return absolute_motion(source.info, driving, driving_rotation)
            if first is None:
                raise ValueError("relative motion needs the first driving frame's keypoint info")
            return relative_motion(source.info, source.rotation, driving, driving_rotation, *first)

    def warp_and_trunk(self, source: SourceMotion, x_d: torch.Tensor) -> tuple[WarpOutput, torch.Tensor]:
        """W(f_s; x_s, x_d) for a chunk of frames, then the SPADE trunk -> (warp output, trunk [n, C, h, w])."""
        with _fp32_region(x_d.device):
            warped = self.warping_module(source.f_s, kp_driving=x_d.float(), kp_source=source.x_s)
            return warped, self.spade_generator(warped.out)

    def run(self, source_pm1: torch.Tensor, driving_pm1: torch.Tensor, relative: bool = True,
            chunk_size: int = 16, kp_batch_size: int = 1, record: bool = False) -> MotionBranchResult:
        """source [1, 3, H, W], driving [F, 3, H, W], both in [-1, 1] -> trunk [F, C_trunk, 64, 64].

        ``chunk_size`` frames go through W and G at once, ``kp_batch_size`` through M (see the
        module docstring). ``record`` keeps every intermediate (fixture names, per-frame tensors
        stacked on dim 0).
        """
        if chunk_size < 1 or kp_batch_size < 1:
            raise ValueError(f"chunk_size ({chunk_size}) and kp_batch_size ({kp_batch_size}) must be >= 1")
        for name, images in (("source", source_pm1), ("driving", driving_pm1)):
            if images.ndim != 4 or images.shape[0] == 0 or images.shape[1] != 3:
                raise ValueError(f"{name} must be [N>=1, 3, H, W] in [-1, 1], got {tuple(images.shape)}")
        source = self.prepare_source(source_pm1)
        first: tuple[KeypointInfo, torch.Tensor] | None = None
        trunks: list[torch.Tensor] = []
        records: list[dict[str, torch.Tensor]] = []
        for start in range(0, driving_pm1.shape[0], chunk_size):
            with _fp32_region(driving_pm1.device):
                images = to_model_input(driving_pm1[start:start + chunk_size])
                info, raw = self.get_kp_info(images, batch_size=kp_batch_size)
                rotation = info.rotation()
                if first is None:
                    first = (info[0], rotation[:1])
                motion = self.driving_keypoints(source, info, rotation, first, relative)
                warped, trunk = self.warp_and_trunk(source, motion.x_d)
            trunks.append(trunk)
            if record:
                records.append(_chunk_record(raw, info, rotation, motion, warped, trunk))
        result = MotionBranchResult(trunk=torch.cat(trunks))
        if record:
            result.intermediates = _source_record(source)
            result.intermediates.update({k: torch.cat([r[k] for r in records]) for k in records[0]})
        return result

    def forward(self, source_pm1: torch.Tensor, driving_pm1: torch.Tensor, relative: bool = True,
                chunk_size: int = 16, kp_batch_size: int = 1) -> torch.Tensor:
        """source [1, 3, H, W], driving [F, 3, H, W] in [-1, 1] -> trunk [F, C_trunk, 64, 64] (float32)."""
        return self.run(source_pm1, driving_pm1, relative=relative, chunk_size=chunk_size,
                        kp_batch_size=kp_batch_size).trunk


def _info_record(prefix: str, info: KeypointInfo, raw: Mapping[str, torch.Tensor],
                 rotation: torch.Tensor) -> dict[str, torch.Tensor]:
    out = {f"{prefix}_raw_{k}": v for k, v in raw.items()}
    keys = ("pitch", "yaw", "roll", "t", "exp", "scale", "kp")
    out.update({f"{prefix}_{k}": getattr(info, k) for k in keys})
    out[f"{prefix}_R"] = rotation
    return out


def _source_record(source: SourceMotion) -> dict[str, torch.Tensor]:
    out = _info_record("src", source.info, source.raw, source.rotation)
    out.update(f_s=source.f_s, x_s=source.x_s)
    return out


def _chunk_record(raw: Mapping[str, torch.Tensor], info: KeypointInfo, rotation: torch.Tensor,
                  motion: DrivingKeypoints, warped: WarpOutput,
                  trunk: torch.Tensor) -> dict[str, torch.Tensor]:
    out = _info_record("drv", info, raw, rotation)
    out.update(R_new=motion.rotation, delta_new=motion.delta, scale_new=motion.scale, t_new=motion.t,
               x_d_new=motion.x_d, warp_out=warped.out, deformation=warped.deformation, out=trunk)
    if warped.occlusion_map is not None:
        out["occlusion_map"] = warped.occlusion_map
    return out
