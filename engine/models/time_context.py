"""SVD's spatio-temporal transformer with an explicit layout for the temporal cross-attention context.

The temporal blocks of SVD cross-attend to one context vector per video (the CLIP image embedding of the
first frame). diffusers 0.27.2 - the version the FRVD release ran - built that context with rows ordered
``(h w b)`` while the temporal hidden states are ordered ``(b h w)``; diffusers PR #7268 changed it to
``(b h w)`` afterwards. With the CFG pair ``[uncond, cond]`` (batch 2, uncond context = zeros) the 0.27.2
layout makes *both* halves see the zero context at even pixel indices and the CLIP context at odd ones.
The published results (and our fixtures) come from that layout, so it is the default here:

* ``"release"``: 0.27.2's layout, applied per group of ``cfg_group`` consecutive batch elements. The release
  always ran one window's CFG pair at batch 2; grouping keeps the result identical when several windows
  are batched together (``[w0_uncond, w0_cond, w1_uncond, w1_cond, ...]``). A batch that is not a multiple
  of ``cfg_group`` is treated as a single group.
* ``"fixed"``: each batch element gets its own context (= running each element alone, = diffusers >= 0.28).

Everything is built from diffusers' sub-modules with diffusers' attribute names, so state-dict keys match
``TransformerSpatioTemporalModel`` exactly, but the forward is ours and does not depend on the installed
diffusers version's ``TransformerSpatioTemporalModel.forward``.
"""

from __future__ import annotations

import torch
from diffusers.models.attention import BasicTransformerBlock, TemporalBasicTransformerBlock
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.resnet import AlphaBlender
from torch import nn

from engine.models import block_ops

TIME_CONTEXT_MODES = ("release", "fixed", "release_cond")


def check_time_context(mode: str, cfg_group: int) -> None:
    if mode not in TIME_CONTEXT_MODES:
        raise ValueError(f"time_context must be one of {TIME_CONTEXT_MODES}, got {mode!r}")
    if cfg_group < 1:
        raise ValueError(f"cfg_group must be >= 1, got {cfg_group}")


def temporal_context(
    encoder_hidden_states: torch.Tensor,
    num_frames: int,
    num_pixels: int,
    mode: str = "release",
    cfg_group: int = 2,
) -> torch.Tensor:
    """Per-row context for the temporal blocks: ``[B*F, L, C] -> [B*num_pixels, L, C]``.

    Row ``b*num_pixels + p`` of the temporal hidden states belongs to video ``b``, pixel ``p``. In
    ``"fixed"`` mode it gets video ``b``'s context. In ``"release"`` mode, inside a group of ``G`` videos,
    row ``r = b*num_pixels + p`` (group-local) gets the context of group member ``r mod G``, which is what
    0.27.2's ``broadcast_to(h*w, B, ...)`` + ``reshape(h*w*B, ...)`` produced.
    """
    batch = encoder_hidden_states.shape[0] // num_frames
    seq, channels = encoder_hidden_states.shape[-2:]
    # [B*F, L, C] -> [B, L, C]: SVD conditions every frame on the same (first-frame) context
    first = encoder_hidden_states.reshape(batch, num_frames, seq, channels)[:, 0]
    return temporal_rows(first, num_pixels, mode, cfg_group)


def temporal_rows(
    per_video: torch.Tensor, num_pixels: int, mode: str = "release", cfg_group: int = 2
) -> torch.Tensor:
    """``[B, L, C]`` (one entry per video) -> ``[B*num_pixels, L, C]`` in the layout ``mode`` gives the
    temporal rows (see ``temporal_context``). Applied to the context itself, or to anything computed
    from it row by row (the one-token cross-attention output)."""
    check_time_context(mode, cfg_group)
    batch, seq, channels = per_video.shape
    if mode == "release_cond":
        # conditional rows run without their unconditional partners (engine.diffusion.guidance): the release pair's
        # cond row reads member (P + p) mod 2 at pixel p - the partner's zero context where that is 0.
        # Zeros are a context value, so this layout applies to the context, not to values computed from it.
        member = (num_pixels + torch.arange(num_pixels, device=per_video.device)) % 2
        ctx = per_video[:, None] * member.to(per_video.dtype)[None, :, None, None]
        return ctx.reshape(batch * num_pixels, seq, channels)
    if mode == "fixed":
        # [B, L, C] -> [B, P, L, C] -> [B*P, L, C]
        ctx = per_video[:, None].expand(batch, num_pixels, seq, channels)
        return ctx.reshape(batch * num_pixels, seq, channels)

    group = cfg_group if batch % cfg_group == 0 else batch
    groups = batch // group
    # [B, L, C] -> [n, 1, G, L, C] -> [n, P, G, L, C] -> [n*P*G, L, C]  (rows (p g) inside each group)
    ctx = per_video.reshape(groups, 1, group, seq, channels).expand(groups, num_pixels, group, seq, channels)
    return ctx.reshape(batch * num_pixels, seq, channels)


