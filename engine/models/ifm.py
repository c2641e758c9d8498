"""Internal Feature Modulator (``src/modules/internal_feature_modulator.py``): a step of the infofill path."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.resnet import ResnetBlock2D
from torch import nn


class InternalFeatureModulator(nn.Module):
    """``resStraight(upsample2x(x)) + resLateral(lateral)``; output has ``lateral_channels`` channels.

    Both are diffusers ``ResnetBlock2D`` without a time embedding (GroupNorm 32, eps 1e-6).
    """

    def __init__(self, lateral_channels: int, in_channels: int):
        super().__init__()
        self.resLateral = ResnetBlock2D(
            in_channels=lateral_channels, out_channels=lateral_channels, temb_channels=None
        )
        self.resStraight = ResnetBlock2D(
            in_channels=in_channels, out_channels=lateral_channels, temb_channels=None
        )

    def forward(self, lateral: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        """lateral ``[N, Cl, 2h, 2w]``, hidden ``[N, Cin, h, w]`` -> ``[N, Cl, 2h, 2w]``."""
        hidden_states = F.interpolate(hidden_states, scale_factor=2, mode="bilinear", align_corners=False)
        hidden_states = self.resStraight(hidden_states, None)
        return hidden_states + self.resLateral(lateral, None)
