"""Named model presets: ``official`` (the release's full-size networks) and ``tiny``
(the same architecture with small widths, used by the demo, the tests and the benchmarks)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from functools import cache
from importlib import resources
from typing import Any

from engine.config.settings import VAE_SCALE, ModelConfig
from engine.errors import InputError

_SVD_UNET_TYPES: dict[str, Any] = {
    "in_channels": 8,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlockSpatioTemporal"] * 3 + ["DownBlockSpatioTemporal"],
    "up_block_types": ["UpBlockSpatioTemporal"] + ["CrossAttnUpBlockSpatioTemporal"] * 3,
    "layers_per_block": 2,
    "transformer_layers_per_block": 1,
}


@cache
def key_manifests() -> dict[str, Any]:
    """The full-size state-dict key manifests of the seven released checkpoint files."""
    text = resources.files("engine").joinpath("data/key_manifests.json").read_text()
    return json.loads(text)["modules"]


def spade_trunk_channels(spade_params: dict[str, Any]) -> int:
    """SPADE trunk width: twice the decoder's input width, as LivePortrait's SPADEDecoder builds it."""
    n = int(spade_params["num_down_blocks"])
    return 2 * min(int(spade_params["max_features"]), int(spade_params["block_expansion"]) * 2**n)


def official() -> ModelConfig:
    manifests = key_manifests()
    liveportrait = {
        "appearance_feature_extractor_params": manifests["appearance_feature_extractor.pth"]["config"],
        "motion_extractor_params": manifests["motion_extractor.pth"]["config"],
        "warping_module_params": manifests["warping_module.pth"]["config"],
        "spade_generator_params": manifests["spade_generator.pth"]["config"],
    }
    unet = dict(manifests["svd_xt_unet (unet/diffusion_pytorch_model.safetensors)"]["config"])
    vae = {  # stabilityai/sd-vae-ft-mse
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [128, 256, 512, 512],
        "layers_per_block": 2,
        "act_fn": "silu",
        "latent_channels": 4,
        "norm_num_groups": 32,
        "sample_size": 256,
        "scaling_factor": VAE_SCALE,
    }
    clip_vision = {  # SVD-xt image_encoder: OpenCLIP ViT-H/14
        "hidden_size": 1280,
        "intermediate_size": 5120,
        "num_hidden_layers": 32,
        "num_attention_heads": 16,
        "num_channels": 3,
        "image_size": 224,
        "patch_size": 14,
        "projection_dim": 1024,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
    }
    return ModelConfig(
        name="official",
        liveportrait=copy.deepcopy(liveportrait),
        unet=unet,
        vae=vae,
        clip_vision=clip_vision,
        trunk_channels=spade_trunk_channels(liveportrait["spade_generator_params"]),
        image_size=512,
    )


def tiny() -> ModelConfig:
    """The fixture architecture: real geometry, tiny widths; 128x128 output, 16x16 latents."""
    liveportrait: dict[str, Any] = {
        "appearance_feature_extractor_params": {
            "image_channel": 3,
            "block_expansion": 16,
            "num_down_blocks": 4,  # 256 -> 16: the trunk matches 16x16 latents
            "max_features": 64,
            "reshape_channel": 16,
            "reshape_depth": 4,
            "num_resblocks": 2,
        },
        "motion_extractor_params": {
            "num_kp": 21,
            "backbone": "convnextv2_fixture",
            "backbone_depths": [1, 1, 2, 1],
            "backbone_dims": [16, 32, 48, 64],
        },
        "warping_module_params": {
            "num_kp": 21,
            "block_expansion": 2,
            "max_features": 64,
            "num_down_blocks": 2,
            "reshape_channel": 16,
            "estimate_occlusion_map": True,
            "dense_motion_params": {
                "block_expansion": 8,
                "max_features": 32,
                "num_blocks": 3,
                "reshape_depth": 4,
                "compress": 2,
            },
        },
        "spade_generator_params": {
            "upscale": 2,
            "block_expansion": 2,
            "max_features": 64,
            "num_down_blocks": 2,
            "out_channels": 8,
        },
    }
    unet = dict(
        _SVD_UNET_TYPES,
        sample_size=16,
        block_out_channels=[32, 32, 32, 32],
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=24,
        cross_attention_dim=32,
        num_attention_heads=[2, 2, 2, 2],
        num_frames=14,
    )
    vae = {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [32, 32, 32, 32],
        "layers_per_block": 1,
        "act_fn": "silu",
        "latent_channels": 4,
        "norm_num_groups": 32,
        "sample_size": 64,
        "scaling_factor": VAE_SCALE,
    }
    clip_vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_channels": 3,
        "image_size": 224,
        "patch_size": 14,
        "projection_dim": 32,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
    }
    return ModelConfig(
        name="tiny",
        liveportrait=liveportrait,
        unet=unet,
        vae=vae,
        clip_vision=clip_vision,
        trunk_channels=spade_trunk_channels(liveportrait["spade_generator_params"]),
        image_size=128,
    )


PRESETS: dict[str, Callable[[], ModelConfig]] = {"official": official, "tiny": tiny}
NEEDS_WEIGHTS = ("official",)  # presets whose networks are the release's checkpoints (no seeded init)


def require_weights(preset: str, weights: object | None, given_as: str = "--weights DIR") -> None:
    """The one check that a preset whose networks come from checkpoints was given them (InputError)."""
    if preset in NEEDS_WEIGHTS and weights is None:
        raise InputError(f"the {preset} preset needs {given_as} (the release's pretrained_weights/ folder)")


def from_name(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()
