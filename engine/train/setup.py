"""What a run trains: the networks and their starting point, the optimizer, the lr schedule, gradient
checkpointing. Reusable by other loops (distillation, Ray Train)."""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from engine.config.settings import ModelConfig
from engine.errors import InputError
from engine.models import weights
from engine.models.head_net import HeadNet
from engine.models.networks import Networks, load_preset
from engine.models.wfm import WarpingFeatureMapper

INITS = ("fresh", "weights")


def build(preset: str, weights_dir: Path | None, init: str, seed: int, init_seed: int = 0,
          time_context: str = "release") -> tuple[ModelConfig, Networks]:
    """The engine's networks for ``preset`` (the frozen ones as ``Reenactor.from_preset`` builds them:
    tiny seeded with ``init_seed``, official from ``weights_dir``), then the trained pair set by ``init``:

    * ``fresh``: the release's start, ``WarpingFeatureMapper.from_unet(unet)`` and a new HeadNet (drawn
      from ``seed``);
    * ``weights``: the WFM and HeadNet that ``weights_dir`` holds (``checkpoint-30000-14frames/`` of the
      release, or a folder with our two files) - fine-tuning;
    * a path: a checkpoint folder holding ``warping_feature_mapper.pth`` and ``head_embedder.pth``.
    """
    model, _, nets = load_preset(preset, weights_dir, init_seed, time_context)
    if init == "fresh":
        torch.manual_seed(seed)
        nets.denoiser.wfm = WarpingFeatureMapper.from_unet(nets.denoiser.unet)
        nets.head_net = HeadNet(model.trunk_channels, model.head_channels)
    elif init != "weights":
        load_trained_pair(nets, Path(init))
    return model, nets


def load_trained_pair(nets: Networks, folder: Path) -> None:
    """Strictly load a folder's ``warping_feature_mapper.pth`` / ``head_embedder.pth`` into ``nets``."""
    found = weights.trained_files(folder)
    if found is None:
        raise InputError(f"--init {folder} is not a folder holding warping_feature_mapper.pth and head_embedder.pth")
    slots = nets.slots()
    for name, path in found.items():
        weights.load_into(slots[name], weights.read_state_dict(path), path)


def enable_gradient_checkpointing(model: nn.Module) -> int:
    """Recompute each down/mid/up block in the backward pass instead of storing its activations (the
    release calls diffusers' ``enable_gradient_checkpointing`` on the UNet and the WFM). Returns the
    number of wrapped blocks. Only the forward of each block instance is wrapped; weights and
    state-dict keys are untouched, and without grad (validation) blocks run plainly."""
    blocks = [*getattr(model, "down_blocks", []), getattr(model, "mid_block", None), *getattr(model, "up_blocks", [])]
    count = 0
    for block in blocks:
        if block is None or getattr(block, "_checkpointed", False):
            continue
        plain = block.forward
        block.forward = functools.partial(_checkpointed, plain)
        block._checkpointed = True
        count += 1
    return count


def _checkpointed(forward, *args, **kwargs):
    if torch.is_grad_enabled():
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return forward(*args, **kwargs)


def make_optimizer(params: list[nn.Parameter], kind: str, lr: float, weight_decay: float = 1e-2,
                   betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> torch.optim.Optimizer:
    """AdamW (``adamw``) or bitsandbytes' 8-bit AdamW (``adamw8bit``, the release's default)."""
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay, eps=eps)
    if kind == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise InputError("--optimizer adamw8bit needs bitsandbytes (pip install 'bitsandbytes<1'; it runs on "
                             "CUDA): install it, or use --optimizer adamw") from None
        return bnb.optim.AdamW8bit(params, lr=lr, betas=betas, weight_decay=weight_decay, eps=eps)
    raise InputError(f"unknown optimizer {kind!r}: choose adamw or adamw8bit")


def constant_with_warmup(optimizer: torch.optim.Optimizer, warmup: int) -> torch.optim.lr_scheduler.LambdaLR:
    """diffusers' ``constant_with_warmup``: lr * step / warmup for the first ``warmup`` steps, then lr."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 1.0 if warmup <= 0 or step >= warmup else step / warmup
    )
