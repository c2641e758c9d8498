"""Fixture ``wfm_unet``: HeadNet + WarpingFeatureMapper + the release's UNet (residual quirk) for one window.

Everything is rebuilt from ``wfm_unet_config.json`` and the three weight files (loaded strictly); the calls
are those listed in the fixture README (section 2).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from engine.fixture_kinds import TensorCheck, read_config, read_tensors
from engine.models.head_net import HeadNet
from engine.models.unet import SVDUNet, SVDUNetConfig
from engine.models.wfm import WarpingFeatureMapper

KIND = "wfm_unet"
TOL = 1e-5


def build_models(
    fixture_dir: Path, time_context: str = "release", cfg_group: int = 2
) -> tuple[HeadNet, WarpingFeatureMapper, SVDUNet]:
    """The three fixture modules, weights loaded strictly, in eval mode."""
    config = read_config(fixture_dir, KIND)
    unet = SVDUNet(
        SVDUNetConfig.from_dict(config["unet_config"]), time_context=time_context, cfg_group=cfg_group
    )
    unet.load_state_dict(read_tensors(fixture_dir, f"{KIND}_unet.safetensors"), strict=True)
    wfm = WarpingFeatureMapper.from_unet(unet)
    wfm.load_state_dict(read_tensors(fixture_dir, f"{KIND}_warping_feature_mapper.safetensors"), strict=True)
    head = HeadNet.from_state_dict(read_tensors(fixture_dir, f"{KIND}_head_embedder.safetensors"))
    return head.eval(), wfm.eval(), unet.eval()


def _capture_inputs(modules: dict[str, torch.nn.Module]) -> tuple[dict[str, torch.Tensor], list]:
    """Record the (first positional) input of each module on its next call."""
    seen: dict[str, torch.Tensor] = {}
    handles = [
        module.register_forward_pre_hook(lambda _m, args, name=name: seen.__setitem__(name, args[0]))
        for name, module in modules.items()
    ]
    return seen, handles


@torch.no_grad()
def reproduce(fixture_dir: Path, time_context: str = "release") -> list[TensorCheck]:
    fixture_dir = Path(fixture_dir)
    io = read_tensors(fixture_dir, f"{KIND}_io.safetensors")
    head, wfm, unet = build_models(fixture_dir, time_context)
    sample, timestep = io["latent_model_input"], io["timestep"]
    context, time_ids = io["encoder_hidden_states"], io["added_time_ids"]

    # 1. head latents; the uncond half of the CFG batch gets zeros
    head_latents = head(io["trunk_features"])
    head_latents_cfg = torch.cat([torch.zeros_like(head_latents), head_latents])

    # 2. WFM; the raw skips (laterals) and the mid output are the inputs of the zero-convs
    probes = {f"wfm_lateral_{i:02d}": conv for i, conv in enumerate(wfm.warping_feature_mapper_down_blocks)}
    probes["wfm_mid_sample"] = wfm.warping_feature_mapper_mid_block
    seen, handles = _capture_inputs(probes)
    down, mid, infofill = wfm(sample, timestep, context, time_ids, head_latents=head_latents_cfg)
    for handle in handles:
        handle.remove()

    # 3. UNet with the residuals (release quirk), and the plain UNet
    unet_ref_out = unet(sample, timestep, context, time_ids, down, mid)
    unet_plain_out = unet(sample, timestep, context, time_ids)

    ours = {
        "head_latents": head_latents,
        **{f"wfm_down_res_{i:02d}": res for i, res in enumerate(down)},
        **seen,
        "wfm_mid_res": mid,
        "wfm_infofill": infofill,
        "unet_ref_out": unet_ref_out,
        "noise_pred_window": unet_ref_out + infofill,
        "unet_plain_out": unet_plain_out,
    }
    recorded = re.compile(r"head_latents|wfm_.*|unet_ref_out|noise_pred_window|unet_plain_out")
    missing = [name for name in io if recorded.fullmatch(name) and name not in ours]
    if missing:
        raise KeyError(f"{KIND}: recorded tensors we do not produce: {missing}")
    return [TensorCheck(name, ours[name], io[name], TOL) for name in io if name in ours]
