"""Named approximations of the networks themselves (not of the sampling loop).

``kv_downsample(module, 2)``: inside the WFM's full spatio-temporal attentions, keys and values
come from the 2x2 average of the (normalised) tokens of each frame, so every query attends to
F * h/2 * w/2 tokens instead of F * h * w: 4x less attention work (QK^T, PV and the K/V
projections; the projections are affine, so pooling before them equals pooling K and V). The
queries keep full resolution, so the output does too. At the official size the first block's
two attentions over 57,344 tokens are a quarter of all the work (docs/cost_model.md).

``kv_downsample(denoiser, 2)`` builds, once, a copy of the network that shares every parameter with
it and in which each full attention's ``to_k`` / ``to_v`` is wrapped by a module that pools its input
first, so whichever attention forward runs (diffusers' processor or a lean one) sees pooled keys and
values. The original network is never changed: exact mode never sees it; exported graphs never
contain it (torch backend only: ``TorchBackend.kv_downsample``). Grids with an odd side stay exact.
"""

from __future__ import annotations

import copy
import itertools
from typing import TypeVar

import torch
from torch import nn

M = TypeVar("M", bound=nn.Module)


class PooledProjection(nn.Module):
    """``proj(pool(x))``: x [N, F*h*w, C] tokens ordered (frame, y, x), pooled f x f per frame."""

    def __init__(self, proj: nn.Module, factor: int, grid: list[tuple[int, int, int]]) -> None:
        super().__init__()
        self.proj, self.factor, self.grid = proj, factor, grid  # grid[0]: (frames, h, w) of the current call

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames, h, w = self.grid[0]
        f = self.factor
        if h % f or w % f or x.shape[1] != frames * h * w:
            return self.proj(x)
        n, _, c = x.shape
        pooled = x.reshape(n, frames, h // f, f, w // f, f, c).mean(dim=(3, 5)).reshape(n, -1, c)
        return self.proj(pooled)


def pooled_tokens(tokens: int, frames: int, h: int, w: int, factor: int) -> int:
    """Key/value count of one full attention over ``tokens`` queries under ``factor`` pooling."""
    if factor == 1 or h % factor or w % factor or tokens != frames * h * w:
        return tokens
    return frames * (h // factor) * (w // factor)


def shared_copy(module: M) -> M:
    """A structural copy of ``module`` whose parameters and buffers ARE the original's (shared, no
    memory): a variant of a network whose submodules are configured differently, set once at build."""
    shared = {id(t): t for t in itertools.chain(module.parameters(), module.buffers())}
    return copy.deepcopy(module, memo=shared)


def kv_downsample(module: M, factor: int) -> M:
    """``module`` (a shared copy when ``factor`` > 1) in which every full attention uses ``factor`` x
    ``factor``-pooled keys/values; the original is left exact. Built once, then called like the original."""
    if factor == 1:
        return module
    # imported here: the runtime imports this module, and its torch path must import without diffusers
    from diffusers.models.attention_processor import Attention

    from engine.models.svd_blocks import FullTemporalTransformer

    pooled = shared_copy(module)
    for block in [m for m in pooled.modules() if isinstance(m, FullTemporalTransformer)]:
        grid: list[tuple[int, int, int]] = [(0, 0, 0)]

        def record(mod: nn.Module, args: tuple, grid: list = grid) -> None:
            hidden, indicator = args[0], args[1]
            grid[0] = (int(indicator.shape[-1]), int(hidden.shape[-2]), int(hidden.shape[-1]))

        block.register_forward_pre_hook(record)
        for attn in [m for m in block.modules() if isinstance(m, Attention)]:
            for name in ("to_k", "to_v"):
                setattr(attn, name, PooledProjection(getattr(attn, name), factor, grid))
    return pooled
