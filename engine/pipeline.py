"""ReenactPipeline: a source portrait animated by driving frames, as the release computes it.

    1. prepare_source   CLIP embedding, noise-augmented VAE latent, time ids (once per source)
    2. encode_motion    LivePortrait motion -> 3-D warp -> SPADE trunk -> HeadNet latents
    3. denoise          overlapped windows x CFG pairs through WFM + UNet, Euler/DDIM steps
    4. decode           VAE decode frame by frame -> uint8 frames

Every network call goes through a backend by graph name (``export.graphs``: appearance, motion,
warp, denoiser, vae_encoder, vae_decoder, image_encoder), so the same steps run on eager torch,
onnxruntime or TensorRT. Keypoint maths, windows, guidance and sampler steps stay here, in torch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from engine import conditioning, sampling, windows
from engine.backends import Backend, create_backend
from engine.config import RunConfig
from engine.models.liveportrait.motion_branch import to_model_input
from engine.motion import KeypointInfo, absolute_motion, relative_motion, transform_keypoint
from engine.networks import Networks

Progress = Callable[[str, int, int], None]  # (stage, done, total)
Record = dict[str, torch.Tensor]
MOTION_CHUNK = 16  # driving frames per warp call (bounded memory; LivePortrait's chunk)


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
    def __init__(self, backend: Backend | Networks, cfg: RunConfig) -> None:
        if isinstance(backend, Networks):  # eager torch over these networks
            backend = create_backend("torch", cfg, nets=backend)
        self.backend = backend
        self.nets: Networks | None = getattr(backend, "nets", None)
        self.cfg = cfg
        self.device = backend.device
        self.dtype = getattr(torch, cfg.dtype)

    # 1. ---------------------------------------------------------------- source
    def prepare_source(self, source_u8: np.ndarray, noise_aug: torch.Tensor) -> SourceState:
        s, m = self.cfg.sampler, self.cfg.model
        reference = conditioning.reference_image_u8(source_u8)
        pixels = conditioning.clip_pixels(reference, m.clip_normalize["image_mean"], m.clip_normalize["image_std"])
        embeds = self.backend.run("image_encoder", pixel_values=pixels.to(self.device))["image_embeds"][:, None]
        # the VAE sees the noise-augmented reference; its posterior mode is used unscaled (release habit)
        image = conditioning.pil_like_tensor(reference) * 2.0 - 1.0
        image = image + s.noise_aug_strength * noise_aug.to(image.dtype)
        latents = self.backend.run("vae_encoder", image=image.to(self.device))["latent"]
        cond = conditioning.Conditioning(
            image_embeddings=torch.cat([torch.zeros_like(embeds), embeds]),  # [2, 1, D]: uncond = zeros
            image_latents=torch.cat([torch.zeros_like(latents), latents]),  # [2, 4, h, w]
            added_time_ids=conditioning.added_time_ids(s.cond_fps, s.motion_bucket_id, s.noise_aug_strength),
        )
        return SourceState(source_u8=source_u8, source_pm1=conditioning.to_pm1(source_u8)[None], cond=cond)

    # 2. ---------------------------------------------------------------- motion
    def keypoints(self, images01: torch.Tensor) -> KeypointInfo:
        """M on [B, 3, 256, 256] in [0, 1], one image per call as the release (W amplifies M's rounding)."""
        outs = [self.backend.run("motion", images=images01[i : i + 1]) for i in range(images01.shape[0])]
        return KeypointInfo(**{k: torch.cat([o[k] for o in outs]).float() for k in outs[0]})

    def warp(self, f_s: torch.Tensor, x_s: torch.Tensor, x_d: torch.Tensor) -> dict[str, torch.Tensor]:
        """W + trunk + HeadNet for one chunk; a graph built for a fixed frame count gets the chunk padded."""
        n = x_d.shape[0]
        fixed = self.backend.fixed_dim("warp", "frames")
        if fixed is not None and n < fixed:
            x_d = torch.cat([x_d, x_d[-1:].expand(fixed - n, -1, -1)])  # frames are independent: pad, cut
        out = self.backend.run("warp", feature_volume=f_s, kp_source=x_s, kp_driving=x_d)
        return {k: v[:n] for k, v in out.items()}

    @torch.no_grad()
    def encode_motion(self, state: SourceState, driving_u8: np.ndarray, record: Record | None = None) -> torch.Tensor:
        """[F, H, W, 3] uint8 -> head latents [2, F, c0, h, w] (row 0 = zeros for CFG)."""
        # 2a. source: keypoints x_s and the canonical feature volume f_s (LivePortrait, float32)
        source01 = to_model_input(state.source_pm1[:1].to(self.device))
        src = self.keypoints(source01)
        src_rotation = src.rotation()
        f_s = self.backend.run("appearance", source=source01)["feature_volume"]
        x_s = transform_keypoint(src, src_rotation)

        # 2b. driving frames in chunks: keypoints -> motion relative to the first frame -> x_d -> warp
        driving_pm1 = conditioning.to_pm1(driving_u8)  # [F, 3, H, W]
        chunk = min(MOTION_CHUNK, self.backend.max_dim("warp", "frames") or MOTION_CHUNK)
        first: tuple[KeypointInfo, torch.Tensor] | None = None
        trunks, heads = [], []
        for start in range(0, driving_pm1.shape[0], chunk):
            images = to_model_input(driving_pm1[start : start + chunk].to(self.device))
            info = self.keypoints(images)
            rotation = info.rotation()
            first = first or (info[0], rotation[:1])
            if self.cfg.relative_motion:
                motion = relative_motion(src, src_rotation, info, rotation, *first)
            else:
                motion = absolute_motion(src, info, rotation)
            out = self.warp(f_s, x_s, motion.x_d)
            trunks.append(out["trunk"])
            heads.append(out["head_latents"])
        head = torch.cat(heads)  # [F, c0, h, w]
        if record is not None:
            record["motion_trunk"] = torch.cat(trunks)[None].float()
        return torch.stack([torch.zeros_like(head), head])  # [2, F, c0, h, w]

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
        per_call = min(wc.batch, self.backend.max_dim("denoiser", "windows") or wc.batch)
        w_index = 0
        for group in windows.batches(all_windows, per_call):
            n = len(group)
            # windows x CFG pair -> batch [w0_u, w0_c, w1_u, w1_c, ...]
            out = self.backend.run(
                "denoiser",
                sample=torch.stack([x_in[:, idx] for idx in group]).flatten(0, 1),  # [2n, T, 8, h, w]
                timestep=timestep.reshape(1).to(self.device),
                encoder_hidden_states=cond.image_embeddings.repeat(n, 1, 1).to(self.dtype),  # [2n, 1, D]
                added_time_ids=cond.added_time_ids.repeat(n, 1).to(self.dtype),  # [2n, 3]
                head_latents=torch.stack([head_latents[:, idx] for idx in group]).flatten(0, 1),  # [2n, T, c0, h, w]
            )
            unet_out, infofill = out["unet_out"], out["infofill"]
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
        z = (1 / self.cfg.model.vae.get("scaling_factor", 0.18215) * latents[0]).to(self.dtype)  # [F, 4, h, w]
        frames = []
        for i in range(z.shape[0]):
            frames.append(self.backend.run("vae_decoder", latents=z[i : i + 1])["image"].float().cpu())
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
