"""The SVD spatio-temporal UNet as the FRVD release runs it (``src/modules/unet.py``).

Keys are identical to diffusers' ``UNetSpatioTemporalConditionModel`` (so the SVD-xt ``unet/`` safetensors
load strictly). Two behaviours are selectable, both defaulting to the release:

* ``residual_injection``: how the WFM's down residuals are added to the skip connections (see ``SVDUNet``).
* ``time_context`` / ``cfg_group``: the temporal cross-attention context layout (see ``time_context.py``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn

from engine.models.svd_blocks import (
    SpatioTemporalDownBlock,
    SpatioTemporalMidBlock,
    SpatioTemporalUpBlock,
    SVDDownPath,
    add_condition_embeddings,
    embed_conditions,
    per_block,
)
from engine.models.time_context import check_time_context, set_time_context

RESIDUAL_INJECTION_MODES = ("release", "once")


@dataclass(frozen=True)
class SVDUNetConfig:
    """The diffusers ``unet/config.json`` fields that shape the network; defaults are SVD-xt's."""

    sample_size: int | None = 96
    in_channels: int = 8
    out_channels: int = 4
    down_block_types: tuple[str, ...] = (
        "CrossAttnDownBlockSpatioTemporal",
        "CrossAttnDownBlockSpatioTemporal",
        "CrossAttnDownBlockSpatioTemporal",
        "DownBlockSpatioTemporal",
    )
    up_block_types: tuple[str, ...] = (
        "UpBlockSpatioTemporal",
        "CrossAttnUpBlockSpatioTemporal",
        "CrossAttnUpBlockSpatioTemporal",
        "CrossAttnUpBlockSpatioTemporal",
    )
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    addition_time_embed_dim: int = 256
    projection_class_embeddings_input_dim: int = 768
    layers_per_block: int | tuple[int, ...] = 2
    cross_attention_dim: int | tuple[int, ...] = 1024
    transformer_layers_per_block: int | tuple[int, ...] = 1
    num_attention_heads: int | tuple[int, ...] = (5, 10, 20, 20)
    num_frames: int = 25
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_dict(cls, config: dict) -> SVDUNetConfig:
        """Accepts a diffusers config dict; unknown keys (``_class_name``, ...) are kept in ``extra``."""
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items() if k in names}
        return cls(**known, extra={k: v for k, v in config.items() if k not in names})

    def to_dict(self) -> dict:
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
            for f in dataclasses.fields(self)
            if f.name != "extra"
        }

    @property
    def num_blocks(self) -> int:
        return len(self.block_out_channels)

    def per_block(self, name: str) -> list[int]:
        return per_block(getattr(self, name), self.num_blocks)


def build_down_path(model: SVDDownPath, config: SVDUNetConfig, full_attention: bool) -> None:
    """conv_in, condition embeddings, down blocks and mid block - the part the UNet and the WFM share."""
    channels = list(config.block_out_channels)
    if len(config.down_block_types) != len(channels) or len(config.up_block_types) != len(channels):
        raise ValueError("down_block_types, up_block_types and block_out_channels must have the same length")
    heads = config.per_block("num_attention_heads")
    cross_dims = config.per_block("cross_attention_dim")
    layers = config.per_block("layers_per_block")
    tlayers = config.per_block("transformer_layers_per_block")
    temb_channels = channels[0] * 4

    model.conv_in = nn.Conv2d(config.in_channels, channels[0], kernel_size=3, padding=1)
    add_condition_embeddings(
        model, channels[0], config.addition_time_embed_dim, config.projection_class_embeddings_input_dim
    )
    model.down_blocks = nn.ModuleList(
        SpatioTemporalDownBlock(
            block_type,
            in_channels=channels[max(i - 1, 0)],
            out_channels=channels[i],
            temb_channels=temb_channels,
            num_layers=layers[i],
            add_downsample=i < len(channels) - 1,
            num_attention_heads=heads[i],
            cross_attention_dim=cross_dims[i],
            transformer_layers=tlayers[i],
            full_attention=full_attention,
        )
        for i, block_type in enumerate(config.down_block_types)
    )
    model.mid_block = SpatioTemporalMidBlock(
        channels[-1], temb_channels, heads[-1], cross_dims[-1], tlayers[-1], full_attention=full_attention
    )


