"""The fast modes' denoiser graphs (engine.config.modes): the WFM and the UNet as separate graphs (WFM reuse
across evaluations) and conditional-only variants whose batch is one row per window. Their specs are
built beside the others in ``engine.graphs.modules``; the modules take the spec's inputs in order."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from engine.models.approx import M, shared_copy


def cond_view(denoiser: M) -> M:
    """The denoiser for conditional-only rows: the same parameters (shared, engine.models.approx.shared_copy)
    with the time-context layout that keeps each row's prediction what it is inside a release CFG pair
    (``release_cond``; ``fixed`` rows are independent anyway), set once here rather than switched
    around each call."""
    # imported here: the runtime imports this module, and its torch path must import without diffusers
    from engine.models.time_context import SpatioTemporalTransformer

    blocks = [m for m in denoiser.modules() if isinstance(m, SpatioTemporalTransformer)]
    if not blocks:
        return denoiser
    view = shared_copy(denoiser)
    for b in view.modules():
        if isinstance(b, SpatioTemporalTransformer):
            b.time_context = "release_cond" if b.time_context == "release" else b.time_context
            b.cfg_group = 1
    return view


class DenoiserCondGraph(nn.Module):
    """The fused denoiser over conditional rows only, one per window (batch ``windows``)."""

    def __init__(self, nets: Any) -> None:
        super().__init__()
        self.denoiser = cond_view(nets.denoiser)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                added_time_ids: torch.Tensor, head_latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.denoiser.parts(sample, timestep, encoder_hidden_states, added_time_ids, head_latents.flatten(0, 1))


class WfmGraph(nn.Module):
    """The Warping Feature Mapper alone: -> 12 down residuals, the mid residual and the infofill."""

    def __init__(self, nets: Any, cond: bool = False) -> None:
        super().__init__()
        self.denoiser, self.cond = cond_view(nets.denoiser) if cond else nets.denoiser, cond

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                added_time_ids: torch.Tensor, head_latents: torch.Tensor) -> tuple[torch.Tensor, ...]:
        down, mid, infofill = self.denoiser.wfm(sample, timestep, encoder_hidden_states, added_time_ids,
                                                head_latents.flatten(0, 1), conditioning_scale=1.0)
        return (*down, mid, infofill)


DOWN_RESIDUALS = 12  # SVD's skips: conv_in, 2 per block x 4 blocks, 3 downsamplers


class UnetGraph(nn.Module):
    """The UNet with the WFM's residuals as inputs (-> the UNet output before the infofill). The
    residuals are named arguments: torch.export matches dynamic shapes to argument names."""

    def __init__(self, nets: Any, cond: bool = False) -> None:
        super().__init__()
        self.denoiser, self.cond = cond_view(nets.denoiser) if cond else nets.denoiser, cond

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                added_time_ids: torch.Tensor, down0: torch.Tensor, down1: torch.Tensor, down2: torch.Tensor,
                down3: torch.Tensor, down4: torch.Tensor, down5: torch.Tensor, down6: torch.Tensor,
                down7: torch.Tensor, down8: torch.Tensor, down9: torch.Tensor, down10: torch.Tensor,
                down11: torch.Tensor, mid: torch.Tensor) -> torch.Tensor:
        down = (down0, down1, down2, down3, down4, down5, down6, down7, down8, down9, down10, down11)
        return self.denoiser.unet(sample, timestep, encoder_hidden_states, added_time_ids,
                                  down_block_additional_residuals=down, mid_block_additional_residual=mid)
