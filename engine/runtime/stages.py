"""The four stages every mode is built from. Each is a small object with explicit state that
calls networks only through a backend, by graph name:

    SourceStage   source image -> CLIP embedding, LivePortrait f_s / x_s (cached per image);
                  the noise-augmented VAE latent per run (it depends on the run's noise draw)
    MotionStage   driving frames -> head latents, chunk by chunk; the first-frame anchor of the
                  relative motion is explicit state, so a stream can start anywhere
    DenoiseStage  a list of (window latents, sigma, head latents) -> CFG pairs of predictions, in
                  as few calls as the backend allows; windows at different sigmas share a call
    DecodeStage   latents -> frames, several per VAE call

Schedulers (``engine.runtime``) decide what runs when; the stages decide nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from engine.backends import Backend
from engine.backends.base import Tensors
from engine.config.settings import DECODE_CHUNK, MOTION_CHUNK, VAE_SCALE, EngineConfig
from engine.diffusion import conditioning
from engine.models.liveportrait.keypoints import (
    DrivingKeypoints,
    KeypointInfo,
    absolute_motion,
    transform_keypoint,
)
from engine.models.liveportrait.motion_branch import to_model_input
from engine.models.liveportrait.motion_controls import MotionControls, MotionSmoother, controlled_motion


def float32_region(device: torch.device) -> torch.autocast:
    """LivePortrait and its keypoint maths run in float32 whatever the caller's autocast (release):
    W amplifies keypoint rounding ~10x through its narrow Gaussian heatmaps."""
    return torch.autocast(device_type=device.type, enabled=False)


# ----------------------------------------------------------------------------------- source


@dataclass(frozen=True)
class SourceMotion:
    """What every driving frame needs from the source (LivePortrait, float32)."""

    info: KeypointInfo  # batch 1
    rotation: torch.Tensor  # R_s [1, 3, 3]
    f_s: torch.Tensor  # feature volume [1, C, D, h, w]
    x_s: torch.Tensor  # source keypoints [1, K, 3]


@dataclass(frozen=True)
class SourceFeatures:
    """One source image's cached features: reusable by every run with it."""

    image_u8: np.ndarray  # [H, W, 3]
    reference_u8: np.ndarray  # the release's uint8 round trip of the source (CLIP and VAE see this)
    image_embeds: torch.Tensor  # [1, 1, D] CLIP image embedding (the conditional half)
    motion: SourceMotion


@dataclass(frozen=True)
class RunConditioning:
    """The conditional half of what the denoiser sees; the unconditional half is zeros (release)."""

    image_embeds: torch.Tensor  # [1, 1, D]
    image_latents: torch.Tensor  # [1, 4, h, w] posterior mode of the noise-augmented source, unscaled
    added_time_ids: torch.Tensor  # [1, 3] fps - 1, motion bucket id, noise aug strength


