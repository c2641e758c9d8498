"""ReenactPipeline: a source portrait animated by driving frames, as the release computes it.

    1. prepare_source   CLIP embedding, noise-augmented VAE latent, time ids (once per source)
    2. encode_motion    LivePortrait motion -> 3-D warp -> SPADE trunk -> HeadNet latents
    3. denoise          overlapped windows x CFG pairs through WFM + UNet, Euler/DDIM steps
    4. decode           VAE decode frame by frame -> uint8 frames

Everything below is plain tensors in, tensors out; the networks live in ``Networks``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from engine import conditioning, sampling, windows
from engine.config import RunConfig
from engine.networks import Networks

Progress = Callable[[str, int, int], None]  # (stage, done, total)
Record = dict[str, torch.Tensor]


@dataclass
class Noise:
    """The two random draws of a run, in the release's generator order."""

    aug: torch.Tensor  # [1, 3, H, W]     noise added to the VAE conditioning image
    initial: torch.Tensor  # [1, T, 4, h, w]  one window of initial latent noise, tiled over time

    @classmethod
    def draw(cls, seed: int, size: int, window: int, latent_scale: int = 8) -> Noise:
        generator = torch.Generator("cpu").manual_seed(seed)
        aug = torch.randn((1, 3, size, size), generator=generator, dtype=torch.float32)
        h = size // latent_scale
        initial = torch.randn((1, window, 4, h, h), generator=generator, dtype=torch.float32)
        return cls(aug=aug, initial=initial)


@dataclass
class SourceState:
    """What one source image contributes to every run with it."""

    source_u8: np.ndarray  # [H, W, 3]
    source_pm1: torch.Tensor  # [1, 3, H, W] in [-1, 1]
    cond: conditioning.Conditioning


@dataclass
class Output:
    frames: np.ndarray  # [F, H, W, 3] uint8
    frames_float: torch.Tensor  # [F, 3, H, W] in [0, 1]
    seconds: dict[str, float] = field(default_factory=dict)


