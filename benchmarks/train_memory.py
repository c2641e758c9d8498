"""Memory plan of training at the official size, counted on the meta device (no weights, no memory used).

    python benchmarks/train_memory.py [--size 512] [--frames 14] [--batch 1] [--json PATH]

Counts: parameters of every network; weights as the release holds them (UNet, VAE, CLIP in fp16, LivePortrait
fp32, the trained WFM + HeadNet fp32 master weights); fp32 gradients; optimizer state (AdamW: two fp32 moments;
bitsandbytes AdamW8bit: two 8-bit moments + one fp32 absmax per 2048 values); activations kept for the
backward pass of one micro-batch, measured by a saved-tensor hook on a forward of the differentiable part
(HeadNet -> WFM -> UNet -> loss) in fp16 (what fp16 autocast stores, approximately: a few ops keep fp32).
Attention is counted as the fused kernels store it (q, k, v, output, log-sum-exp: what flash / memory-efficient
attention and xformers keep; the release enables xformers) - never the N x N matrix.

With gradient checkpointing (every down/mid/up block of the WFM and the UNet recomputed in the backward
pass) the estimate is: everything stored outside the blocks + each block's input + the largest single
block's activations (recomputed one block at a time). The frozen parts' transient memory (VAE encode,
CLIP, LivePortrait under no_grad) is not counted: it is freed before the denoiser runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from engine.config import presets
from engine.models.networks import build_networks

GIB = 1024**3


class _FusedAttention(torch.autograd.Function):
    """What a fused attention kernel saves for backward: q, k, v, out and a float32 log-sum-exp per query."""

    @staticmethod
    def forward(ctx, q, k, v):  # type: ignore[override]
        out = torch.empty_like(q)
        lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        q, k, v, _, _ = ctx.saved_tensors
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)


def _fused_sdpa(q, k, v, *args, **kwargs):
    return _FusedAttention.apply(q, k, v)


def count_activations(size: int, frames: int, batch: int) -> dict:
    model = presets.official()
    with torch.device("meta"):
        nets = build_networks(model)
    head, wfm, unet = nets.head_net, nets.denoiser.wfm, nets.denoiser.unet
    for module in (head, wfm, unet):
        module.to(device="meta", dtype=torch.float16)  # a few diffusers parameters are built on the CPU
    head.requires_grad_(True)
    wfm.requires_grad_(True)
    side = size // 8
    trunk_side = 64 * size // 512  # LivePortrait's trunk grid matches the latents at 512
    dt = torch.float16

    totals: dict[str, int] = {}
    inputs: dict[str, int] = {}
    current = ["outside"]
    seen: set[int] = set()
    keep: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        base = t._base if t._base is not None else t
        if id(base) not in seen:
            seen.add(id(base))
            keep.append(base)
            totals[current[0]] = totals.get(current[0], 0) + base.numel() * base.element_size()
        return t

    blocks = {}
    for owner, net in (("wfm", wfm), ("unet", unet)):
        for name in ("down_blocks", "up_blocks"):
            for i, block in enumerate(getattr(net, name, [])):
                blocks[f"{owner}.{name}.{i}"] = block
        blocks[f"{owner}.mid_block"] = net.mid_block
    for label, block in blocks.items():
        def pre(_m, args, label=label):
            current[0] = label
            inputs[label] = args[0].numel() * args[0].element_size()

        def post(_m, _args, _out):
            current[0] = "outside"

        block.register_forward_pre_hook(pre)
        block.register_forward_hook(post)

    original = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = _fused_sdpa
    try:
        with torch.device("meta"), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            trunk = torch.randn(batch, frames, model.trunk_channels, trunk_side, trunk_side, dtype=dt)
            sample = torch.randn(batch, frames, 8, side, side, dtype=dt)
            latents = torch.randn(batch, frames, 4, side, side, dtype=dt)
            t = torch.randn(batch)
            ehs = torch.randn(batch, 1, 1024, dtype=dt)
            ids = torch.randn(batch, 3, dtype=dt)
            head_latents = head(trunk)
            down, mid, infofill = wfm(sample, t, ehs, ids, head_latents=head_latents)
            out = unet(sample, t, ehs, ids, down_block_additional_residuals=down, mid_block_additional_residual=mid)
            loss = ((out + infofill).float() - latents.float()).pow(2).mean()
    finally:
        F.scaled_dot_product_attention = original
    assert loss.requires_grad
    inside = {k: v for k, v in totals.items() if k != "outside"}
    no_ckpt = sum(totals.values())
    with_ckpt = totals.get("outside", 0) + sum(inputs.values()) + max(inside.values())
    return {
        "activations_no_checkpointing_gib": no_ckpt / GIB,
        "activations_checkpointing_gib": with_ckpt / GIB,
        "outside_blocks_gib": totals.get("outside", 0) / GIB,
        "largest_block": max(inside, key=inside.get),
        "largest_block_gib": max(inside.values()) / GIB,
        "per_block_gib": {k: v / GIB for k, v in sorted(inside.items())},
    }


def count_params() -> dict[str, int]:
    model = presets.official()
    with torch.device("meta"):
        nets = build_networks(model)
    out = {name: sum(p.numel() for p in module.parameters()) for name, module in nets.slots().items()}
    return out


def plan(size: int, frames: int, batch: int) -> dict:
    params = count_params()
    trained = params["warping_feature_mapper"] + params["head_embedder"]
    lp = sum(params[k] for k in ("appearance_feature_extractor", "motion_extractor", "warping_module",
                                 "spade_generator"))
    frozen_half = params["unet"] + params["vae"] + params["image_encoder"]
    weights = (frozen_half * 2 + lp * 4 + trained * 4) / GIB
    grads = trained * 4 / GIB
    adamw = trained * 8 / GIB
    adamw8 = (trained * 2 + trained / 2048 * 4 * 2) / GIB
    acts = count_activations(size, frames, batch)
    rows = {}
    for opt_name, opt in (("adamw", adamw), ("adamw8bit", adamw8)):
        for ck in (False, True):
            act = acts["activations_checkpointing_gib" if ck else "activations_no_checkpointing_gib"]
            rows[f"{opt_name}{'+checkpointing' if ck else ''}"] = weights + grads + opt + act
    return {"size": size, "frames": frames, "batch": batch, "params": params, "trained_params": trained,
            "weights_gib": weights, "grads_gib": grads, "adamw_state_gib": adamw, "adamw8bit_state_gib": adamw8,
            **acts, "total_gib": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--frames", type=int, default=14)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--json", type=Path, default=Path("benchmarks/results/train_memory.json"))
    args = p.parse_args()
    result = plan(args.size, args.frames, args.batch)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "per_block_gib"}, indent=1))


if __name__ == "__main__":
    main()