class SourceStage:
    def __init__(self, backend: Backend, cfg: EngineConfig) -> None:
        self.backend, self.cfg = backend, cfg

    def keypoints(self, images01: torch.Tensor) -> KeypointInfo:
        """M on [B, 3, 256, 256] in [0, 1], one image per call as the release (W amplifies M's rounding)."""
        outs = [self.backend.run("motion", images=images01[i : i + 1]) for i in range(images01.shape[0])]
        return KeypointInfo(**{k: torch.cat([o[k] for o in outs]).float() for k in outs[0]})

    @torch.no_grad()
    def source_motion(self, source_pm1: torch.Tensor) -> SourceMotion:
        """Source [1, 3, H, W] in [-1, 1] -> keypoints, R_s, f_s and x_s."""
        with float32_region(self.backend.device):
            return self._source_motion(source_pm1)

    def _source_motion(self, source_pm1: torch.Tensor) -> SourceMotion:
        image = to_model_input(source_pm1[:1].to(self.backend.device))
        info = self.keypoints(image)
        rotation = info.rotation()
        f_s = self.backend.run("appearance", source=image)["feature_volume"]
        return SourceMotion(info=info, rotation=rotation, f_s=f_s, x_s=transform_keypoint(info, rotation))

    @torch.no_grad()
    def prepare(self, image_u8: np.ndarray) -> SourceFeatures:
        m = self.cfg.model
        reference = conditioning.reference_image_u8(image_u8)
        pixels = conditioning.clip_pixels(reference, m.clip_normalize["image_mean"], m.clip_normalize["image_std"])
        embeds = self.backend.run("image_encoder", pixel_values=pixels.to(self.backend.device))["image_embeds"]
        motion = self.source_motion(conditioning.to_pm1(image_u8)[None])
        return SourceFeatures(image_u8=image_u8, reference_u8=reference, image_embeds=embeds[:, None], motion=motion)

    @torch.no_grad()
    def conditioning(self, source: SourceFeatures, noise_aug: torch.Tensor) -> RunConditioning:
        """The per-run part: the VAE sees the noise-augmented reference (posterior mode, unscaled).
        SVD's micro-conditioning is the engine's (EngineConfig.micro), the same for every run."""
        m = self.cfg.micro
        image = conditioning.pil_like_tensor(source.reference_u8) * 2.0 - 1.0
        image = image + m.noise_aug_strength * noise_aug.to(image.dtype)
        latents = self.backend.run("vae_encoder", image=image.to(self.backend.device))["latent"]
        ids = conditioning.added_time_ids(m.fps, m.motion_bucket_id, m.noise_aug_strength)[:1]
        return RunConditioning(image_embeds=source.image_embeds, image_latents=latents, added_time_ids=ids)


# ----------------------------------------------------------------------------------- motion


@dataclass(frozen=True)
class MotionChunk:
    """One chunk of driving frames through M, the keypoint maths, W, the trunk and the HeadNet."""

    info: KeypointInfo  # [n] driving keypoint info
    rotation: torch.Tensor  # [n, 3, 3]
    keypoints: DrivingKeypoints  # x_d and its parts
    trunk: torch.Tensor  # [n, C, h, w] SPADE trunk features (float32)
    head_latents: torch.Tensor  # [n, c0, h, w] in the run's dtype


class MotionStage:
    """Driving frames in, head latents out. State: ``anchor`` (the first driving frame's keypoint info
    and rotation; taken from the first frame seen unless set explicitly), the smoother's, and the
    motion ``controls`` (engine.models.liveportrait.motion_controls), which may change between calls."""

    def __init__(self, source_stage: SourceStage, source: SourceMotion, relative: bool = True,
                 controls: MotionControls | None = None) -> None:
        self.source_stage, self.source, self.relative = source_stage, source, relative
        self.backend = source_stage.backend
        self.anchor: tuple[KeypointInfo, torch.Tensor] | None = None
        self.controls = MotionControls()
        self.smoother = MotionSmoother()
        self.set_controls(controls or MotionControls())
        fixed = self.backend.fixed_dim("warp", "frames")
        self.chunk = min(MOTION_CHUNK, self.backend.max_dim("warp", "frames") or MOTION_CHUNK)
        self._pad_to = fixed  # a graph built for one frame count gets short chunks padded

    def set_controls(self, controls: MotionControls) -> None:
        """New controls from the next frame on (the smoother keeps its state)."""
        controls.check(self.relative)
        self.controls = controls
        self.smoother.set_strength(controls.smooth)

    def warp(self, source: SourceMotion, x_d: torch.Tensor) -> dict[str, torch.Tensor]:
        n = x_d.shape[0]
        if self._pad_to is not None and n < self._pad_to:
            x_d = torch.cat([x_d, x_d[-1:].expand(self._pad_to - n, -1, -1)])  # frames are independent
        out = self.backend.run("warp", feature_volume=source.f_s, kp_source=source.x_s, kp_driving=x_d)
        return {k: v[:n] for k, v in out.items()}

    def driving(self, images: torch.Tensor) -> tuple[KeypointInfo, torch.Tensor]:
        """Model-input frames [n, 3, 256, 256] -> (keypoint info, rotation), smoothed; sets the anchor."""
        info = self.smoother(self.source_stage.keypoints(images))
        rotation = info.rotation()
        if self.anchor is None:
            self.anchor = (info[0], rotation[:1])
        return info, rotation

    def keypoints(self, source: SourceMotion, info: KeypointInfo, rotation: torch.Tensor) -> DrivingKeypoints:
        """The driving motion applied to ``source`` under the current controls."""
        assert self.anchor is not None
        if self.relative:
            return controlled_motion(source.info, source.rotation, info, rotation, *self.anchor, self.controls)
        return absolute_motion(source.info, info, rotation)

    def for_source(self, source: SourceMotion, info: KeypointInfo, rotation: torch.Tensor) -> MotionChunk:
        """Driving info (from ``driving``) through the keypoint maths, W, the trunk and the HeadNet for ``source``."""
        with float32_region(self.backend.device):
            kp = self.keypoints(source, info, rotation)
            out = self.warp(source, kp.x_d)
        return MotionChunk(info, rotation, kp, out["trunk"], out["head_latents"])

    @torch.no_grad()
    def run_pm1(self, frames_pm1: torch.Tensor) -> MotionChunk:
        """[n, 3, H, W] in [-1, 1] (n <= chunk) -> one MotionChunk."""
        with float32_region(self.backend.device):
            info, rotation = self.driving(to_model_input(frames_pm1.to(self.backend.device)))
            return self.for_source(self.source, info, rotation)

    def __call__(self, frames_u8: np.ndarray) -> torch.Tensor:
        """uint8 [n, H, W, 3] -> head latents [n, c0, h, w], ``chunk`` frames per warp call."""
        heads = [self.run_pm1(conditioning.to_pm1(frames_u8[i : i + self.chunk])).head_latents
                 for i in range(0, len(frames_u8), self.chunk)]
        return torch.cat(heads)


