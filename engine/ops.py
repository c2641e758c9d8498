"""5-D grid sampling entry point used by the warping network.

The kernel issue replaces the body with the kernel library when it is built; the
signature and semantics are those of ``torch.nn.functional.grid_sample`` on 5-D input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def grid_sample3d(
    input: torch.Tensor,
    grid: torch.Tensor,
    mode: str = "bilinear",
    padding_mode: str = "zeros",
    align_corners: bool = False,
) -> torch.Tensor:
    """Sample a [N, C, D, H, W] volume at a [N, Do, Ho, Wo, 3] grid (xyz order)."""
    return F.grid_sample(input, grid, mode=mode, padding_mode=padding_mode, align_corners=align_corners)
