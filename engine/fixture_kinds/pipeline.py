"""The ``pipeline_*`` fixtures: LargePosePipeline.__call__ end to end (every window, every step)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from engine import conditioning, presets, sampling, weights
from engine.backends import Backend, create_backend
from engine.config import ModelConfig, RunConfig, SamplerConfig, WindowConfig
from engine.fixture_kinds import TensorCheck, read_config, read_tensors
from engine.networks import Networks, build_networks
from engine.runtime import ExactRun, Noise
from engine.stages import Stages

MODULE_TOL = 1e-5  # conditioning tensors are single-module outputs
PIPELINE_TOL = 1e-4
INPUTS = {"source_u8", "driving_u8", "noise_aug_noise", "initial_noise"}

# slot -> fixture weight file (the pipeline fixture reuses the other kinds' files, see its README)
WEIGHT_FILES = {
    "appearance_feature_extractor": "pipeline_appearance_feature_extractor.safetensors",
    "motion_extractor": "liveportrait_motion_extractor.safetensors",
    "warping_module": "liveportrait_warping_module.safetensors",
    "spade_generator": "liveportrait_spade_generator.safetensors",
    "head_embedder": "wfm_unet_head_embedder.safetensors",
    "warping_feature_mapper": "wfm_unet_warping_feature_mapper.safetensors",
    "unet": "wfm_unet_unet.safetensors",
    "vae": "pipeline_vae.safetensors",
    "image_encoder": "pipeline_image_encoder.safetensors",
}


def model_config(cfg: dict) -> ModelConfig:
    lp = cfg["lp_pipe"]
    lp = {k: v for k, v in lp.items() if k.endswith("_params")}
    norm = cfg.get("clip_image_processor_config", {})
    return ModelConfig(
        name="fixture",
        liveportrait=lp,
        unet=cfg["unet_config"],
        vae=cfg["vae_config"],
        clip_vision=cfg["clip_vision_config"],
        trunk_channels=presets.spade_trunk_channels(lp["spade_generator_params"]),
        image_size=int(cfg["call_kwargs"]["height"]),
        clip_normalize={"image_mean": norm["image_mean"], "image_std": norm["image_std"]},
    )


def run_config(cfg: dict, model: ModelConfig, time_context: str, window_batch: int) -> RunConfig:
    call = cfg["call_kwargs"]
    if call["height"] != call["width"]:
        raise ValueError("only square fixtures are supported (the engine renders square frames)")
    sampler = SamplerConfig(
        sampler="euler",
        steps=int(call["num_inference_steps"]),
        min_guidance=float(call["min_guidance_scale"]),
        max_guidance=float(call["max_guidance_scale"]),
        time_context=time_context,
        cond_fps=int(call["fps"]),
        motion_bucket_id=int(call["motion_bucket_id"]),
        noise_aug_strength=float(call["noise_aug_strength"]),
        scheduler=cfg["scheduler_config"],
    )
    windows = WindowConfig(size=int(call["tile_size"]), overlap=int(call["tile_overlap"]), batch=window_batch)
    return RunConfig(model=model, sampler=sampler, windows=windows, size=int(call["height"]))


def load_fixture_networks(fixture_dir: Path, model: ModelConfig, time_context: str) -> Networks:
    nets = build_networks(model, time_context)
    slots = nets.slots()
    for slot, filename in WEIGHT_FILES.items():
        path = Path(fixture_dir) / filename
        weights.load_into(slots[slot], weights.read_state_dict(path), path)
    return nets


def torch_backend(nets: Networks, run_cfg: RunConfig) -> Backend:
    return create_backend("torch", run_cfg, nets=nets)


def reproduce(
    fixture_dir: Path, time_context: str = "release", window_batch: int = 1,
    backend_factory: Callable[[Networks, RunConfig], Backend] | None = None,
) -> list[TensorCheck]:
    """Run exact mode on the fixture's inputs and injected noise; compare every recorded tensor.

    ``backend_factory(nets, run_cfg) -> Backend`` lets another backend run the same check.
    """
    cfg = read_config(fixture_dir, "pipeline")
    ref = read_tensors(fixture_dir, "pipeline_io.safetensors")
    model = model_config(cfg)
    run_cfg = run_config(cfg, model, time_context, window_batch)
    nets = load_fixture_networks(fixture_dir, model, time_context)
    stages = Stages.build((backend_factory or torch_backend)(nets, run_cfg), run_cfg)

    source_u8, driving_u8 = ref["source_u8"].numpy(), ref["driving_u8"].numpy()
    noise = Noise(aug=ref["noise_aug_noise"], initial=ref["initial_noise"])
    record: dict[str, torch.Tensor] = {}
    source = stages.source.prepare(source_u8)
    for _ in ExactRun(stages, run_cfg, source, iter(driving_u8), noise, record=record).frames():
        pass

    # Conditioning and schedule tensors the run used, recomputed with the same functions.
    reference = conditioning.reference_image_u8(source_u8)
    norm = model.clip_normalize
    pixels = conditioning.clip_pixels(reference, norm["image_mean"], norm["image_std"])
    with torch.no_grad():
        image = conditioning.pil_like_tensor(reference) * 2.0 - 1.0
        posterior = nets.vae.encode(image + run_cfg.sampler.noise_aug_strength * noise.aug).latent_dist
    schedule = sampling.make_schedule("euler", run_cfg.sampler.steps, run_cfg.sampler.scheduler)
    num_frames = driving_u8.shape[0]
    ours: dict[str, tuple[torch.Tensor, float]] = {
        "reference_pil_u8": (torch.from_numpy(reference), 0.0),
        "clip_pixel_values": (pixels, MODULE_TOL),
        "vae_latent_logvar": (posterior.logvar, MODULE_TOL),
        "sigmas": (schedule.sigmas, MODULE_TOL),
        "timesteps": (schedule.timesteps, MODULE_TOL),
        "init_noise_sigma": (schedule.init_noise_sigma, MODULE_TOL),
        "initial_latents": (noise.initial_latents(range(num_frames), schedule)[None], MODULE_TOL),
        "image_embeddings_cfg": (record["image_embeddings_cfg"], MODULE_TOL),
        "image_latents_cfg": (record["image_latents_cfg"], MODULE_TOL),
        "added_time_ids": (record["added_time_ids"], 0.0),
        "clip_image_embeds": (record["clip_image_embeds"], MODULE_TOL),
        "vae_latent_mean": (record["vae_latent_mean"], MODULE_TOL),
        "decoder_input": (1 / nets.vae.config.scaling_factor * record["final_latents"][0], PIPELINE_TOL),
    }
    for name, tensor in record.items():
        if name not in ours:
            ours[name] = (tensor, PIPELINE_TOL)
    checks = []
    for name, ref_t in ref.items():
        if name in INPUTS:
            continue
        if name not in ours:
            checks.append(TensorCheck(name, torch.full((1,), float("nan")), ref_t, PIPELINE_TOL))
            continue
        tensor, tol = ours[name]
        checks.append(
            TensorCheck(
                name,
                tensor.detach().reshape(ref_t.shape).to(ref_t.dtype) if tensor.numel() == ref_t.numel() else tensor,
                ref_t,
                tol,
            )
        )
    return checks
