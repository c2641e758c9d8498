"""Lean forwards for diffusers' transformer sub-modules, with diffusers' numbers.

The SVD / WFM transformers are built from diffusers' ``BasicTransformerBlock``,
``TemporalBasicTransformerBlock``, ``Attention`` and ``FeedForward`` (their state-dict keys are the
release's). Their library forwards are general (ada-norms, GLIGEN, masks, chunking, processors,
deprecation checks); the configuration SVD uses is one path through them, written out here so that a
denoiser call does only the work that reaches its output (see ``docs/exact_speed.md``):

* **Cross-attention to one context token** (every ``attn2`` of SVD: the context is the CLIP image
  embedding, one token per video): the softmax over a single key is exactly 1, so every query's
  output is that token's value, ``to_out(to_v(context))`` - independent of the hidden states. The
  query path (``norm2``, ``to_q``) and the attention itself are skipped; the per-video (or per-row,
  in the release's temporal layout) vector is added by broadcasting. ``F.scaled_dot_product_attention``
  returns the value bit-exactly for one key, so the numbers do not change.
* **Fewer full-size temporaries**: residual adds and the GEGLU product are done in place on tensors
  this code just allocated (``a + b`` and ``b.add_(a)`` are the same IEEE sums). On CPU every fresh
  multi-megabyte tensor costs page faults, which showed up as ``aten::copy_`` time in the profiles.
* ``to_out``'s dropout (p = 0) and ``rescale_output_factor`` (1.0) are identities and are skipped.

``check_plain_attention`` guards the assumptions once, at construction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention import BasicTransformerBlock, FeedForward, TemporalBasicTransformerBlock
from diffusers.models.attention_processor import Attention
from torch import nn


def check_plain_attention(attn: Attention) -> None:
    """The ``Attention`` configuration the lean forwards reproduce (SVD's, diffusers' defaults)."""
    plain = (
        attn.rescale_output_factor == 1.0
        and not attn.residual_connection
        and attn.spatial_norm is None
        and attn.group_norm is None
        and attn.norm_q is None
        and attn.norm_k is None
        and not attn.norm_cross
        and len(attn.to_out) == 2
        and isinstance(attn.to_out[1], nn.Dropout)
        and attn.to_out[1].p == 0.0
    )
    if not plain:
        raise ValueError("the lean attention forward supports only plain diffusers Attention modules")


def check_plain_block(block: nn.Module) -> None:
    """``BasicTransformerBlock`` / ``TemporalBasicTransformerBlock`` as SVD builds them."""
    if isinstance(block, BasicTransformerBlock):
        if block.norm_type != "layer_norm" or block.pos_embed is not None or block.only_cross_attention:
            raise ValueError("the lean block forward supports only SVD's BasicTransformerBlock configuration")
    elif not isinstance(block, TemporalBasicTransformerBlock):
        raise TypeError(f"unsupported transformer block {type(block).__name__}")
    for attn in (block.attn1, block.attn2):
        if attn is not None:
            check_plain_attention(attn)
    for ff in (block.ff, getattr(block, "ff_in", None)):
        if ff is not None and not _is_geglu(ff):
            raise ValueError("the lean block forward supports only GEGLU feed-forwards")


def _is_geglu(ff: FeedForward) -> bool:
    from diffusers.models.activations import GEGLU

    return len(ff.net) == 3 and isinstance(ff.net[0], GEGLU) and ff.net[1].p == 0.0


def self_attention(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """``attn(x)`` for self-attention: ``[N, L, C] -> [N, L, C]`` (AttnProcessor2_0's arithmetic)."""
    n = x.shape[0]
    heads = attn.heads
    q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
    head_dim = k.shape[-1] // heads
    q = q.view(n, -1, heads, head_dim).transpose(1, 2)
    k = k.view(n, -1, heads, head_dim).transpose(1, 2)
    v = v.view(n, -1, heads, head_dim).transpose(1, 2)
    out = attention(q, k, v)
    out = out.transpose(1, 2).reshape(n, -1, heads * head_dim)
    return attn.to_out[0](out)


# SDPA's fused CUDA kernels put batch x heads on one grid dimension, limited to 65,535 on some versions
# (they fail with "invalid configuration argument"). The temporal attention's batch is rows x h x w: 8
# windows x 2 CFG rows x 64 x 64 latents at 512^2 is 65,536 sequences, times the heads.
SDPA_MAX_BATCH = 65_535


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` over [N, heads, L, d], in slices of whole sequences on CUDA when
    N x heads exceeds ``SDPA_MAX_BATCH`` (each sequence's numbers are the same either way)."""
    if q.device.type != "cuda" or _tracing() or q.shape[0] * q.shape[1] <= SDPA_MAX_BATCH:
        return F.scaled_dot_product_attention(q, k, v)
    return sliced_attention(q, k, v, max(1, SDPA_MAX_BATCH // q.shape[1]))


def sliced_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, per: int) -> torch.Tensor:
    """SDPA over ``per`` sequences at a time, written into one output (no host synchronisation)."""
    out = torch.empty_like(q)
    for start in range(0, q.shape[0], per):
        part = slice(start, start + per)
        out[part] = F.scaled_dot_product_attention(q[part], k[part], v[part])
    return out


def single_token_cross_attention(attn: Attention, context: torch.Tensor) -> torch.Tensor:
    """What ``attn(h, encoder_hidden_states=context)`` adds to every query when the context is ONE
    token per row: ``[N, 1, D] -> [N, 1, C]`` (broadcast it over the queries).

    ``context`` must hold the rows the library call would have projected (``to_v`` then sees the same
    matrix). ``to_out`` runs on N rows instead of N x queries: BLAS kernels give a row the same bits
    whatever the row count, except for very short matrices (a handful of rows, or of rows per thread),
    which take another path - so the rows are padded to a multiple of ``_ROW_PAD`` first.
    """
    if context.shape[-2] != 1:
        raise ValueError(f"expected one context token per row, got {context.shape[-2]}")
    value = attn.to_v(context)
    rows = value.shape[0]
    pad = 0 if _tracing() else -rows % _ROW_PAD
    if pad:
        value = torch.cat([value, value.new_zeros(pad, *value.shape[1:])])
    return attn.to_out[0](value)[:rows]


_ROW_PAD = 64


def by_pairs(mlp: nn.Module, rows: torch.Tensor) -> torch.Tensor:
    """``mlp(rows)`` for a per-row MLP, two rows (one window's CFG pair) per call.

    BLAS multiplies matrices of fewer than about 8 rows with other kernels than longer ones, so the
    SVD time embeddings of a window's pair ([2, 128] -> [2, E]) would get different bits once several
    windows share a call; evaluated a pair at a time they get exactly the bits of one window per call,
    whatever the batch (engine.config.window_batch).
    """
    if _tracing() or rows.shape[0] <= 2:
        return mlp(rows)
    return torch.cat([mlp(rows[start : start + 2]) for start in range(0, rows.shape[0], 2)])


def feed_forward(ff: FeedForward, x: torch.Tensor) -> torch.Tensor:
    """GEGLU feed-forward: ``proj -> a * gelu(gate) -> linear`` (the product formed in place), over
    blocks of rows (``CHUNK_ROWS`` per thread) so that the 8x-wide intermediate stays in cache."""
    rows, chunk = x.numel() // x.shape[-1], _chunk_rows()
    if not _blocked(x) or rows <= 2 * chunk:  # _blocked first: no shape guard while exporting
        return _feed_forward(ff, x)
    flat = x.reshape(rows, x.shape[-1])
    out = flat.new_empty(rows, ff.net[2].out_features)
    for start in range(0, rows, chunk):
        out[start : start + chunk] = _feed_forward(ff, flat[start : start + chunk])
    return out.reshape(*x.shape[:-1], out.shape[-1])


def _feed_forward(ff: FeedForward, x: torch.Tensor) -> torch.Tensor:
    hidden, gate = ff.net[0].proj(x).chunk(2, dim=-1)
    # gelu on the strided half as diffusers does: its contiguous kernel rounds differently
    return ff.net[2](F.gelu(gate).mul_(hidden))


def spatial_block(block: BasicTransformerBlock, x: torch.Tensor, cross: torch.Tensor | None) -> torch.Tensor:
    """``BasicTransformerBlock`` (layer norms, self-attention, optional one-token cross-attention whose
    output ``cross`` [N, 1, C] is precomputed, GEGLU). ``x`` [N, L, C] is not modified.

    Every step is per sequence, so long batches run a few sequences (about ``CHUNK_ROWS`` tokens per
    thread) at a time: each sequence's numbers are the same, its intermediates stay in cache.
    """
    if block.attn2 is not None and cross is None:
        raise ValueError("this block cross-attends: pass its precomputed context output")
    return _per_sequence(_spatial_block, block, x, cross)


def _spatial_block(block: BasicTransformerBlock, x: torch.Tensor, cross: torch.Tensor | None) -> torch.Tensor:
    x = self_attention(block.attn1, block.norm1(x)).add_(x)
    if cross is not None:
        x.add_(cross)
    return feed_forward(block.ff, block.norm3(x)).add_(x)


def _per_sequence(fn, block: nn.Module, x: torch.Tensor, cross: torch.Tensor | None) -> torch.Tensor:
    """``fn(block, x, cross)`` over groups of whole sequences (dim 0) of about ``_chunk_rows()`` tokens."""
    count, length = x.shape[:2]
    per = max(1, _chunk_rows() // max(length, 1))
    if not _blocked(x) or count <= per:  # _blocked first: no shape guard while exporting
        return fn(block, x, cross)
    out = torch.empty_like(x)
    for start in range(0, count, per):
        part = cross[start : start + per] if cross is not None else None
        out[start : start + per] = fn(block, x[start : start + per], part)
    return out


def temporal_block(
    block: TemporalBasicTransformerBlock, x: torch.Tensor, num_frames: int, cross: torch.Tensor | None
) -> torch.Tensor:
    """``TemporalBasicTransformerBlock``: ``x`` [B*F, S, C] -> [B*F, S, C], attention over frames.

    ``cross`` is the cross-attention output per temporal row, [B*S, 1, C] (see ``temporal_rows``).
    ``x`` is consumed (it may be overwritten).
    """
    batch_frames, seq, channels = x.shape
    batch = batch_frames // num_frames
    # [B*F, S, C] -> [B*S, F, C]
    x = x.reshape(batch, num_frames, seq, channels).permute(0, 2, 1, 3).reshape(batch * seq, num_frames, channels)
    if block.attn2 is not None and cross is None:
        raise ValueError("this block cross-attends: pass its precomputed context output")
    out = _per_sequence(_temporal_sequences, block, x, cross)
    # [B*S, F, C] -> [B*F, S, C]
    return out.reshape(batch, seq, num_frames, channels).permute(0, 2, 1, 3).reshape(batch_frames, seq, channels)


def _temporal_sequences(
    block: TemporalBasicTransformerBlock, x: torch.Tensor, cross: torch.Tensor | None
) -> torch.Tensor:
    """The block on its own layout, [B*S, F, C] (one sequence per pixel); ``x`` may be overwritten."""
    h = feed_forward(block.ff_in, block.norm_in(x))
    if block.is_res:
        h.add_(x)
    h = self_attention(block.attn1, block.norm1(h)).add_(h)
    if cross is not None:
        h.add_(cross)
    out = feed_forward(block.ff, block.norm3(h))
    if block.is_res:
        out.add_(h)
    return out


def _blocked(x: torch.Tensor) -> bool:
    """Whether to block the work for cache: on CPU, in eager mode (a GPU gains nothing but launches)."""
    return x.device.type == "cpu" and not _tracing()


def _tracing() -> bool:
    """Under torch.export / dynamo / jit tracing shapes are symbolic: no Python loops over them."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


# Tokens per block of work and thread (sequences are kept whole): 1024 x 32 channels x the GEGLU's 8x
# width is 1 MiB of float32 per thread, which fits a 2 MiB L2 with room for the weights. Scaled by the
# thread count so that each parallel region still has a thread's worth of rows (fewer barriers).
CHUNK_ROWS = 1024


def _chunk_rows() -> int:
    return CHUNK_ROWS * max(1, torch.get_num_threads())


def _trains(module: nn.Module) -> bool:
    """Training the module: the value must be part of this step's graph (a cached one would carry no
    gradient to the weights, or an old step's graph)."""
    return torch.is_grad_enabled() and any(p.requires_grad for p in module.parameters())


class ShapeCache:
    """Tensors that depend only on shapes and on a module's weights (position embeddings), kept per key.

    An entry is reused while the weights are the same tensors at the same version (``load_state_dict``,
    ``.to()`` and in-place edits all invalidate it). Bypassed while tracing or exporting, so graphs keep
    computing the value from their inputs' shapes, and while the module trains (see ``_trains``).
    """

    def __init__(self) -> None:
        self._entries: dict[tuple, tuple[tuple, torch.Tensor]] = {}

    @staticmethod
    def _stamp(module: nn.Module) -> tuple:
        return tuple((p.data_ptr(), p._version) for p in module.parameters())

    def get(self, key: tuple, module: nn.Module, compute) -> torch.Tensor:
        if _tracing() or _trains(module):
            return compute()
        stamp = self._stamp(module)
        hit = self._entries.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        value = compute()
        if len(self._entries) >= 8:  # a handful of shapes per run; never grow without bound
            self._entries.clear()
        self._entries[key] = (stamp, value)
        return value
