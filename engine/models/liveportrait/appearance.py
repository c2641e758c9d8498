"""LivePortrait appearance feature extractor F: source image -> 3-D feature volume f_s."""

from __future__ import annotations

import torch
from torch import nn

from engine.models.liveportrait.blocks import DownBlock2d, ResBlock3d, SameBlock2d


class AppearanceFeatureExtractor(nn.Module):
    """[B, 3, 256, 256] in [0, 1] -> f_s [B, reshape_channel, reshape_depth, 64, 64].

    The 2-D trunk ends with ``max_features`` channels that are reinterpreted as
    ``reshape_channel x reshape_depth`` (so max_features must equal their product).
    """

    def __init__(self, image_channel: int, block_expansion: int, num_down_blocks: int, max_features: int,
                 reshape_channel: int, reshape_depth: int, num_resblocks: int) -> None:
        super().__init__()
        if reshape_channel * reshape_depth != max_features:
            raise ValueError(f"reshape_channel*reshape_depth ({reshape_channel}*{reshape_depth}) "
                             f"must equal max_features ({max_features})")
        self.reshape_channel = reshape_channel
        self.reshape_depth = reshape_depth
        self.first = SameBlock2d(image_channel, block_expansion)
        widths = [min(max_features, block_expansion * (2**i)) for i in range(num_down_blocks + 1)]
        self.down_blocks = nn.ModuleList(DownBlock2d(cin, cout) for cin, cout in zip(widths, widths[1:]))
        self.second = nn.Conv2d(widths[-1], max_features, kernel_size=1)
        # The release names the residual blocks '3dr<i>' inside a Sequential; keep the keys.
        self.resblocks_3d = nn.Sequential()
        for i in range(num_resblocks):
            self.resblocks_3d.add_module(f"3dr{i}", ResBlock3d(reshape_channel))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        out = self.first(image)
        for block in self.down_blocks:
            out = block(out)
        out = self.second(out)
        bs, _, h, w = out.shape
        return self.resblocks_3d(out.view(bs, self.reshape_channel, self.reshape_depth, h, w))
