"""The lean transformer forwards (engine.models.block_ops) against diffusers' own: the same bits."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention import BasicTransformerBlock, TemporalBasicTransformerBlock

from engine.models import block_ops
from engine.models.svd_blocks import FullTemporalTransformer
from engine.models.time_context import SpatioTemporalTransformer, temporal_context

B, F, C, HW = 2, 14, 32, 8  # a CFG pair of 14-frame videos, 8x8 tokens per frame


def randomised(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return module.eval()


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of a few sequences, so that the blocked paths run on these small inputs."""
    monkeypatch.setattr(block_ops, "CHUNK_ROWS", 128)


@torch.no_grad()
@pytest.mark.parametrize("blocked", [False, True])
def test_spatial_block_equals_diffusers(blocked, request):
    if blocked:
        request.getfixturevalue("small_blocks")
    block = randomised(BasicTransformerBlock(C, 2, C // 2, cross_attention_dim=C))
    x = torch.randn(B * F, HW * HW, C)
    context = torch.randn(B, 1, C).repeat_interleave(F, 0)
    cross = block_ops.single_token_cross_attention(block.attn2, context)
    assert torch.equal(block_ops.spatial_block(block, x, cross), block(x, encoder_hidden_states=context))


@torch.no_grad()
@pytest.mark.parametrize("blocked", [False, True])
def test_temporal_block_equals_diffusers(blocked, request):
    if blocked:
        request.getfixturevalue("small_blocks")
    block = randomised(TemporalBasicTransformerBlock(C, C, 2, C // 2, cross_attention_dim=C))
    x = torch.randn(B * F, HW * HW, C)
    rows = temporal_context(torch.randn(B, 1, C).repeat_interleave(F, 0), F, HW * HW, "release", 2)
    cross = block_ops.single_token_cross_attention(block.attn2, rows)
    ref = block(x, num_frames=F, encoder_hidden_states=rows)
    assert torch.equal(block_ops.temporal_block(block, x.clone(), F, cross), ref)


@torch.no_grad()
def test_blocking_does_not_change_the_transformers(monkeypatch):
    stt = randomised(SpatioTemporalTransformer(2, C // 2, C, 1, C))
    full = randomised(FullTemporalTransformer(2, C // 2, C))
    x = torch.randn(B * F, C, HW, HW)
    context = torch.randn(B, 1, C).repeat_interleave(F, 0)
    indicator = torch.zeros(B, F)
    whole = stt(x, context, indicator), full(x, indicator)
    monkeypatch.setattr(block_ops, "CHUNK_ROWS", 128)
    assert torch.equal(stt(x, context, indicator), whole[0])
    assert torch.equal(full(x, indicator), whole[1])


@torch.no_grad()
def test_position_embedding_cache_follows_the_weights():
    full = randomised(FullTemporalTransformer(2, C // 2, C))
    x, indicator = torch.randn(B * F, C, HW, HW), torch.zeros(B, F)
    before = full(x, indicator)
    assert torch.equal(full(x, indicator), before)  # served from the cache
    state = {k: v * 2 if k.startswith("time_pos_embed.") else v for k, v in full.state_dict().items()}
    full.load_state_dict(state)
    fresh = FullTemporalTransformer(2, C // 2, C).eval()
    fresh.load_state_dict(state)
    assert torch.equal(full(x, indicator), fresh(x, indicator))
    assert not torch.equal(full(x, indicator), before)


def test_cross_attention_needs_one_token():
    attn = BasicTransformerBlock(C, 2, C // 2, cross_attention_dim=C).attn2
    with pytest.raises(ValueError, match="one context token"):
        block_ops.single_token_cross_attention(attn, torch.randn(3, 2, C))