# ---------------------------------------------------------------------------------- denoise


@dataclass(frozen=True)
class WindowInput:
    latents: torch.Tensor  # [T, 4, h, w] noisy latents x (unscaled), float32
    sigma: torch.Tensor  # 0-d noise level of this window
    timestep: torch.Tensor  # 0-d what the networks are conditioned on (0.25 ln sigma)
    head_latents: torch.Tensor  # [T, c0, h, w] the conditional head latents (the uncond half is zeros)


@dataclass(frozen=True)
class WindowOutput:
    unet_out: torch.Tensor  # [2, T, 4, h, w] (uncond, cond) UNet output before the infofill; [1, ...]: cond only
    infofill: torch.Tensor  # [2, T, 4, h, w] (or [1, ...])

    @property
    def noise_pred(self) -> torch.Tensor:
        """[rows, T, 4, h, w] float32: the release adds the infofill to each CFG half before blending."""
        return (self.unet_out + self.infofill).float()


class DenoiseStage:
    """WFM + UNet over windows x CFG pairs, batch laid out [w0_u, w0_c, w1_u, w1_c, ...], or over the
    conditional rows alone [w0_c, w1_c, ...] (a conditional-only evaluation, engine.diffusion.guidance).

    The unconditional rows are zeros (image embedding, image latents, head latents) and are
    written once into static per-batch-size buffers; each call fills only the rows that change.

    Graphs: the fused ``denoiser`` (``denoiser_cond``) when nothing is reused; with a ``cache`` (WFM
    reuse, engine.config.modes) the split ``wfm`` + ``unet`` (``_cond``) graphs, the WFM's outputs kept per
    window group and fed again to the UNet at evaluations that skip the WFM. A backend without
    ``denoiser_cond`` runs conditional-only evaluations as full pairs and keeps the conditional rows
    (the same numbers, no saving).
    """

    def __init__(self, backend: Backend, cfg: EngineConfig) -> None:
        self.backend, self.cfg = backend, cfg
        self.dtype = getattr(torch, cfg.dtype)
        self.per_call = min(cfg.windows.batch, backend.max_dim("denoiser", "windows") or cfg.windows.batch)
        self._buffers: dict[tuple[int, bool], dict[str, torch.Tensor]] = {}
        self._cond: RunConditioning | None = None
        self._pooled: dict[int, DenoiseStage] = {}

    def kv_downsample(self, factor: int) -> DenoiseStage:
        """This stage on networks whose full attentions pool keys/values ``factor`` x ``factor``
        (engine.models.approx), built once per factor and kept; torch backend only."""
        if factor == 1:
            return self
        if factor not in self._pooled:
            self._pooled[factor] = DenoiseStage(self.backend.kv_downsample(factor), self.cfg)
        return self._pooled[factor]

    def _batch(self, n: int, cond: RunConditioning, first: WindowInput, pairs: bool) -> dict[str, torch.Tensor]:
        if self._cond is not cond:  # a new run: the constant conditional rows change
            self._buffers.clear()
            self._cond = cond
        buf = self._buffers.get((n, pairs))
        if buf is None:
            dev, dt = self.backend.device, self.dtype
            t, c, h, w = first.latents.shape
            c0 = first.head_latents.shape[1]
            rows = 2 * n if pairs else n
            buf = {
                "sample": torch.zeros(rows, t, c + cond.image_latents.shape[1], h, w, device=dev, dtype=dt),
                "timestep": torch.zeros(rows, device=dev),
                "encoder_hidden_states": torch.zeros(rows, *cond.image_embeds.shape[1:], device=dev, dtype=dt),
                "added_time_ids": cond.added_time_ids.to(dev, dt).repeat(rows, 1),
                "head_latents": torch.zeros(rows, t, c0, h, w, device=dev, dtype=first.head_latents.dtype),
            }
            conditional = slice(1, None, 2) if pairs else slice(None)
            buf["sample"][conditional, :, c:] = cond.image_latents.to(dev, dt)[:, None]
            buf["encoder_hidden_states"][conditional] = cond.image_embeds.to(dev, dt)[0]
            self._buffers[(n, pairs)] = buf
        return buf

    def _fill(self, group: Sequence[WindowInput], cond: RunConditioning, pairs: bool) -> dict[str, torch.Tensor]:
        buf = self._batch(len(group), cond, group[0], pairs)
        c = group[0].latents.shape[1]
        r = 2 if pairs else 1
        for k, item in enumerate(group):
            # [T, 4, h, w] scaled by 1/sqrt(sigma^2 + 1), the same for both CFG rows
            scaled = (item.latents / ((item.sigma**2 + 1) ** 0.5)).to(buf["sample"].device)
            buf["sample"][r * k : r * k + r, :, :c] = scaled
            buf["timestep"][r * k : r * k + r] = item.timestep
            buf["head_latents"][r * k + r - 1] = item.head_latents
        return buf

    @torch.no_grad()
    def __call__(self, items: Sequence[WindowInput], cond: RunConditioning, *, cfg: bool = True, wfm: bool = True,
                 cache: dict[int, tuple[bool, Tensors]] | None = None, first: int = 0) -> list[WindowOutput]:
        """One evaluation of ``items``: both CFG rows (``cfg``) or the conditional ones; with a
        ``cache``, the WFM runs only when ``wfm`` (else its cached outputs are reused). ``first``: the
        run's index of ``items[0]``, so that the cache keys each window group by its place in the run."""
        outputs: list[WindowOutput] = []
        pairs = cfg or (cache is None and "denoiser_cond" not in self.backend)
        for start in range(0, len(items), self.per_call):
            group = items[start : start + self.per_call]
            feeds = self._fill(group, cond, pairs)
            if cache is None:
                out = self.backend.run("denoiser" if pairs else "denoiser_cond", **feeds)
            else:
                out = self._split(feeds, pairs, wfm, cache, first + start)
            rows = 2 if pairs else 1
            unet_out = out["unet_out"].unflatten(0, (len(group), rows))  # [n, rows, T, 4, h, w]
            infofill = out["infofill"].unflatten(0, (len(group), rows))
            if pairs and not cfg:  # a pair graph standing in for the conditional-only one
                unet_out, infofill = unet_out[:, 1:], infofill[:, 1:]
            outputs += [WindowOutput(unet_out[k], infofill[k]) for k in range(len(group))]
        return outputs

    def _split(self, feeds: Tensors, pairs: bool, wfm: bool, cache: dict[int, tuple[bool, Tensors]],
               key: int) -> Tensors:
        """WFM (or its cached outputs) then UNet; the cache holds per window group the WFM outputs and
        whether they are CFG pairs (a conditional-only evaluation takes the conditional rows of those)."""
        suffix = "" if pairs else "_cond"
        if wfm or key not in cache:
            cache[key] = (pairs, self.backend.run("wfm" + suffix, **feeds))
        held_pairs, held = cache[key]
        if held_pairs and not pairs:
            held = {name: _conditional_rows(t, feeds["sample"].shape[0]) for name, t in held.items()}
        elif pairs and not held_pairs:
            raise ValueError("a CFG evaluation cannot reuse conditional-only WFM outputs (modes.eval_plan "
                             "refreshes them)")
        unet_spec = self.backend["unet" + suffix].spec
        inputs = {n: feeds[n] for n in unet_spec.input_names[:4]}
        inputs.update({n: held[n] for n in unet_spec.input_names[4:]})
        return {"unet_out": self.backend.run("unet" + suffix, **inputs)["unet_out"], "infofill": held["infofill"]}

