"""LivePortrait warping network W: warps f_s with the keypoint-driven dense motion, -> 2-D feature."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import nn

from engine.models.liveportrait.blocks import SameBlock2d
from engine.models.liveportrait.dense_motion import DenseMotionNetwork, batched_grid_sample


class WarpOutput(NamedTuple):
    out: torch.Tensor  # [B, C_w, h, w] warped feature (times the occlusion map)
    occlusion_map: torch.Tensor | None  # [B, 1, h, w]
    deformation: torch.Tensor  # [B, d, h, w, 3] (x, y, z) sampling grid


class WarpingNetwork(nn.Module):
    """Dense motion -> 5-D grid sample of f_s -> [B, C*D, h, w] -> SameBlock2d -> 1x1 conv -> * occlusion.

    ``feature_3d`` and ``kp_source`` may have batch 1 while ``kp_driving`` has batch B (see
    dense_motion): the source volume is then never copied per frame.
    """

    def __init__(self, num_kp: int, block_expansion: int, max_features: int, num_down_blocks: int,
                 reshape_channel: int, estimate_occlusion_map: bool = False,
                 dense_motion_params: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__()
        # Optional release kwargs ('upscale' unused, 'flag_use_occlusion_map' default True).
        unknown = set(kwargs) - {"upscale", "flag_use_occlusion_map"}
        if unknown:
            raise TypeError(f"WarpingNetwork got unexpected arguments {sorted(unknown)}")
        self.flag_use_occlusion_map = bool(kwargs.get("flag_use_occlusion_map", True))
        if dense_motion_params is None:
            # Without it the release's forward hits an unbound name; refuse at construction instead.
            raise ValueError("WarpingNetwork needs dense_motion_params")
        self.dense_motion_network = DenseMotionNetwork(
            num_kp=num_kp, feature_channel=reshape_channel, estimate_occlusion_map=estimate_occlusion_map,
            **dense_motion_params,
        )
        width = block_expansion * (2**num_down_blocks)
        self.third = SameBlock2d(max_features, width, kernel_size=3, padding=1, lrelu=True)
        self.fourth = nn.Conv2d(width, width, kernel_size=1)

    def forward(self, feature_3d: torch.Tensor, kp_driving: torch.Tensor,
                kp_source: torch.Tensor) -> WarpOutput:
        dense = self.dense_motion_network(feature_3d, kp_driving=kp_driving, kp_source=kp_source)
        deformation = dense["deformation"]
        occlusion_map = dense.get("occlusion_map")
        warped = batched_grid_sample(feature_3d, deformation.unsqueeze(1)).squeeze(1)  # [B, C, d, h, w]
        b, c, d, h, w = warped.shape
        out = self.fourth(self.third(warped.reshape(b, c * d, h, w)))
        if self.flag_use_occlusion_map and occlusion_map is not None:
            out = out * occlusion_map
        return WarpOutput(out=out, occlusion_map=occlusion_map, deformation=deformation)
