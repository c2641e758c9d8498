"""LivePortrait dense motion network: sparse keypoint motions -> dense 3-D deformation + occlusion map.

Batching: the source feature volume and source keypoints may have batch 1 while the driving
keypoints have batch B (all driving frames of one source). Source-only work (compression,
source heatmaps) is then done once, and every 5-D grid sample reads the single source volume
through a grid stacked along the output depth instead of copying the volume per frame/keypoint.
Each sample point is computed independently, so this equals the release's per-frame calls.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.kernels.grid_sample import grid_sample3d
from engine.models.liveportrait.blocks import Hourglass

KP_VARIANCE = 0.01


def make_coordinate_grid(spatial_size: tuple[int, int, int], ref: torch.Tensor) -> torch.Tensor:
    """[d, h, w, 3] grid of (x, y, z) in [-1, 1] (``2*i/(n-1) - 1``), x fastest - grid_sample's order."""
    d, h, w = spatial_size
    axes = [2 * (torch.arange(n, dtype=ref.dtype, device=ref.device) / (n - 1)) - 1 for n in (w, h, d)]
    zz, yy, xx = torch.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    return torch.stack([xx, yy, zz], dim=-1)


def batched_grid_sample(volume: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Sample ``volume`` [Bv, C, D, H, W] at ``grid`` [B, n, d, h, w, 3] -> [B, n, C, d, h, w].

    B must be a multiple of Bv (frames of the same source share its volume). The n*d grid
    slices of each volume are stacked on the grid's depth axis so one grid_sample3d call reads
    the volume without repeating it (the release repeats it per keypoint: same numbers).
    """
    bv, c = volume.shape[:2]
    b, n, d, h, w, _ = grid.shape
    if b % bv:
        raise ValueError(f"grid batch {b} is not a multiple of the volume batch {bv}")
    per = b // bv
    stacked = grid.reshape(bv, per * n * d, h, w, 3)
    out = grid_sample3d(volume, stacked, mode="bilinear", padding_mode="zeros", align_corners=False)
    out = out.view(bv, c, per, n, d, h, w).permute(0, 2, 3, 1, 4, 5, 6)
    return out.reshape(b, n, c, d, h, w)


def keypoint_heatmaps(kp: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Gaussian per keypoint: kp [B, K, 3], grid [d, h, w, 3] -> [B, K, d, h, w]."""
    diff = grid - kp[:, :, None, None, None, :]
    # Operation order (-0.5*s)/var follows the release's kp2gaussian.
    return torch.exp(-0.5 * (diff**2).sum(-1) / KP_VARIANCE)


class DenseMotionNetwork(nn.Module):
    """Predicts a soft assignment of every voxel to one of K+1 sparse motions (K keypoints + identity)."""

    def __init__(self, block_expansion: int, num_blocks: int, max_features: int, num_kp: int,
                 feature_channel: int, reshape_depth: int, compress: int,
                 estimate_occlusion_map: bool = True) -> None:
        super().__init__()
        self.num_kp = num_kp
        self.hourglass = Hourglass(block_expansion, (num_kp + 1) * (compress + 1), num_blocks, max_features)
        self.mask = nn.Conv3d(self.hourglass.out_filters, num_kp + 1, kernel_size=7, padding=3)
        self.compress = nn.Conv3d(feature_channel, compress, kernel_size=1)
        self.norm = nn.BatchNorm3d(compress, affine=True)
        self.occlusion: nn.Conv2d | None = None
        if estimate_occlusion_map:
            occ_in = self.hourglass.out_filters * reshape_depth
            self.occlusion = nn.Conv2d(occ_in, 1, kernel_size=7, padding=3)

    def sparse_motions(self, grid: torch.Tensor, kp_driving: torch.Tensor,
                       kp_source: torch.Tensor) -> torch.Tensor:
        """[B, K+1, d, h, w, 3]: identity first, then grid - kp_d + kp_s (zero-order motion only)."""
        b = kp_driving.shape[0]
        motion = grid - kp_driving[:, :, None, None, None, :] + kp_source[:, :, None, None, None, :]
        identity = grid.expand(b, 1, *grid.shape)
        return torch.cat([identity, motion], dim=1)

    def forward(self, feature: torch.Tensor, kp_driving: torch.Tensor,
                kp_source: torch.Tensor) -> dict[str, torch.Tensor]:
        """feature [Bf, C, d, h, w] (Bf = 1 or B), kp_driving [B, K, 3], kp_source [1 or B, K, 3]."""
        b = kp_driving.shape[0]
        _, _, d, h, w = feature.shape
        feature = F.relu(self.norm(self.compress(feature)))
        grid = make_coordinate_grid((d, h, w), kp_driving)

        # 1. Source volume deformed by each of the K+1 sparse motions.
        sparse = self.sparse_motions(grid, kp_driving, kp_source)
        deformed = batched_grid_sample(feature, sparse)  # [B, K+1, c, d, h, w]

        # 2. Keypoint heatmaps (driving - source) with a zero background channel.
        heat = keypoint_heatmaps(kp_driving, grid) - keypoint_heatmaps(kp_source, grid)
        heat = torch.cat([heat.new_zeros(b, 1, d, h, w), heat], dim=1)

        hourglass_in = torch.cat([heat.unsqueeze(2), deformed], dim=2).view(b, -1, d, h, w)
        prediction = self.hourglass(hourglass_in)

        # 3. Softmax mask over the K+1 motions blends them into one dense deformation grid.
        mask = F.softmax(self.mask(prediction), dim=1)
        deformation = (sparse * mask.unsqueeze(-1)).sum(dim=1)  # [B, d, h, w, 3]
        out = {"mask": mask, "deformation": deformation}
        if self.occlusion is not None:
            out["occlusion_map"] = torch.sigmoid(self.occlusion(prediction.view(b, -1, h, w)))
        return out
