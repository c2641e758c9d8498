"""Build every network of a preset (seeded or from the release's weights)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from engine.config import presets
from engine.config.settings import SVD_XT_SCHEDULER, ModelConfig
from engine.errors import require_import
from engine.models import weights

if TYPE_CHECKING:  # the SVD/CLIP blocks need diffusers and transformers: imported when networks are built
    from diffusers import AutoencoderKL
    from transformers import CLIPVisionModelWithProjection

    from engine.models.denoiser import Denoiser
    from engine.models.head_net import HeadNet
    from engine.models.liveportrait.motion_branch import MotionBranch

VAE_KEYS = (
    "in_channels", "out_channels", "down_block_types", "up_block_types", "block_out_channels",
    "layers_per_block", "act_fn", "latent_channels", "norm_num_groups", "sample_size", "scaling_factor",
    "force_upcast",
)  # fmt: skip


@dataclass
class Networks:
    motion: MotionBranch  # LivePortrait F, M, W, G trunk (always float32)
    head_net: HeadNet
    denoiser: Denoiser  # WFM + UNet + infofill
    vae: AutoencoderKL
    image_encoder: CLIPVisionModelWithProjection
    tiny_decoder: nn.Module | None = None  # TAESD (engine.models.taesd), when the engine was given one

    def modules(self) -> dict[str, nn.Module]:
        mods = {
            "motion": self.motion,
            "head_net": self.head_net,
            "denoiser": self.denoiser,
            "vae": self.vae,
            "image_encoder": self.image_encoder,
        }
        return mods if self.tiny_decoder is None else {**mods, "tiny_decoder": self.tiny_decoder}

    def slots(self) -> dict[str, nn.Module]:
        """The module each checkpoint file of the release fills (``weights.LAYOUT`` names), and the tiny
        decoder when given (its own file: the build cache keys the tiny_decoder graph on it)."""
        return {
            "appearance_feature_extractor": self.motion.appearance_feature_extractor,
            "motion_extractor": self.motion.motion_extractor,
            "warping_module": self.motion.warping_module,
            "spade_generator": self.motion.spade_generator,
            "head_embedder": self.head_net,
            "warping_feature_mapper": self.denoiser.wfm,
            "unet": self.denoiser.unet,
            "vae": self.vae,
            "image_encoder": self.image_encoder,
        } | ({"tiny_decoder": self.tiny_decoder} if self.tiny_decoder is not None else {})

    @property
    def time_context(self) -> str:
        """The temporal-context layout the modules were built with (one value for all of them)."""
        from engine.models.time_context import SpatioTemporalTransformer

        modes = {m.time_context for m in self.denoiser.modules() if isinstance(m, SpatioTemporalTransformer)}
        if len(modes) != 1:
            raise RuntimeError(f"the denoiser's modules disagree on the time-context layout: {sorted(modes)}")
        return modes.pop()

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> Networks:
        for name, module in self.modules().items():
            # LivePortrait stays float32 whatever the rest runs in (release behaviour).
            want = torch.float32 if name == "motion" else dtype
            current = next(module.parameters()).dtype
            module.to(device=device) if current == want else module.to(device=device, dtype=want)
        return self


def build_networks(model: ModelConfig, time_context: str = "release") -> Networks:
    """Fresh modules for ``model`` on the current default device (use ``torch.device('meta')`` to skip init)."""
    # Imported here, not at module level, so that engine.api (and a GPU box's self-check) imports without
    # them; a missing one is one clear error naming the package.
    require_import("diffusers", "building the networks (the SVD UNet/VAE blocks)")
    require_import("transformers", "building the networks (the CLIP image encoder)")
    from diffusers import AutoencoderKL
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from engine.models.denoiser import Denoiser
    from engine.models.head_net import HeadNet
    from engine.models.liveportrait.motion_branch import MotionBranch
    from engine.models.unet import SVDUNet, SVDUNetConfig
    from engine.models.wfm import WarpingFeatureMapper

    unet_cfg = SVDUNetConfig.from_dict(model.unet)
    unet = SVDUNet(unet_cfg, time_context=time_context)
    wfm = WarpingFeatureMapper(unet_cfg, time_context=time_context)
    vae = AutoencoderKL(**{k: v for k, v in model.vae.items() if k in VAE_KEYS})
    clip_cfg = CLIPVisionConfig(**model.clip_vision)
    clip_cfg._attn_implementation = "sdpa"
    nets = Networks(
        motion=MotionBranch(model.liveportrait),
        head_net=HeadNet(model.trunk_channels, model.head_channels),
        denoiser=Denoiser(wfm, unet),
        vae=vae,
        image_encoder=CLIPVisionModelWithProjection(clip_cfg),
    )
    for module in nets.modules().values():
        module.eval().requires_grad_(False)
    return nets


@torch.no_grad()
def seeded_init_(nets: Networks, seed: int) -> Networks:
    """Deterministic weights for presets without a checkpoint (tiny).

    Every matrix/kernel is drawn from one seeded generator with std 1/sqrt(fan_in); paths the
    release zero-initialises (zero-convs, HeadNet projection, infofill) get small non-zero
    values so every branch contributes; vectors (biases, norms) keep their constructor values.
    Spectral-norm vectors are converged by power iteration so the SPADE trunk is well scaled.
    """
    gen = torch.Generator("cpu").manual_seed(seed)
    for module in nets.modules().values():
        state = module.state_dict(keep_vars=True)
        for tensor in state.values():
            if tensor.ndim < 2 or not tensor.is_floating_point() or tensor.is_meta:
                continue
            std = tensor[0].numel() ** -0.5
            if torch.count_nonzero(tensor) == 0:
                std *= 0.1
            tensor.copy_(torch.randn(tensor.shape, generator=gen) * std)
        for key, weight in state.items():
            if key.endswith(".weight_orig"):
                _converge_spectral_vectors(weight, state[key[: -len("orig")] + "u"], state[key[: -len("orig")] + "v"])
    return nets


def _converge_spectral_vectors(weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor, iters: int = 50) -> None:
    mat = weight.reshape(weight.shape[0], -1)
    for _ in range(iters):
        v.copy_(torch.nn.functional.normalize(mat.t() @ u, dim=0, eps=1e-12))
        u.copy_(torch.nn.functional.normalize(mat @ v, dim=0, eps=1e-12))


def build_tiny(model: ModelConfig, seed: int, time_context: str) -> Networks:
    # module constructors draw from the global generator: seed it for them, then give the caller's state back
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return seeded_init_(build_networks(model, time_context), seed)


def _official_config(weights_dir: Path) -> tuple[ModelConfig, dict[str, Any]]:
    """The official preset, updated with whatever config files the weights folder carries."""
    model = presets.official()
    unet = weights.read_json_config(weights_dir, "unet") or model.unet
    vae = weights.read_json_config(weights_dir, "vae") or model.vae
    clip = weights.read_json_config(weights_dir, "image_encoder")
    clip_vision = {k: clip[k] for k in model.clip_vision if k in clip} if clip else model.clip_vision
    norm = weights.read_json_config(weights_dir, "feature_extractor")
    clip_normalize = (
        {"image_mean": norm["image_mean"], "image_std": norm["image_std"]} if norm else model.clip_normalize
    )
    model = replace(model, unet=unet, vae=vae, clip_vision=clip_vision, clip_normalize=clip_normalize)
    scheduler = weights.read_json_config(weights_dir, "scheduler") or dict(SVD_XT_SCHEDULER)
    return model, scheduler


def load_official(weights_dir: Path, model: ModelConfig, time_context: str, manifests: bool = True) -> Networks:
    """Build on the meta device (no memory), then fill every network from the release's files.

    ``manifests`` checks each file against the packaged full-size key manifests; without it
    (reduced presets in the release's layout) each file is checked against its module.
    """
    paths = weights.locate(weights_dir)
    with torch.device("meta"):
        nets = build_networks(model, time_context)
    slots = nets.slots()
    for wf in weights.LAYOUT:
        sd = weights.read_state_dict(paths[wf.name])
        expected = weights.expected_from_manifest(wf.manifest) if wf.manifest and manifests else None
        weights.load_into(slots[wf.name], sd, paths[wf.name], expected)
        del sd
    leftovers = [n for m in nets.modules().values() for n, t in m.state_dict().items() if t.is_meta]
    if leftovers:
        raise RuntimeError(f"tensors not filled by any checkpoint: {leftovers[:5]}")
    _materialize_derived_buffers(nets)
    return nets


def _materialize_derived_buffers(nets: Networks) -> None:
    """Non-persistent buffers are in no checkpoint, so the meta-device build leaves them empty.

    The only one here is CLIP's ``position_ids`` (arange over the patch positions).
    """
    for module in nets.modules().values():
        for sub in module.modules():
            for name, buf in list(sub.named_buffers(recurse=False)):
                if not buf.is_meta:
                    continue
                if name != "position_ids":
                    raise RuntimeError(f"buffer {name} of {type(sub).__name__} is in no checkpoint and has no rule")
                ids = torch.arange(buf.shape[-1], dtype=buf.dtype).expand(buf.shape)
                sub.register_buffer(name, ids.clone(), persistent=False)


def load_preset(
    preset: str, weights_dir: Path | None, seed: int = 0, time_context: str = "release"
) -> tuple[ModelConfig, dict[str, Any], Networks]:
    """A preset's configs (networks, trained noise schedule) and networks: the release's files when
    given, else the seeded init (tiny)."""
    if preset == "official":
        presets.require_weights(preset, weights_dir)
        assert weights_dir is not None
        model, scheduler = _official_config(Path(weights_dir))
        return model, scheduler, load_official(Path(weights_dir), model, time_context)
    model = presets.from_name(preset)
    if weights_dir is not None:
        trained = weights.trained_files(Path(weights_dir))
        if trained is not None and not (Path(weights_dir) / "liveportrait").is_dir():
            # a training checkpoint (engine.train): seeded networks, the trained WFM and HeadNet from the folder
            nets = build_tiny(model, seed, time_context)
            slots = nets.slots()
            for name, path in trained.items():
                weights.load_into(slots[name], weights.read_state_dict(path), path)
            return model, dict(SVD_XT_SCHEDULER), nets
        return model, dict(SVD_XT_SCHEDULER), load_official(Path(weights_dir), model, time_context, manifests=False)
    return model, dict(SVD_XT_SCHEDULER), build_tiny(model, seed, time_context)


def preset_configs(preset: str, weights_dir: Path | None) -> tuple[ModelConfig, dict[str, Any]]:
    """A preset's configs without building any network (backends that run exported graphs)."""
    if preset == "official" and weights_dir is not None:
        return _official_config(Path(weights_dir))
    return presets.from_name(preset), dict(SVD_XT_SCHEDULER)
