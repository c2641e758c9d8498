"""Typed configuration by lifetime.

    EngineConfig   what an engine is built with and every stage receives at build: the networks
                   (ModelConfig), output size, dtype, device, time-context layout, window size and
                   batch, the trained noise schedule and SVD's micro-conditioning. Fixed for the
                   engine's lifetime.
    RunConfig      one run's knobs (sampler, steps, guidance, window overlap, seed, ...), each
                   declared ONCE with its limits and help (``engine.config.knobs``), in
                   ``engine.config.modes`` (it names solvers and guidance strategies, so it sits
                   with diffusion); a mode is a bundle of values for them. Resolved once per run.

Adding a run knob is a one-place change: add a ``knob(...)`` field to ``RunConfig`` (default = the
release's value). ``RunOptions`` accepts it as a keyword, every CLI built on
``engine.cli.args.add_knob_arguments`` gets ``--its-name``, the HTTP server accepts it when declared
with ``serve=True``, and the run's sidecar JSON records it. Read it where it acts, from the RunConfig
the scheduler hands on (see docs/configs.md).

Network configs stay plain dicts in the release's own schema (LivePortrait's
models.yaml ``model_params``, diffusers' UNet/VAE configs, transformers' CLIP config) so a
released config file can be dropped in unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# One definition of each runtime constant that several modules use.
MOTION_CHUNK = 16  # driving frames per warp call (LivePortrait's chunk): bounded memory
DECODE_CHUNK = 8  # frames per VAE decoder call
VAE_SCALE = 0.18215  # SD VAE scaling factor, when a VAE config does not carry its own
SEED_MAX = 2**64 - 1  # torch.manual_seed takes at most 64 bits
DTYPES = ("float32", "float16", "bfloat16")
TIME_CONTEXTS = ("release", "fixed")  # diffusers 0.27.2's temporal-context layout | diffusers PR #7268's
KV_FACTORS = (1, 2)  # 2: keys/values of the WFM's full attentions averaged over 2x2 pixels
DECODERS = ("full", "tiny")  # the VAE's own decoder | TAESD (engine.models.taesd), given to the engine
SVD_XT_SCHEDULER: dict[str, Any] = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "sigma_max": 700.0,
    "sigma_min": 0.002,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "timestep_type": "continuous",
    "trained_betas": None,
    "use_karras_sigmas": True,
}

CLIP_NORMALIZE: dict[str, list[float]] = {
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
}


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of every network, in each upstream library's own config schema."""

    name: str
    liveportrait: dict[str, Any]  # models.yaml model_params (F, M, W, G)
    unet: dict[str, Any]  # diffusers UNetSpatioTemporalConditionModel kwargs (the WFM is derived from it)
    vae: dict[str, Any]  # diffusers AutoencoderKL kwargs
    clip_vision: dict[str, Any]  # transformers CLIPVisionConfig kwargs
    trunk_channels: int  # SPADE trunk output channels = HeadNet input channels
    image_size: int  # default output resolution (square)
    clip_normalize: dict[str, list[float]] = field(default_factory=lambda: dict(CLIP_NORMALIZE))

    @property
    def latent_channels(self) -> int:
        """Channels of the VAE latents the UNet denoises (4 for SD's VAE)."""
        return int(self.vae.get("latent_channels", 4))

    @property
    def head_channels(self) -> int:
        """Channels of the HeadNet's head latents: the UNet's first block width (320 in SVD)."""
        return int(self.unet["block_out_channels"][0])


@dataclass(frozen=True)
class MicroConditioning:
    """SVD's added time ids, as the release passes them (an engine setting: not a per-run knob)."""

    fps: int = 7  # the release passes fps=7 whatever the driving clip's rate
    motion_bucket_id: int = 127
    noise_aug_strength: float = 0.02


@dataclass(frozen=True)
class WindowConfig:
    """Temporal tiling fixed at build: ``size`` frames per window (frame 0 in each), ``batch`` windows
    per denoiser call (each brings its CFG pair). The overlap is a run knob (``RunConfig.overlap``)."""

    size: int = 14
    batch: int = 1


@dataclass(frozen=True)
class EngineConfig:
    """What an engine's stages are built with; fixed for the engine's lifetime."""

    model: ModelConfig
    size: int  # output side in pixels
    dtype: str = "float32"  # of the diffusion networks; LivePortrait always runs in float32
    device: str = "cpu"
    time_context: str = "release"  # one of TIME_CONTEXTS, baked into the networks
    windows: WindowConfig = field(default_factory=WindowConfig)
    micro: MicroConditioning = field(default_factory=MicroConditioning)
    scheduler: dict[str, Any] = field(default_factory=lambda: dict(SVD_XT_SCHEDULER))  # the trained noise schedule


def read_json_object(path: Path, error: type[Exception], what: str, fix: str) -> dict[str, Any]:
    """A JSON file holding one object; any way of failing is one ``error`` naming the file and ``fix``."""
    try:
        config = json.loads(Path(path).read_text())
    except OSError as err:
        raise error(f"{what} {path} cannot be read ({err.strerror or err}): check it exists and is readable") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        where = f" (line {err.lineno}, column {err.colno})" if isinstance(err, json.JSONDecodeError) else ""
        raise error(f"{what} {path} is not valid JSON{where}: {fix}") from None
    if not isinstance(config, dict):
        raise error(f"{what} {path} is JSON but not an object of settings: {fix}")
    return config
