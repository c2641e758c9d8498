"""ConvNeXt V2 backbone with LivePortrait's keypoint / pose / expression heads (the ``detector`` of M)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

# Only the tiny variant ships with LivePortrait; other widths come from explicit depths/dims.
BACKBONES: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "convnextv2_tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
}


class MotionHeads(NamedTuple):
    """Raw motion-extractor outputs: 66-bin pose logits, translation, expression, scale, canonical kp."""

    pitch: torch.Tensor  # [B, num_bins]
    yaw: torch.Tensor  # [B, num_bins]
    roll: torch.Tensor  # [B, num_bins]
    t: torch.Tensor  # [B, 3]
    exp: torch.Tensor  # [B, 3 * num_kp]
    scale: torch.Tensor  # [B, 1]
    kp: torch.Tensor  # [B, 3 * num_kp]


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel dim of an NCHW tensor, written out as in the release.

    The explicit mean/variance form (rather than F.layer_norm on a permuted view) keeps the
    reference's rounding.
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class ChannelsLastLayerNorm(nn.Module):
    """LayerNorm on NHWC input with the release's parameter names."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)


class GRN(nn.Module):
    """Global response normalisation on NHWC input."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gx = torch.norm(x, p=2, dim=(1, 2), keepdim=True)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
        return self.gamma * (x * nx) + self.beta + x


class ConvNeXtV2Block(nn.Module):
    """Depthwise 7x7 conv -> LN -> 4x MLP with GELU and GRN, residual. (Drop-path is inference-inert.)"""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = ChannelsLastLayerNorm(dim)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.grn = GRN(4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.grn(F.gelu(self.pwconv1(self.norm(y)))))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtV2(nn.Module):
    """Four-stage ConvNeXt V2 -> global average pool -> LayerNorm -> seven linear heads."""

    def __init__(self, depths: Sequence[int], dims: Sequence[int], num_kp: int = 21, num_bins: int = 66,
                 in_chans: int = 3) -> None:
        super().__init__()
        if len(depths) != 4 or len(dims) != 4:
            raise ValueError(f"ConvNeXtV2 needs 4 stages, got depths={list(depths)} dims={list(dims)}")
        self.downsample_layers = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(in_chans, dims[0], kernel_size=4, stride=4), LayerNorm2d(dims[0]))]
        )
        for i in range(3):
            self.downsample_layers.append(
                nn.Sequential(LayerNorm2d(dims[i]), nn.Conv2d(dims[i], dims[i + 1], kernel_size=2, stride=2))
            )
        self.stages = nn.ModuleList(
            nn.Sequential(*[ConvNeXtV2Block(dims[i]) for _ in range(depths[i])]) for i in range(4)
        )
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        width = dims[-1]
        # Registration order follows the release (only cosmetic: state-dict keys are by name).
        self.fc_kp = nn.Linear(width, 3 * num_kp)
        self.fc_scale = nn.Linear(width, 1)
        self.fc_pitch = nn.Linear(width, num_bins)
        self.fc_yaw = nn.Linear(width, num_bins)
        self.fc_roll = nn.Linear(width, num_bins)
        self.fc_t = nn.Linear(width, 3)
        self.fc_exp = nn.Linear(width, 3 * num_kp)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for down, stage in zip(self.downsample_layers, self.stages):
            x = stage(down(x))
        return self.norm(x.mean([-2, -1]))

    def forward(self, x: torch.Tensor) -> MotionHeads:
        feat = self.forward_features(x)
        return MotionHeads(
            pitch=self.fc_pitch(feat),
            yaw=self.fc_yaw(feat),
            roll=self.fc_roll(feat),
            t=self.fc_t(feat),
            exp=self.fc_exp(feat),
            scale=self.fc_scale(feat),
            kp=self.fc_kp(feat),
        )


def backbone_shape(name: str, depths: Sequence[int] | None = None,
                   dims: Sequence[int] | None = None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Resolve a backbone name plus optional overrides to (depths, dims)."""
    if depths is not None and dims is not None:
        return tuple(depths), tuple(dims)
    if name not in BACKBONES:
        raise ValueError(f"unknown motion-extractor backbone {name!r}: known {sorted(BACKBONES)}, "
                         "or pass backbone_depths and backbone_dims")
    base_depths, base_dims = BACKBONES[name]
    return (tuple(depths) if depths is not None else base_depths,
            tuple(dims) if dims is not None else base_dims)
