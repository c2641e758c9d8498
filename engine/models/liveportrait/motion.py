"""LivePortrait motion extractor M: image -> raw pose logits, translation, expression, scale, canonical kp."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from engine.models.liveportrait.convnextv2 import ConvNeXtV2, MotionHeads, backbone_shape


class MotionExtractor(nn.Module):
    """Wraps the ConvNeXt V2 ``detector`` (release keys ``detector.*``).

    ``backbone`` names a registered variant (``convnextv2_tiny``); ``backbone_depths`` /
    ``backbone_dims`` override it, which is how the tiny fixture variant (``convnextv2_fixture``)
    is described in its config.
    """

    def __init__(self, num_kp: int = 21, backbone: str = "convnextv2_tiny",
                 backbone_depths: Sequence[int] | None = None, backbone_dims: Sequence[int] | None = None,
                 num_bins: int = 66) -> None:
        super().__init__()
        depths, dims = backbone_shape(backbone, backbone_depths, backbone_dims)
        self.num_kp = num_kp
        self.detector = ConvNeXtV2(depths=depths, dims=dims, num_kp=num_kp, num_bins=num_bins)

    def forward(self, image: torch.Tensor) -> MotionHeads:
        """[B, 3, 256, 256] in [0, 1] -> raw heads (``keypoints.refine_kp_info`` gives degrees)."""
        return self.detector(image)