class ReenactPipeline:
    def __init__(self, nets: Networks, cfg: RunConfig) -> None:
        self.nets = nets
        self.cfg = cfg
        self.device = torch.device(cfg.device)
        self.dtype = getattr(torch, cfg.dtype)

    # 1. ---------------------------------------------------------------- source
    def prepare_source(self, source_u8: np.ndarray, noise_aug: torch.Tensor) -> SourceState:
        s, m = self.cfg.sampler, self.cfg.model
        reference = conditioning.reference_image_u8(source_u8)
        pixels = conditioning.clip_pixels(reference, m.clip_normalize["image_mean"], m.clip_normalize["image_std"])
        cond = conditioning.Conditioning(
            image_embeddings=conditioning.encode_clip(self.nets.image_encoder, pixels),
            image_latents=conditioning.encode_vae_condition(self.nets.vae, reference, noise_aug, s.noise_aug_strength),
            added_time_ids=conditioning.added_time_ids(s.cond_fps, s.motion_bucket_id, s.noise_aug_strength),
        )
        return SourceState(source_u8=source_u8, source_pm1=conditioning.to_pm1(source_u8)[None], cond=cond)

    # 2. ---------------------------------------------------------------- motion
    @torch.no_grad()
    def encode_motion(self, state: SourceState, driving_u8: np.ndarray, record: Record | None = None) -> torch.Tensor:
        """[F, H, W, 3] uint8 -> head latents [2, F, c0, h, w] (row 0 = zeros for CFG)."""
        driving_pm1 = conditioning.to_pm1(driving_u8)  # [F, 3, H, W]
        trunk = self.nets.motion(
            state.source_pm1.to(self.device),
            driving_pm1.to(self.device),
            relative=self.cfg.relative_motion,
        )  # [F, C, h, w], float32 always
        if record is not None:
            record["motion_trunk"] = trunk[None].float()
        trunk = self.fit_trunk_to_latents(trunk)
        head = self.nets.head_net(trunk[None].to(self.dtype))  # [1, F, C, h, w] -> [F, c0, h, w]
        return torch.stack([torch.zeros_like(head), head])  # [2, F, c0, h, w]

    def fit_trunk_to_latents(self, trunk: torch.Tensor) -> torch.Tensor:
        """The release renders only at the size where LivePortrait's trunk grid equals the latent
        grid (512 -> 64x64). At other sizes the trunk is resized to the latent grid; at the
        native size this is a no-op, so the release's numbers are untouched."""
        latent_hw = self.cfg.size // 8
        if trunk.shape[-2:] == (latent_hw, latent_hw):
            return trunk
        down = trunk.shape[-1] > latent_hw
        return F.interpolate(trunk, size=(latent_hw, latent_hw), mode="bilinear", antialias=down)

    # 3. ---------------------------------------------------------------- denoise
    def initial_latents(self, noise: Noise, num_frames: int, schedule: sampling.Schedule) -> torch.Tensor:
        """One window of noise tiled along time (frame i reuses frame i mod T's noise)."""
        tile = noise.initial * schedule.init_noise_sigma
        reps = num_frames // tile.shape[1] + 1
        return tile.repeat(1, reps, 1, 1, 1)[:, :num_frames]  # [1, F, 4, h, w]

    def guidance(self, num_frames: int) -> torch.Tensor:
        s = self.cfg.sampler
        g = torch.linspace(s.min_guidance, s.max_guidance, num_frames).flip(0)  # flipped: release habit
        return g[None, :, None, None, None]  # [1, F, 1, 1, 1]

    @torch.no_grad()
    def predict_noise(
        self,
        latents: torch.Tensor,  # [1, F, 4, h, w]
        sigma: torch.Tensor,
        timestep: torch.Tensor,
        state: SourceState,
        head_latents: torch.Tensor,  # [2, F, c0, h, w]
        record: Record | None = None,
        prefix: str = "",
        on_window: Callable[[], None] | None = None,
    ) -> torch.Tensor:
        """Window-blended CFG pair of noise predictions, [2, F, 4, h, w]."""
        wc = self.cfg.windows
        cond = state.cond
        num_frames = latents.shape[1]
        # [1, F, 4, h, w] -> [2, F, 4, h, w] -> [2, F, 8, h, w]
        x_in = sampling.scale_model_input(torch.cat([latents] * 2), sigma)
        image_latents = cond.image_latents[:, None].expand(-1, num_frames, -1, -1, -1)
        x_in = torch.cat([x_in, image_latents], dim=2).to(self.dtype)

        all_windows = windows.window_indices(num_frames, wc.size, wc.overlap)
        weight = windows.window_weights(len(all_windows[0]), latents.device)
        noise_pred = torch.zeros_like(image_latents, dtype=torch.float32)
        count = torch.zeros(num_frames, device=latents.device)
        w_index = 0
        for group in windows.batches(all_windows, wc.batch):
            n = len(group)
            # windows x CFG pair -> batch [w0_u, w0_c, w1_u, w1_c, ...]
            sample = torch.stack([x_in[:, idx] for idx in group]).flatten(0, 1)  # [2n, T, 8, h, w]
            head = torch.stack([head_latents[:, idx] for idx in group]).flatten(0, 2)  # [2n*T, c0, h, w]
            unet_out, infofill = self.nets.denoiser.parts(
                sample,
                timestep.to(self.device),
                cond.image_embeddings.repeat(n, 1, 1).to(self.dtype),
                cond.added_time_ids.repeat(n, 1).to(self.dtype),
                head,
            )
            pred = (unet_out + infofill).float().unflatten(0, (n, 2))  # [n, 2, T, 4, h, w]
            for k, idx in enumerate(group):
                if record is not None:
                    record[f"{prefix}win{w_index}_infofill"] = infofill.unflatten(0, (n, 2))[k].float()
                    record[f"{prefix}win{w_index}_unet_out"] = unet_out.unflatten(0, (n, 2))[k].float()
                noise_pred[:, idx] += pred[k] * weight[:, None, None, None]
                count[idx] += weight
                w_index += 1
                if on_window is not None:
                    on_window()
        return noise_pred / count[:, None, None, None]

    def denoise(
        self,
        state: SourceState,
        head_latents: torch.Tensor,
        latents: torch.Tensor,
        schedule: sampling.Schedule,
        record: Record | None = None,
        progress: Progress | None = None,
    ) -> torch.Tensor:
        num_frames = latents.shape[1]
        step = sampling.STEPS[self.cfg.sampler.sampler]
        guidance = self.guidance(num_frames).to(latents.device)
        n_windows = len(windows.window_indices(num_frames, self.cfg.windows.size, self.cfg.windows.overlap))
        total, done = len(schedule.timesteps) * n_windows, 0

        def tick() -> None:
            nonlocal done
            done += 1
            if progress is not None:
                progress("denoise", done, total)

        for i, t in enumerate(schedule.timesteps):
            sigma, sigma_next = schedule.sigmas[i], schedule.sigmas[i + 1]
            pair = self.predict_noise(latents, sigma, t, state, head_latents, record, f"step{i}_", tick)
            uncond, cond = pair.chunk(2)  # [1, F, 4, h, w] each
            guided = uncond + guidance * (cond - uncond)
            latents = step(latents, guided, sigma, sigma_next)
            if record is not None:
                record[f"step{i}_noise_pred_guided"] = guided
                record[f"step{i}_latents"] = latents
        return latents

    # 4. ---------------------------------------------------------------- decode
    @torch.no_grad()
    def decode(self, latents: torch.Tensor, progress: Progress | None = None) -> torch.Tensor:
        """[1, F, 4, h, w] -> [F, 3, H, W] in [0, 1], one frame at a time as the release does."""
        vae = self.nets.vae
        z = (1 / vae.config.scaling_factor * latents[0]).to(self.dtype)  # [F, 4, h, w]
        frames = []
        for i in range(z.shape[0]):
            frames.append(vae.decode(z[i : i + 1]).sample.float().cpu())
            if progress is not None:
                progress("decode", i + 1, z.shape[0])
        return (torch.cat(frames) / 2 + 0.5).clamp(0, 1)

    # ------------------------------------------------------------------ all
    def __call__(
        self,
        source_u8: np.ndarray,
        driving_u8: np.ndarray,
        noise: Noise | None = None,
        progress: Progress | None = None,
        record: Record | None = None,
    ) -> Output:
        num_frames = driving_u8.shape[0]
        if num_frames < 1:
            raise ValueError("the driving clip has no frames")
        wc = self.cfg.windows
        # Clips shorter than a window are padded with their last frame: the networks were
        # trained on full windows, and the release's window builder fails on short clips.
        padded = num_frames if num_frames >= wc.size else wc.size
        if padded > num_frames:
            pad = np.repeat(driving_u8[-1:], padded - num_frames, axis=0)
            driving_u8 = np.concatenate([driving_u8, pad])
        if noise is None:
            noise = Noise.draw(self.cfg.seed, source_u8.shape[0], wc.size)
        seconds: dict[str, float] = {}

        t0 = time.perf_counter()
        state = self.prepare_source(source_u8, noise.aug)
        seconds["source"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        head_latents = self.encode_motion(state, driving_u8, record)
        seconds["motion"] = time.perf_counter() - t0
        if progress is not None:
            progress("motion", padded, padded)

        t0 = time.perf_counter()
        schedule = sampling.make_schedule(self.cfg.sampler.sampler, self.cfg.sampler.steps, self.cfg.sampler.scheduler)
        latents = self.initial_latents(noise, padded, schedule).to(self.device)
        latents = self.denoise(state, head_latents, latents, schedule, record, progress)
        seconds["denoise"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        frames = self.decode(latents, progress)[:num_frames]
        seconds["decode"] = time.perf_counter() - t0

        if record is not None:
            record.update(
                clip_image_embeds=state.cond.image_embeddings[1],
                vae_latent_mean=state.cond.image_latents[1:],
                head_latents=head_latents[1],
                final_latents=latents,
                image_embeddings_cfg=state.cond.image_embeddings,
                image_latents_cfg=state.cond.image_latents,
                added_time_ids=state.cond.added_time_ids,
            )
        frames_u8 = (frames.permute(0, 2, 3, 1) * 255.0).to(torch.uint8).numpy()  # truncation, as the release
        return Output(frames=frames_u8, frames_float=frames, seconds=seconds)
