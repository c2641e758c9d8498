"""HeadNet (``src/modules/head_net.py``): maps the LivePortrait SPADE trunk to the UNet's first width."""

from __future__ import annotations

import math

import torch
from torch import nn


class HeadNet(nn.Module):
    """``[B, F, trunk, h, w] -> [B*F, latent, h, w]`` = ``final_proj(conv-silu-conv-silu(x)) * scale``.

    Keys: ``conv_layers.0/2``, ``final_proj``, ``scale`` (a learned scalar, shape [1]).
    """

    def __init__(self, trunk_channels: int = 512, latent_channels: int = 320):
        super().__init__()
        self.conv_layers = nn.Sequential(
            nn.Conv2d(trunk_channels, trunk_channels, kernel_size=3, padding=1),
            nn.SiLU(),
            nn.Conv2d(trunk_channels, trunk_channels, kernel_size=3, padding=1),
            nn.SiLU(),
        )
        self.final_proj = nn.Conv2d(trunk_channels, latent_channels, kernel_size=1)
        self.scale = nn.Parameter(torch.full((1,), 2.0))
        self._init_like_release()

    @torch.no_grad()
    def _init_like_release(self) -> None:
        # only matters untrained: He-normal convs and a zero projection, so the condition starts at 0
        for module in self.conv_layers:
            if isinstance(module, nn.Conv2d) and module.weight.device.type != "meta":
                fan_in = module.kernel_size[0] * module.kernel_size[1] * module.in_channels
                nn.init.normal_(module.weight, mean=0.0, std=math.sqrt(2.0 / fan_in))
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        if self.final_proj.weight.device.type != "meta":
            nn.init.zeros_(self.final_proj.weight)
            if self.final_proj.bias is not None:
                nn.init.zeros_(self.final_proj.bias)

    @classmethod
    def from_state_dict(cls, state_dict: dict[str, torch.Tensor]) -> HeadNet:
        """Widths read from the weight shapes; loads strictly."""
        weight = state_dict["final_proj.weight"]
        net = cls(trunk_channels=weight.shape[1], latent_channels=weight.shape[0])
        net.load_state_dict(state_dict, strict=True)
        return net

    def forward(self, trunk: torch.Tensor) -> torch.Tensor:
        # [B, F, C, h, w] -> [B*F, C, h, w]
        hidden_states = trunk.flatten(0, 1)
        return self.final_proj(self.conv_layers(hidden_states)) * self.scale
