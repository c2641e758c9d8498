"""SVD UNet blocks (down / mid / up) and the WFM's full spatio-temporal self-attention.

State-dict keys are those of diffusers' ``*SpatioTemporal`` blocks (and of the FRVD release's variants with
``fullattentions``); leaf modules are diffusers' own (``SpatioTemporalResBlock``, ``Downsample2D``,
``Upsample2D``, ``BasicTransformerBlock``, ...). The forwards are ours so that the temporal context layout
(see ``time_context.py``) is under our control.
"""

from __future__ import annotations

import torch
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.resnet import Downsample2D, SpatioTemporalResBlock, Upsample2D
from torch import nn

from engine.models import block_ops
from engine.models.time_context import SpatioTemporalTransformer

CROSS_ATTN_DOWN = "CrossAttnDownBlockSpatioTemporal"
PLAIN_DOWN = "DownBlockSpatioTemporal"
CROSS_ATTN_UP = "CrossAttnUpBlockSpatioTemporal"
PLAIN_UP = "UpBlockSpatioTemporal"


def per_block(value: int | list[int] | tuple[int, ...], count: int) -> list[int]:
    """A config value given either once for all blocks or once per block."""
    if isinstance(value, int):
        return [value] * count
    if len(value) != count:
        raise ValueError(f"expected {count} per-block values, got {list(value)}")
    return list(value)


class FullTemporalTransformer(nn.Module):
    """The release's ``TransformerFullTemporalModel``: self-attention over all F*h*w tokens of a video.

    A sinusoidal embedding of the token index is added AFTER each transformer block, and the output is
    ``proj_out(tokens) + proj_residual(GroupNorm(x))`` - there is no identity path (the caller adds this to
    the spatio-temporal transformer's output).
    """

    def __init__(
        self, num_attention_heads: int, attention_head_dim: int, in_channels: int, num_layers: int = 1
    ):
        super().__init__()
        inner_dim = num_attention_heads * attention_head_dim
        self.norm = nn.GroupNorm(num_groups=32, num_channels=in_channels, eps=1e-6)
        self.proj_in = nn.Linear(in_channels, inner_dim)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(
                inner_dim, num_attention_heads, attention_head_dim, cross_attention_dim=None
            )
            for _ in range(num_layers)
        )
        self.time_pos_embed = TimestepEmbedding(in_channels, in_channels * 4, out_dim=in_channels)
        self.time_proj = Timesteps(in_channels, True, 0)
        self.proj_out = nn.Linear(inner_dim, in_channels)
        self.proj_residual = nn.Linear(inner_dim, in_channels)
        for block in self.transformer_blocks:
            block_ops.check_plain_block(block)
        self._cache = block_ops.ShapeCache()

    def forward(self, hidden_states: torch.Tensor, image_only_indicator: torch.Tensor) -> torch.Tensor:
        """``[B*F, C, h, w]`` -> ``[B*F, C, h, w]`` (no identity path)."""
        # 1. norm, then one token sequence per video: [B*F, C, h, w] -> [B, F*h*w, C]
        batch_frames, _, height, width = hidden_states.shape
        num_frames = image_only_indicator.shape[-1]
        batch = batch_frames // num_frames
        num_tokens = num_frames * height * width
        hidden_states = self.norm(hidden_states)
        channels = hidden_states.shape[1]
        tokens = hidden_states.permute(0, 2, 3, 1).reshape(batch, num_tokens, channels)

        # 2. the two projections of the normalised tokens
        residual = self.proj_residual(tokens)
        hidden_states = self.proj_in(tokens)

        # 3. token-index embedding, identical for every video and every call: [N] -> [1, N, C]
        pos_emb = self._position_embedding(num_tokens, tokens)

        # 4. self-attention blocks, position embedding added after each
        for block in self.transformer_blocks:
            hidden_states = block_ops.spatial_block(block, hidden_states, None).add_(pos_emb)

        # 5. [B, F*h*w, C] -> [B*F, C, h, w] for both paths
        hidden_states = self.proj_out(hidden_states).add_(residual)
        hidden_states = hidden_states.reshape(batch_frames, height, width, channels).permute(0, 3, 1, 2)
        return hidden_states.contiguous()

    def _position_embedding(self, num_tokens: int, like: torch.Tensor) -> torch.Tensor:
        def compute() -> torch.Tensor:
            positions = torch.arange(num_tokens, device=like.device)
            return self.time_pos_embed(self.time_proj(positions).to(like.dtype))[None]

        return self._cache.get((num_tokens, like.device, like.dtype), self.time_pos_embed, compute)


