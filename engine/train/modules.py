"""The modules one training step touches, taken from the engine's ``Networks``."""

from __future__ import annotations

from engine.config.settings import ModelConfig
from engine.models.networks import Networks
from engine.train.step import TrainModules


def from_networks(nets: Networks, model: ModelConfig) -> TrainModules:
    """Share (not copy) the engine's modules: a validation render sees the weights being trained."""
    return TrainModules(
        motion=nets.motion,
        head_net=nets.head_net,
        wfm=nets.denoiser.wfm,
        unet=nets.denoiser.unet,
        vae=nets.vae,
        image_encoder=nets.image_encoder,
        clip_mean=list(model.clip_normalize["image_mean"]),
        clip_std=list(model.clip_normalize["image_std"]),
    )