def _conditional_rows(t: torch.Tensor, windows: int) -> torch.Tensor:
    """The conditional rows of a pair-batched tensor: [2n, ...] or [2n*T, ...] (frames in the batch)."""
    pairs = t.unflatten(0, (windows, 2, -1))  # [n, 2, T or 1, ...]
    return pairs[:, 1].flatten(0, 1)


# ----------------------------------------------------------------------------------- decode


class DecodeStage:
    """Latents -> frames in [0, 1] and uint8 (truncated, as the release), several frames per call."""

    def __init__(self, backend: Backend, cfg: EngineConfig) -> None:
        self.backend = backend
        self.dtype = getattr(torch, cfg.dtype)
        self.scale = 1 / cfg.model.vae.get("scaling_factor", VAE_SCALE)
        self.per_call = min(DECODE_CHUNK, backend.max_dim("vae_decoder", "frames") or DECODE_CHUNK)

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor, tiny: bool = False) -> torch.Tensor:
        """[n, 4, h, w] -> float32 [n, 3, H, W] in [0, 1] on the host. ``tiny``: the TAESD decoder,
        which reads the sampler's latents as they are (the full decoder's get 1 / scaling_factor)."""
        graph = "tiny_decoder" if tiny else "vae_decoder"
        z = (latents if tiny else self.scale * latents).to(self.backend.device, self.dtype)
        frames = []
        for i in range(0, z.shape[0], self.per_call):
            image = self.backend.run(graph, latents=z[i : i + self.per_call])["image"]
            # non_blocking: on a GPU the copy is queued behind the decoder and the next launch is not held
            frames.append(image.to("cpu", torch.float32, non_blocking=True))
        if self.backend.device.type == "cuda":
            torch.cuda.current_stream(self.backend.device).synchronize()
        return (torch.cat(frames) / 2 + 0.5).clamp(0, 1)


def to_uint8(frames01: torch.Tensor) -> np.ndarray:
    """[n, 3, H, W] in [0, 1] -> uint8 [n, H, W, 3] by truncation (the release's ``.astype(uint8)``)."""
    return (frames01.permute(0, 2, 3, 1) * 255.0).to(torch.uint8).numpy()


# ----------------------------------------------------------------------------------- bundle


@dataclass(frozen=True)
class Stages:
    """The stateless-between-runs stages of one engine; a MotionStage is made per run (anchor)."""

    cfg: EngineConfig
    source: SourceStage
    denoise: DenoiseStage
    decode: DecodeStage

    @classmethod
    def build(cls, backend: Backend, cfg: EngineConfig) -> Stages:
        return cls(cfg, SourceStage(backend, cfg), DenoiseStage(backend, cfg), DecodeStage(backend, cfg))

    def motion(self, source: SourceFeatures, relative: bool = True,
               controls: MotionControls | None = None) -> MotionStage:
        return MotionStage(self.source, source.motion, relative, controls)