class SpatioTemporalDownBlock(nn.Module):
    """``DownBlockSpatioTemporal`` / ``CrossAttnDownBlockSpatioTemporal`` (+ the WFM's ``fullattentions``)."""

    def __init__(
        self,
        block_type: str,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        num_layers: int,
        add_downsample: bool,
        num_attention_heads: int = 1,
        cross_attention_dim: int = 1024,
        transformer_layers: int = 1,
        full_attention: bool = False,
    ):
        super().__init__()
        if block_type not in (CROSS_ATTN_DOWN, PLAIN_DOWN):
            raise ValueError(f"unsupported down block type {block_type!r}")
        with_attention = block_type == CROSS_ATTN_DOWN
        # diffusers uses eps 1e-6 in the cross-attention variant and 1e-5 in the plain one
        eps = 1e-6 if with_attention else 1e-5
        head_dim = out_channels // num_attention_heads
        self.resnets = nn.ModuleList(
            SpatioTemporalResBlock(
                in_channels if i == 0 else out_channels, out_channels, temb_channels, eps=eps
            )
            for i in range(num_layers)
        )
        self.attentions = None
        self.fullattentions = None
        if with_attention:
            self.attentions = nn.ModuleList(
                SpatioTemporalTransformer(
                    num_attention_heads, head_dim, out_channels, transformer_layers, cross_attention_dim
                )
                for _ in range(num_layers)
            )
            if full_attention:
                self.fullattentions = nn.ModuleList(
                    FullTemporalTransformer(num_attention_heads, head_dim, out_channels, transformer_layers)
                    for _ in range(num_layers)
                )
        self.downsamplers = None
        if add_downsample:
            self.downsamplers = nn.ModuleList(
                [Downsample2D(out_channels, use_conv=True, out_channels=out_channels, padding=1, name="op")]
            )

    def forward(
        self,
        hidden_states: torch.Tensor,
        temb: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        image_only_indicator: torch.Tensor,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Returns the block output and its skip samples (one per layer, plus the downsampled one)."""
        skips = []
        for i, resnet in enumerate(self.resnets):
            hidden_states = resnet(hidden_states, temb, image_only_indicator=image_only_indicator)
            if self.attentions is not None:
                attn_out = self.attentions[i](hidden_states, encoder_hidden_states, image_only_indicator)
                if self.fullattentions is not None:
                    # WFM: h = attn(h) + fullattn(h), both from the same resnet output
                    attn_out = attn_out + self.fullattentions[i](hidden_states, image_only_indicator)
                hidden_states = attn_out
            skips.append(hidden_states)
        if self.downsamplers is not None:
            hidden_states = self.downsamplers[0](hidden_states)
            skips.append(hidden_states)
        return hidden_states, skips


class SpatioTemporalMidBlock(nn.Module):
    """``UNetMidBlockSpatioTemporal`` (+ the WFM's ``fullattentions`` before the second resnet)."""

    def __init__(
        self,
        channels: int,
        temb_channels: int,
        num_attention_heads: int,
        cross_attention_dim: int,
        transformer_layers: int = 1,
        full_attention: bool = False,
    ):
        super().__init__()
        head_dim = channels // num_attention_heads
        self.resnets = nn.ModuleList(
            SpatioTemporalResBlock(channels, channels, temb_channels, eps=1e-5) for _ in range(2)
        )
        self.attentions = nn.ModuleList(
            [
                SpatioTemporalTransformer(
                    num_attention_heads, head_dim, channels, transformer_layers, cross_attention_dim
                )
            ]
        )
        self.fullattentions = None
        if full_attention:
            self.fullattentions = nn.ModuleList(
                [FullTemporalTransformer(num_attention_heads, head_dim, channels, transformer_layers)]
            )

    def forward(
        self,
        hidden_states: torch.Tensor,
        temb: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        image_only_indicator: torch.Tensor,
    ) -> torch.Tensor:
        hidden_states = self.resnets[0](hidden_states, temb, image_only_indicator=image_only_indicator)
        attn_out = self.attentions[0](hidden_states, encoder_hidden_states, image_only_indicator)
        if self.fullattentions is not None:
            attn_out = attn_out + self.fullattentions[0](hidden_states, image_only_indicator)
        return self.resnets[1](attn_out, temb, image_only_indicator=image_only_indicator)


class SpatioTemporalUpBlock(nn.Module):
    """``UpBlockSpatioTemporal`` / ``CrossAttnUpBlockSpatioTemporal``."""

    def __init__(
        self,
        block_type: str,
        in_channels: int,
        prev_output_channels: int,
        out_channels: int,
        temb_channels: int,
        num_layers: int,
        add_upsample: bool,
        num_attention_heads: int = 1,
        cross_attention_dim: int = 1024,
        transformer_layers: int = 1,
    ):
        super().__init__()
        if block_type not in (CROSS_ATTN_UP, PLAIN_UP):
            raise ValueError(f"unsupported up block type {block_type!r}")
        resnets = []
        for i in range(num_layers):
            skip_channels = in_channels if i == num_layers - 1 else out_channels
            resnet_in = prev_output_channels if i == 0 else out_channels
            # diffusers' get_up_block never forwards resnet_eps for these blocks: always the 1e-6 default
            resnets.append(
                SpatioTemporalResBlock(resnet_in + skip_channels, out_channels, temb_channels, eps=1e-6)
            )
        self.resnets = nn.ModuleList(resnets)
        self.attentions = None
        if block_type == CROSS_ATTN_UP:
            self.attentions = nn.ModuleList(
                SpatioTemporalTransformer(
                    num_attention_heads,
                    out_channels // num_attention_heads,
                    out_channels,
                    transformer_layers,
                    cross_attention_dim,
                )
                for _ in range(num_layers)
            )
        self.upsamplers = None
        if add_upsample:
            self.upsamplers = nn.ModuleList(
                [Upsample2D(out_channels, use_conv=True, out_channels=out_channels)]
            )

    def forward(
        self,
        hidden_states: torch.Tensor,
        skips: list[torch.Tensor],
        temb: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        image_only_indicator: torch.Tensor,
    ) -> torch.Tensor:
        """``skips`` holds exactly ``len(self.resnets)`` samples, consumed from the last one."""
        for i, resnet in enumerate(self.resnets):
            hidden_states = torch.cat([hidden_states, skips[-1 - i]], dim=1)
            hidden_states = resnet(hidden_states, temb, image_only_indicator=image_only_indicator)
            if self.attentions is not None:
                hidden_states = self.attentions[i](hidden_states, encoder_hidden_states, image_only_indicator)
        if self.upsamplers is not None:
            hidden_states = self.upsamplers[0](hidden_states)
        return hidden_states


class SVDDownPath(nn.Module):
    """What the UNet and the WFM share, declared for the type checker: ``build_down_path`` (unet.py) and
    ``add_condition_embeddings`` attach these modules; ``embed_conditions`` reads them."""

    conv_in: nn.Conv2d
    time_proj: nn.Module
    time_embedding: nn.Module
    add_time_proj: nn.Module
    add_embedding: nn.Module
    down_blocks: nn.ModuleList
    mid_block: SpatioTemporalMidBlock


def add_condition_embeddings(
    model: SVDDownPath, base_channels: int, addition_time_embed_dim: int, projection_input_dim: int
) -> None:
    """Attach SVD's time and added-time-id embeddings (``time_embedding``, ``add_embedding``) to ``model``."""
    time_embed_dim = base_channels * 4
    model.time_proj = Timesteps(base_channels, True, downscale_freq_shift=0)
    model.time_embedding = TimestepEmbedding(base_channels, time_embed_dim)
    model.add_time_proj = Timesteps(addition_time_embed_dim, True, downscale_freq_shift=0)
    model.add_embedding = TimestepEmbedding(projection_input_dim, time_embed_dim)


def embed_conditions(
    model: SVDDownPath,
    sample: torch.Tensor,
    timestep: torch.Tensor | float,
    encoder_hidden_states: torch.Tensor,
    added_time_ids: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """SVD's input preparation, shared by the UNet and the WFM.

    ``model`` holds ``time_proj``, ``time_embedding``, ``add_time_proj``, ``add_embedding``.
    Returns ``(sample [B*F, C, h, w], temb [B*F, E], context [B*F, L, D], image_only_indicator [B, F])``.
    """
    batch, num_frames = sample.shape[:2]
    # 1. timestep: python number, 0-d or [B] tensor -> [B]
    if not torch.is_tensor(timestep):
        timestep = torch.tensor(
            [timestep], dtype=torch.float64 if isinstance(timestep, float) else torch.int64
        )
    timestep = timestep.to(sample.device).reshape(-1).expand(batch)

    # 2. time + added-time-id embeddings: [B] -> [B, E], a CFG pair at a time (see block_ops.by_pairs)
    emb = block_ops.by_pairs(model.time_embedding, model.time_proj(timestep).to(sample.dtype))
    time_embeds = model.add_time_proj(added_time_ids.flatten()).reshape(batch, -1).to(emb.dtype)
    emb = emb + block_ops.by_pairs(model.add_embedding, time_embeds)

    # 3. frames into the batch: [B, F, ...] -> [B*F, ...]
    sample = sample.flatten(0, 1)
    emb = emb.repeat_interleave(num_frames, dim=0)
    encoder_hidden_states = encoder_hidden_states.repeat_interleave(num_frames, dim=0)
    image_only_indicator = torch.zeros(batch, num_frames, dtype=sample.dtype, device=sample.device)
    return sample, emb, encoder_hidden_states, image_only_indicator
