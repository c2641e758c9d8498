"""One training step of the release's ``train.py`` (the body of ``accelerator.accumulate(net)`` up to
``loss.mean()``), with every random number injectable (``Draws``) so that it can be replayed exactly.

The recorded spec is section 7 of the fixture README (``../shared/fixtures/official/README.md``):

1. latents: ``vae.encode(video).latent_dist.sample() * scaling_factor`` (the sample is ``mean + std * eps``);
2. reference noise augmentation: ``cond_sigma = rand_log_normal(-3.0, 0.5)`` per sample, the reference
   pixels + ``noise * cond_sigma`` encoded the same way, then DIVIDED by the scaling factor (frame 0 only);
   ``added_time_ids = [6, 127, cond_sigma[0]]`` for every sample (the release's batch > 1 TODO);
3. EDM noise level ``sigma = rand_log_normal(0.7, 1.6)``; ``timesteps = 0.25 * ln(sigma)``; UNet input
   ``(latents + noise * sigma) / sqrt(sigma^2 + 1)`` next to the (dropped-out) conditional latents;
4. CLIP embedding of reference frame 0; conditioning dropout with ONE uniform ``p`` per sample: the image
   embedding is zeroed when ``p < 2 * prob``, the conditional latents when ``prob <= p < 3 * prob``;
5. motion (``MotionExtractor.forward``, not the inference alignment): the source's canonical keypoints under
   each driving frame's own scale, rotation, expression and translation, batched over (b f), frozen;
   HeadNet on the SPADE trunk (trainable);
6. ``model_pred = unet(x, WFM residuals) + infofill``; EDM preconditioning; loss = mean over samples of
   mean(``(1 + sigma^2) / sigma^2 * (denoised - latents)^2``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from diffusers import AutoencoderKL
from torch import nn

from engine.diffusion.conditioning import CLIP_SIZE, resize_with_antialiasing
from engine.graphs.modules import fit_trunk_to_latents
from engine.models.head_net import HeadNet
from engine.models.liveportrait.keypoints import absolute_motion, refine_kp_info, transform_keypoint
from engine.models.liveportrait.motion_branch import MotionBranch, to_model_input
from engine.models.unet import SVDUNet
from engine.models.wfm import WarpingFeatureMapper

# the release's train.py constants (not command-line options there either)
TRAIN_FPS_ID = 6  # "fps" micro-condition, fixed
TRAIN_MOTION_BUCKET = 127  # motion bucket id, fixed
SIGMA_LOC, SIGMA_SCALE = 0.7, 1.6  # EDM P_mean, P_std
COND_SIGMA_LOC, COND_SIGMA_SCALE = -3.0, 0.5  # reference noise augmentation
DROPOUT_PROB = 0.1  # --conditioning_dropout_prob


@dataclass
class Draws:
    """Every random number one step uses, in the release's draw order (``DRAW_ORDER``)."""

    vae_eps_vid: torch.Tensor  # [B*F, 4, h, w] posterior sample noise of the video latents
    noise: torch.Tensor  # [B, F, 4, h, w] diffusion noise
    cond_sigmas_u: torch.Tensor  # [B] uniform in (1e-7, 1 - 1e-7) for the reference noise level
    cond_pixel_noise: torch.Tensor  # [B, 1, 3, H, W] reference pixel noise
    vae_eps_cond: torch.Tensor  # [B, 4, h, w] posterior sample noise of the reference latent
    sigmas_u: torch.Tensor  # [B] uniform in (1e-7, 1 - 1e-7) for the EDM noise level
    random_p: torch.Tensor  # [B] conditioning-dropout uniform

    @classmethod
    def sample(cls, batch: int, frames: int, size: int, latent_channels: int = 4,
               generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> Draws:
        """Fresh draws from one generator, in ``DRAW_ORDER`` (the release's order), then ``random_p``."""
        side = size // 8

        def randn(*shape: int) -> torch.Tensor:
            return torch.randn(shape, generator=generator).to(device)

        def uniform(n: int) -> torch.Tensor:  # rand_log_normal's u: rand * (1 - 2e-7) + 1e-7
            return (torch.rand((n,), generator=generator) * (1 - 2e-7) + 1e-7).to(device)

        vae_eps_vid = randn(batch * frames, latent_channels, side, side)
        noise = randn(batch, frames, latent_channels, side, side)
        cond_sigmas_u = uniform(batch)
        cond_pixel_noise = randn(batch, 1, 3, size, size)
        vae_eps_cond = randn(batch, latent_channels, side, side)
        sigmas_u = uniform(batch)
        random_p = torch.rand((batch,), generator=generator).to(device)
        return cls(vae_eps_vid, noise, cond_sigmas_u, cond_pixel_noise, vae_eps_cond, sigmas_u, random_p)

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> Draws:
        return cls(**{f.name: tensors[f.name] for f in fields(cls)})

    def to(self, device: torch.device | str) -> Draws:
        return Draws(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


DRAW_ORDER = ("vae_eps_vid", "noise", "cond_sigmas_u", "cond_pixel_noise", "vae_eps_cond", "sigmas_u")


@dataclass
class TrainModules:
    """What one step touches. Trainable: ``wfm`` and ``head_net``; everything else is frozen."""

    motion: MotionBranch
    head_net: HeadNet
    wfm: WarpingFeatureMapper
    unet: SVDUNet
    vae: AutoencoderKL
    image_encoder: nn.Module
    clip_mean: list[float]
    clip_std: list[float]

    def trainable(self) -> dict[str, nn.Module]:
        """Release checkpoint names -> the trained modules (``warping_feature_mapper.pth``, ``head_embedder.pth``)."""
        return {"warping_feature_mapper": self.wfm, "head_embedder": self.head_net}

    def frozen(self) -> list[nn.Module]:
        return [self.motion, self.unet, self.vae, self.image_encoder]

    def prepare_for_training(self) -> None:
        """requires_grad and modes as train.py sets them (the frozen modules stay in eval mode: BatchNorm
        statistics of LivePortrait are never updated; nothing here has dropout > 0)."""
        for module in self.frozen():
            module.eval().requires_grad_(False)
        for module in self.trainable().values():
            module.train().requires_grad_(True)


@dataclass
class StepOutput:
    loss: torch.Tensor  # 0-d
    loss_per_sample: torch.Tensor  # [B]


def rand_log_normal(u: torch.Tensor, loc: float, scale: float) -> torch.Tensor:
    """k-diffusion's ``rand_log_normal`` with its uniform ``u`` given: ``exp(Normal(loc, scale).icdf(u))``."""
    return torch.distributions.Normal(loc, scale).icdf(u).exp()


def vae_sample(vae: AutoencoderKL, images: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """``vae.encode(images).latent_dist.sample()`` with the sample's noise injected: ``mean + std * eps``."""
    dist = vae.encode(images).latent_dist
    return dist.mean + dist.std * eps.to(dist.mean.dtype)


def clip_embeddings(image_encoder: nn.Module, images_pm1: torch.Tensor, mean: list[float],
                    std: list[float]) -> torch.Tensor:
    """[B, 3, H, W] in [-1, 1] -> [B, D]: antialiased resize to 224 in [-1, 1], back to [0, 1], CLIP mean/std."""
    x = resize_with_antialiasing(images_pm1.float(), CLIP_SIZE)
    x = (x + 1.0) / 2.0
    mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device)[:, None, None]
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device)[:, None, None]
    dtype = next(image_encoder.parameters()).dtype
    return image_encoder(((x - mean_t) / std_t).to(dtype)).image_embeds


@torch.no_grad()
def training_motion(motion: MotionBranch, source_pm1: torch.Tensor, driving_pm1: torch.Tensor) -> torch.Tensor:
    """The release's ``MotionExtractor.forward``: [B, F, 3, H, W] source (reference repeated) and driving
    frames in [-1, 1] -> SPADE trunk [B, F, C, h, w]. Absolute driving motion on the source's canonical
    keypoints (``x_d = s_d * (x_c_s @ R_d + exp_d) + t_d``, t_z kept), everything batched over (b f),
    float32 whatever the caller's autocast."""
    batch, frames = driving_pm1.shape[:2]
    device = driving_pm1.device
    with torch.autocast(device_type=device.type, enabled=False):
        source = to_model_input(source_pm1.flatten(0, 1))
        driving = to_model_input(driving_pm1.flatten(0, 1))
        src_info = refine_kp_info(motion.motion_extractor(source)._asdict())
        f_s = motion.appearance_feature_extractor(source)
        x_s = transform_keypoint(src_info)
        drv_info = refine_kp_info(motion.motion_extractor(driving)._asdict())
        x_d = absolute_motion(src_info, drv_info, drv_info.rotation()).x_d
        warped = motion.warping_module(f_s, kp_driving=x_d, kp_source=x_s)
        trunk = motion.spade_generator(warped.out)
    return trunk.reshape(batch, frames, *trunk.shape[1:])


def train_step(
    modules: TrainModules,
    pixel_values_vid: torch.Tensor,
    pixel_values_ref_img: torch.Tensor,
    draws: Draws,
    conditioning_dropout_prob: float | None = DROPOUT_PROB,
    record: dict[str, torch.Tensor] | None = None,
) -> StepOutput:
    """The release's loss for one batch: ``pixel_values_vid`` [B, F, 3, H, W] and ``pixel_values_ref_img``
    [B, 1, 3, H, W] in [-1, 1]. ``record`` (optional) receives the intermediates under the fixture's names.
    Call ``.backward()`` on the returned loss; the caller clips and steps (``engine.train.loop``)."""
    rec = record if record is not None else {}
    vae = modules.vae
    scaling = float(vae.config.scaling_factor)
    batch, frames = pixel_values_vid.shape[:2]
    vae_dtype = next(vae.parameters()).dtype

    # 1. video latents [B, F, 4, h, w] (frozen VAE)
    with torch.no_grad():
        flat = pixel_values_vid.flatten(0, 1).to(vae_dtype)
        latents = vae_sample(vae, flat, draws.vae_eps_vid).float()
        latents = latents.reshape(batch, frames, *latents.shape[1:]) * scaling
    rec["latents"] = latents

    # 2. noise-augmented reference -> conditional latents [B, 4, h, w], divided by the scaling factor
    cond_sigmas = rand_log_normal(draws.cond_sigmas_u, COND_SIGMA_LOC, COND_SIGMA_SCALE).to(latents)
    rec["cond_sigmas"] = cond_sigmas
    noise_aug_strength = cond_sigmas[0]  # the release: "TODO: support batch > 1"
    ref = pixel_values_ref_img
    cond_pixels = draws.cond_pixel_noise.to(ref) * cond_sigmas[:, None, None, None, None] + ref
    with torch.no_grad():
        cond_latents = vae_sample(vae, cond_pixels.flatten(0, 1).to(vae_dtype), draws.vae_eps_cond).float()
    cond_latents = cond_latents.reshape(batch, ref.shape[1], *cond_latents.shape[1:]) * scaling
    cond_latents = cond_latents[:, 0] / scaling

    # 3. EDM noise level and the noisy, preconditioned input
    sigmas = rand_log_normal(draws.sigmas_u, SIGMA_LOC, SIGMA_SCALE).to(latents)
    rec["sigmas"] = sigmas
    sig = sigmas[:, None, None, None, None]
    noisy_latents = latents + draws.noise.to(latents) * sig
    timesteps = 0.25 * sigmas.log()
    rec["timesteps"] = timesteps
    inp_noisy_latents = noisy_latents / ((sig**2 + 1) ** 0.5)

    # 4. CLIP embedding of reference frame 0, micro-conditions, conditioning dropout
    with torch.no_grad():
        image_embeds = clip_embeddings(modules.image_encoder, ref[:, 0], modules.clip_mean, modules.clip_std)
    image_embeds = image_embeds.float()
    added_time_ids = torch.stack(
        [torch.full_like(noise_aug_strength, TRAIN_FPS_ID), torch.full_like(noise_aug_strength, TRAIN_MOTION_BUCKET),
         noise_aug_strength]
    )[None].repeat(batch, 1)
    rec["added_time_ids"] = added_time_ids
    encoder_hidden_states = image_embeds[:, None]
    if conditioning_dropout_prob is not None:
        p = draws.random_p.to(latents.device)
        prompt_mask = (p < 2 * conditioning_dropout_prob).reshape(batch, 1, 1)
        encoder_hidden_states = torch.where(prompt_mask, torch.zeros_like(encoder_hidden_states),
                                            encoder_hidden_states)
        keep = 1 - ((p >= conditioning_dropout_prob).to(cond_latents.dtype)
                    * (p < 3 * conditioning_dropout_prob).to(cond_latents.dtype))
        cond_latents = keep.reshape(batch, 1, 1, 1) * cond_latents
    rec["encoder_hidden_states"] = encoder_hidden_states
    rec["conditional_latents"] = cond_latents
    sample = torch.cat([inp_noisy_latents, cond_latents[:, None].repeat(1, frames, 1, 1, 1)], dim=2)

    # 5. motion (frozen) -> head latents (trainable) [B*F, c0, h, w]
    source = ref.repeat(1, frames, 1, 1, 1)
    trunk = training_motion(modules.motion, source, pixel_values_vid)
    rec["pose_identity_latent"] = trunk
    side = latents.shape[-1]
    fitted = fit_trunk_to_latents(trunk.flatten(0, 1), side).reshape(batch, frames, -1, side, side)
    head_dtype = next(modules.head_net.parameters()).dtype
    head_latents = modules.head_net(fitted.to(head_dtype))
    rec["head_latents"] = head_latents

    # 6. WFM residuals + infofill, UNet (frozen weights, gradients flow through it to the residuals)
    model_dtype = next(modules.unet.parameters()).dtype
    sample_m = sample.to(model_dtype)
    ehs = encoder_hidden_states.to(model_dtype)
    ids = added_time_ids.to(model_dtype)
    down, mid, infofill = modules.wfm(sample_m, timesteps, ehs, ids, head_latents=head_latents, conditioning_scale=1.0)
    unet_out = modules.unet(sample_m, timesteps, ehs, ids, down_block_additional_residuals=down,
                            mid_block_additional_residual=mid)
    rec["unet_out"], rec["infofill"] = unet_out, infofill
    model_pred = unet_out + infofill
    rec["model_pred"] = model_pred

    # 7. EDM preconditioning and the weighted loss (float32)
    c_out = -sig / ((sig**2 + 1) ** 0.5)
    c_skip = 1 / (sig**2 + 1)
    denoised = model_pred * c_out + c_skip * noisy_latents
    rec["denoised_latents"] = denoised
    weighing = (1 + sig**2) * (sig**-2.0)
    per_sample = torch.mean((weighing.float() * (denoised.float() - latents.float()) ** 2).reshape(batch, -1), dim=1)
    rec["loss_per_sample"] = per_sample
    loss = per_sample.mean()
    rec["loss"] = loss
    return StepOutput(loss=loss, loss_per_sample=per_sample)


def set_batch_layout(modules: TrainModules, batch: int, time_context: str = "release") -> None:
    """The release ran diffusers 0.27.2, whose temporal cross-attention context layout mixes the samples of
    one forward batch (``engine.models.time_context``): in training that batch is the per-process batch."""
    for module in (modules.wfm, modules.unet):
        module.set_time_context(time_context, cfg_group=max(1, batch))