class SpatioTemporalTransformer(nn.Module):
    """Keys of diffusers' ``TransformerSpatioTemporalModel``; our forward, selectable context layout."""

    def __init__(
        self,
        num_attention_heads: int,
        attention_head_dim: int,
        in_channels: int,
        num_layers: int = 1,
        cross_attention_dim: int | None = None,
        time_context: str = "release",
        cfg_group: int = 2,
    ) -> None:
        super().__init__()
        check_time_context(time_context, cfg_group)
        self.time_context = time_context
        self.cfg_group = cfg_group
        inner_dim = num_attention_heads * attention_head_dim

        self.norm = nn.GroupNorm(num_groups=32, num_channels=in_channels, eps=1e-6)
        self.proj_in = nn.Linear(in_channels, inner_dim)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(
                inner_dim, num_attention_heads, attention_head_dim, cross_attention_dim=cross_attention_dim
            )
            for _ in range(num_layers)
        )
        self.temporal_transformer_blocks = nn.ModuleList(
            TemporalBasicTransformerBlock(
                inner_dim,
                inner_dim,
                num_attention_heads,
                attention_head_dim,
                cross_attention_dim=cross_attention_dim,
            )
            for _ in range(num_layers)
        )
        self.time_pos_embed = TimestepEmbedding(in_channels, in_channels * 4, out_dim=in_channels)
        self.time_proj = Timesteps(in_channels, True, 0)
        self.time_mixer = AlphaBlender(alpha=0.5, merge_strategy="learned_with_images")
        self.proj_out = nn.Linear(inner_dim, in_channels)
        for block in (*self.transformer_blocks, *self.temporal_transformer_blocks):
            block_ops.check_plain_block(block)
        self._cache = block_ops.ShapeCache()

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        image_only_indicator: torch.Tensor,
    ) -> torch.Tensor:
        """``[B*F, C, h, w]``, context ``[B*F, L, D]``, indicator ``[B, F]`` -> ``[B*F, C, h, w]``.

        The blocks run through ``block_ops`` (diffusers' arithmetic, less work): the one-token
        cross-attentions are computed once per call from the context, not per token.
        """
        # 1. shapes and the temporal blocks' per-video context [B, L, D]
        batch_frames, _, height, width = hidden_states.shape
        num_frames = image_only_indicator.shape[-1]
        batch = batch_frames // num_frames
        seq, dim = encoder_hidden_states.shape[-2:]
        first = encoder_hidden_states.reshape(batch, num_frames, seq, dim)[:, 0]
        time_context = None  # [B*h*w, L, D], built on first use

        # 2. norm + input projection: [B*F, C, h, w] -> [B*F, h*w, C]
        residual = hidden_states
        hidden_states = self.norm(hidden_states)
        channels = hidden_states.shape[1]
        hidden_states = hidden_states.permute(0, 2, 3, 1).reshape(batch_frames, height * width, channels)
        hidden_states = self.proj_in(hidden_states)

        # 3. frame-index embedding, one row per (b, f): [F] -> [B*F, 1, C] (depends on shapes only)
        frame_emb = self._frame_embedding(num_frames, batch, hidden_states)
        alpha = self._mix_alpha(image_only_indicator, hidden_states.dtype)  # [B*F, 1, 1]

        # 4. spatial block, then temporal block on (hidden + frame emb), blended by the learned alpha
        for block, temporal_block in zip(self.transformer_blocks, self.temporal_transformer_blocks):
            cross = None
            if block.attn2 is not None:  # [B*F, 1, C]: the image embedding's value, for every token
                cross = block_ops.single_token_cross_attention(block.attn2, encoder_hidden_states)
            hidden_states = block_ops.spatial_block(block, hidden_states, cross)
            time_cross = None
            if temporal_block.attn2 is not None:  # [B*h*w, 1, C], rows in the layout's order
                if time_context is None:
                    time_context = temporal_rows(first, height * width, self.time_context, self.cfg_group)
                time_cross = block_ops.single_token_cross_attention(temporal_block.attn2, time_context)
            hidden_states_mix = block_ops.temporal_block(
                temporal_block, hidden_states + frame_emb, num_frames, time_cross
            )
            # AlphaBlender: alpha * spatial + (1 - alpha) * temporal
            hidden_states = (alpha * hidden_states).add_(hidden_states_mix.mul_(1.0 - alpha))

        # 5. output projection: [B*F, h*w, C] -> [B*F, C, h, w], plus the input residual
        hidden_states = self.proj_out(hidden_states)
        hidden_states = hidden_states.reshape(batch_frames, height, width, channels).permute(0, 3, 1, 2)
        return hidden_states.contiguous().add_(residual)

    def _frame_embedding(self, num_frames: int, batch: int, like: torch.Tensor) -> torch.Tensor:
        def compute() -> torch.Tensor:
            frame_ids = torch.arange(num_frames, device=like.device).repeat(batch)
            return self.time_pos_embed(self.time_proj(frame_ids).to(like.dtype))[:, None, :]

        key = ("frames", num_frames, batch, like.device, like.dtype)
        return self._cache.get(key, self.time_pos_embed, compute)

    def _mix_alpha(self, image_only_indicator: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """AlphaBlender's ``learned_with_images`` factor, ``[B, F] -> [B*F, 1, 1]``."""
        return self.time_mixer.get_alpha(image_only_indicator, 3).to(dtype)


def set_time_context(model: nn.Module, mode: str, cfg_group: int = 2) -> None:
    """Switch every spatio-temporal transformer inside ``model`` to ``mode`` / ``cfg_group``."""
    check_time_context(mode, cfg_group)
    for module in model.modules():
        if isinstance(module, SpatioTemporalTransformer):
            module.time_context = mode
            module.cfg_group = cfg_group
