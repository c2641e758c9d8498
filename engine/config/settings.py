"""Typed configuration: what to build (ModelConfig), how to sample (SamplerConfig),
how to tile time (WindowConfig) and one run's choices (RunConfig).

Network configs stay plain dicts in the release's own schema (LivePortrait's
models.yaml ``model_params``, diffusers' UNet/VAE configs, transformers' CLIP config) so a
released config file can be dropped in unchanged.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.config.controls import MotionControls

# One definition of each runtime constant that several modules use.
MOTION_CHUNK = 16  # driving frames per warp call (LivePortrait's chunk): bounded memory
DECODE_CHUNK = 8  # frames per VAE decoder call
VAE_SCALE = 0.18215  # SD VAE scaling factor, when a VAE config does not carry its own
SEED_MAX = 2**64 - 1  # torch.manual_seed takes at most 64 bits

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
        return int(self.unet["block_out_channels"][0])


@dataclass(frozen=True)
class SamplerConfig:
    """Denoising loop settings; the defaults are the release's inference.py settings."""

    sampler: str = "euler"  # "euler" (release default) | "ddim" (paper: 30 steps) | "heun" | "dpmpp_2m"
    schedule: str | None = None  # "release" | "karras" | "leading"; None: the sampler's own (engine.diffusion.sampling)
    steps: int = 25
    guidance_mode: str = "full"  # when CFG runs: full | none | first:K | interval:LO:HI (engine.diffusion.guidance)
    wfm_every: int = 1  # the WFM runs every k-th model evaluation; its outputs are reused in between
    min_guidance: float = 2.5
    max_guidance: float = 2.5
    time_context: str = "release"  # "release" (diffusers 0.27.2 layout) | "fixed" (diffusers PR #7268)
    cond_fps: int = 7  # the release passes fps=7 whatever the driving clip's rate
    motion_bucket_id: int = 127
    noise_aug_strength: float = 0.02
    scheduler: dict[str, Any] = field(default_factory=lambda: dict(SVD_XT_SCHEDULER))


@dataclass(frozen=True)
class WindowConfig:
    """Temporal tiling: windows of ``size`` frames overlapping by ``overlap``; frame 0 in each."""

    size: int = 14
    overlap: int = 6
    batch: int = 1  # windows per denoiser call (each brings its CFG pair)


@dataclass(frozen=True)
class RunConfig:
    """Everything one reenactment run used; saved next to its output."""

    model: ModelConfig
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    windows: WindowConfig = field(default_factory=WindowConfig)
    size: int = 512
    seed: int = 0
    relative_motion: bool = True  # False: self-reenactment (absolute driving motion)
    dtype: str = "float32"
    device: str = "cpu"
    mode: str = "exact"  # the named mode the knobs came from (engine.config.modes); recorded, never read back
    kv_downsample: int = 1  # 2: 2x2-averaged keys/values in the WFM's full attentions (an approximation)
    decoder: str = "full"  # "tiny": the TAESD decoder (engine.models.taesd) instead of the VAE's
    controls: MotionControls = field(default_factory=MotionControls)  # smoothing and motion controls (at start)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    def save(self, path: Path) -> None:
        tmp = Path(str(path) + ".tmp")
        tmp.write_text(self.to_json())
        tmp.replace(path)


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