class SVDUNet(SVDDownPath):
    """SVD UNet: ``(sample [B,F,Cin,h,w], timestep, context [B,L,D], time ids [B,3]) -> [B,F,Cout,h,w]``.

    Residual injection (``residual_injection``):

    * ``"release"`` (default) reproduces ``src/modules/unet.py``: the ``zip(skips, residuals)`` addition sits
      INSIDE the down-block loop, so after every down block *all skips collected so far* get their residual
      added again. With SVD's 4 blocks x 2 layers (12 skips: 4 after block 0, 7, 10, 12) residual ``i`` ends
      up added ``[4, 4, 4, 4, 3, 3, 3, 2, 2, 2, 1, 1][i]`` times (as repeated additions, which we replay in
      the same order so the float rounding matches). The WFM was trained with this, so it is what produces
      the published results.
    * ``"once"``: the usual ControlNet injection (each residual added once after the down path).

    The mid residual is added once, after the mid block, in both modes. Without residuals the two modes are
    the plain SVD UNet.
    """

    def __init__(
        self,
        config: SVDUNetConfig | None = None,
        residual_injection: str = "release",
        time_context: str = "release",
        cfg_group: int = 2,
    ):
        super().__init__()
        self.config = config = config or SVDUNetConfig()
        if residual_injection not in RESIDUAL_INJECTION_MODES:
            raise ValueError(f"residual_injection must be one of {RESIDUAL_INJECTION_MODES}")
        self.residual_injection = residual_injection
        check_time_context(time_context, cfg_group)

        build_down_path(self, config, full_attention=False)

        channels = list(config.block_out_channels)
        rev_channels = channels[::-1]
        rev_heads = config.per_block("num_attention_heads")[::-1]
        rev_cross = config.per_block("cross_attention_dim")[::-1]
        rev_layers = config.per_block("layers_per_block")[::-1]
        rev_tlayers = config.per_block("transformer_layers_per_block")[::-1]
        self.up_blocks = nn.ModuleList(
            SpatioTemporalUpBlock(
                block_type,
                in_channels=rev_channels[min(i + 1, len(channels) - 1)],
                prev_output_channels=rev_channels[max(i - 1, 0)],
                out_channels=rev_channels[i],
                temb_channels=channels[0] * 4,
                num_layers=rev_layers[i] + 1,
                add_upsample=i < len(channels) - 1,
                num_attention_heads=rev_heads[i],
                cross_attention_dim=rev_cross[i],
                transformer_layers=rev_tlayers[i],
            )
            for i, block_type in enumerate(config.up_block_types)
        )
        self.conv_norm_out = nn.GroupNorm(num_channels=channels[0], num_groups=32, eps=1e-5)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(channels[0], config.out_channels, kernel_size=3, padding=1)
        set_time_context(self, time_context, cfg_group)

    def set_time_context(self, mode: str, cfg_group: int = 2) -> None:
        set_time_context(self, mode, cfg_group)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float,
        encoder_hidden_states: torch.Tensor,
        added_time_ids: torch.Tensor,
        down_block_additional_residuals: tuple[torch.Tensor, ...] | None = None,
        mid_block_additional_residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``[B, F, Cin, h, w]`` -> ``[B, F, Cout, h, w]``; residuals are ``[B*F, c_i, h_i, w_i]``."""
        batch, num_frames = sample.shape[:2]
        residuals = down_block_additional_residuals

        # 1. embeddings; frames into the batch: [B, F, C, h, w] -> [B*F, C, h, w]
        sample, emb, context, indicator = embed_conditions(
            self, sample, timestep, encoder_hidden_states, added_time_ids
        )

        # 2. conv_in + down path, collecting the skips
        sample = self.conv_in(sample)
        skips = [sample]
        for block in self.down_blocks:
            sample, block_skips = block(sample, emb, context, indicator)
            skips.extend(block_skips)
            if residuals is not None and self.residual_injection == "release":
                # the release's quirk: re-add to every skip collected so far (zip truncates)
                for i in range(min(len(skips), len(residuals))):
                    skips[i] = skips[i] + residuals[i]
        if residuals is not None and self.residual_injection == "once":
            if len(residuals) != len(skips):
                raise ValueError(f"expected {len(skips)} down residuals, got {len(residuals)}")
            skips = [skip + res for skip, res in zip(skips, residuals)]

        # 3. mid block (+ mid residual once)
        sample = self.mid_block(sample, emb, context, indicator)
        if mid_block_additional_residual is not None:
            sample = sample + mid_block_additional_residual

        # 4. up path, each block consuming its skips from the end
        for block in self.up_blocks:
            count = len(cast(SpatioTemporalUpBlock, block).resnets)
            block_skips, skips = skips[-count:], skips[:-count]
            sample = block(sample, block_skips, emb, context, indicator)

        # 5. output head: [B*F, C0, h, w] -> [B, F, Cout, h, w]
        sample = self.conv_out(self.conv_act(self.conv_norm_out(sample)))
        return sample.reshape(batch, num_frames, *sample.shape[1:])
