"""WFM + UNet + infofill as one network: what one sampling step evaluates per window batch."""

from __future__ import annotations

import torch
from torch import nn

from engine.models.unet import SVDUNet
from engine.models.wfm import WarpingFeatureMapper


class Denoiser(nn.Module):
    """noise_pred = UNet(x, WFM residuals) + infofill, for a batch of windows with their CFG pairs.

    The batch is laid out [w0_uncond, w0_cond, w1_uncond, w1_cond, ...]; the networks'
    time-context handling treats every consecutive pair as one release-sized batch.
    """

    def __init__(self, wfm: WarpingFeatureMapper, unet: SVDUNet) -> None:
        super().__init__()
        self.wfm = wfm
        self.unet = unet

    def parts(
        self,
        sample: torch.Tensor,  # [B, F, 8, h, w]
        timestep: torch.Tensor,  # 0-d or [B]: one per row
        encoder_hidden_states: torch.Tensor,  # [B, 1, D]
        added_time_ids: torch.Tensor,  # [B, 3]
        head_latents: torch.Tensor,  # [B*F, c0, h, w]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(UNet output before the infofill, infofill), each [B, F, 4, h, w]."""
        down, mid, infofill = self.wfm(
            sample, timestep, encoder_hidden_states, added_time_ids, head_latents, conditioning_scale=1.0
        )
        unet_out = self.unet(
            sample,
            timestep,
            encoder_hidden_states,
            added_time_ids,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
        )
        return unet_out, infofill
