"""HeadNet + WarpingFeatureMapper + SVD UNet vs the release's recorded fixture (README sections 2, 4, 6)."""

from __future__ import annotations

import json

import pytest
import torch

from engine.fixtures import TensorCheck
from engine.fixtures.wfm_unet import build_models, reproduce
from engine.models.head_net import HeadNet
from engine.models.time_context import temporal_context
from engine.models.unet import SVDUNet, SVDUNetConfig
from engine.models.wfm import WarpingFeatureMapper

UNET_MANIFEST = "svd_xt_unet (unet/diffusion_pytorch_model.safetensors)"


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return TensorCheck("", ours, ref, 0.0).error


@pytest.fixture(scope="module")
def io(fixtures_dir):
    from engine.fixtures import read_tensors

    return read_tensors(fixtures_dir, "wfm_unet_io.safetensors")


@pytest.fixture(scope="module")
def models(fixtures_dir):
    return build_models(fixtures_dir)


@pytest.fixture(scope="module")
def wfm_outputs(models, io):
    head, wfm, _ = models
    head_latents = head(io["trunk_features"])
    with torch.no_grad():
        return wfm(
            io["latent_model_input"],
            io["timestep"],
            io["encoder_hidden_states"],
            io["added_time_ids"],
            head_latents=torch.cat([torch.zeros_like(head_latents), head_latents]),
        )


def run_unet(unet: SVDUNet, io: dict, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return unet(
            io["latent_model_input"],
            io["timestep"],
            io["encoder_hidden_states"],
            io["added_time_ids"],
            **kwargs,
        )


# --- fixture parity ---------------------------------------------------------------------------------------


def test_every_recorded_tensor_matches(fixtures_dir):
    checks = reproduce(fixtures_dir)
    names = {c.name for c in checks}
    expected = {
        "head_latents",
        "wfm_mid_sample",
        "wfm_mid_res",
        "wfm_infofill",
        "unet_ref_out",
        "noise_pred_window",
        "unet_plain_out",
        "wfm_lateral_05",
        "wfm_lateral_08",
    }
    expected |= {f"wfm_down_res_{i:02d}" for i in range(12)}
    assert expected <= names
    failed = {c.name: c.error for c in checks if not c.passed}
    assert not failed, failed


def test_from_unet_copies_like_the_release(models):
    unet = models[2]
    fresh = WarpingFeatureMapper.from_unet(unet)
    source = unet.state_dict()
    for key, value in fresh.state_dict().items():
        if ".proj_residual." in key or key.startswith(("warping_feature_mapper_", "fusion_proj")):
            assert not value.any(), key
        elif "fullattentions" in key:
            assert torch.equal(value, source[key.replace("fullattentions", "attentions")]), key
        elif not key.startswith("fusion_block"):
            assert torch.equal(value, source[key]), key


# --- residual injection quirk -----------------------------------------------------------------------------


def test_residual_quirk_differs_from_adding_once(models, io, wfm_outputs):
    unet = models[2]
    down, mid, _ = wfm_outputs
    quirk = run_unet(unet, io, down_block_additional_residuals=down, mid_block_additional_residual=mid)
    unet.residual_injection = "once"
    try:
        once = run_unet(unet, io, down_block_additional_residuals=down, mid_block_additional_residual=mid)
        # the quirk == adding residual i multiplicity[i] times once
        mult = [4, 4, 4, 4, 3, 3, 3, 2, 2, 2, 1, 1]
        scaled = tuple(r * m for r, m in zip(down, mult))
        once_scaled = run_unet(
            unet, io, down_block_additional_residuals=scaled, mid_block_additional_residual=mid
        )
    finally:
        unet.residual_injection = "release"
    assert rel_err(quirk, io["unet_ref_out"]) < 1e-5
    assert rel_err(once, io["unet_ref_out"]) > 1e-2
    assert rel_err(once_scaled, quirk) < 1e-5


def test_zero_residuals_equal_plain_unet(models, io, wfm_outputs):
    unet = models[2]
    down, mid, _ = wfm_outputs
    plain = run_unet(unet, io)
    zeros = run_unet(
        unet,
        io,
        down_block_additional_residuals=tuple(torch.zeros_like(r) for r in down),
        mid_block_additional_residual=torch.zeros_like(mid),
    )
    assert torch.equal(plain, zeros)
    assert rel_err(plain, io["unet_plain_out"]) < 1e-5


# --- temporal cross-attention context layout --------------------------------------------------------------


def test_temporal_context_rows():
    batch, frames, pixels = 4, 3, 5
    ids = torch.arange(batch, dtype=torch.float32)
    context = ids.repeat_interleave(frames)[:, None, None]  # [B*F, 1, 1], value = video index
    release = temporal_context(context, frames, pixels, "release", cfg_group=2).flatten()
    fixed = temporal_context(context, frames, pixels, "fixed").flatten()
    rows = torch.arange(batch * pixels)
    video = rows // pixels
    assert torch.equal(fixed, video.float())
    # inside each group of 2 videos, group-local row r sees member r mod 2
    assert torch.equal(release, ((video // 2) * 2 + (rows % (2 * pixels)) % 2).float())
    # a batch that is not a multiple of cfg_group is one group
    three = temporal_context(context[: 3 * frames], frames, pixels, "release", cfg_group=2)
    assert torch.equal(three, temporal_context(context[: 3 * frames], frames, pixels, "release", cfg_group=3))
    with pytest.raises(ValueError):
        temporal_context(context, frames, pixels, "0.42")


def second_window(io: dict) -> dict:
    """A different CFG pair: other noisy latents and another CLIP embedding (uncond still zeros)."""
    gen = torch.Generator().manual_seed(1)
    sample = io["latent_model_input"].clone()
    sample[:, :, :4] = torch.randn(sample[:, :, :4].shape, generator=gen)
    context = io["encoder_hidden_states"].clone()
    context[1] = torch.randn(context[1].shape, generator=gen)
    return {**io, "latent_model_input": sample, "encoder_hidden_states": context}


def batched(*ios: dict) -> dict:
    keys = ("latent_model_input", "encoder_hidden_states", "added_time_ids")
    return {"timestep": ios[0]["timestep"], **{k: torch.cat([x[k] for x in ios]) for k in keys}}


def test_release_layout_independent_of_window_batching(models, io):
    unet = models[2]
    io2 = second_window(io)
    pair1, pair2 = run_unet(unet, io), run_unet(unet, io2)
    both = run_unet(unet, batched(io, io2))
    assert rel_err(pair1, io["unet_plain_out"]) < 1e-5
    assert rel_err(both[:2], pair1) < 1e-5
    assert rel_err(both[2:], pair2) < 1e-5
    # 0.27.2's layout applied to the whole batch of 4 would NOT be the release's per-window result
    unet.set_time_context("release", cfg_group=4)
    try:
        naive = run_unet(unet, batched(io, io2))
    finally:
        unet.set_time_context("release", cfg_group=2)
    assert rel_err(naive[:2], pair1) > 1e-2


def test_fixed_layout_equals_each_half_alone(models, io):
    unet = models[2]
    unet.set_time_context("fixed")
    try:
        pair = run_unet(unet, io)
        halves = [
            run_unet(
                unet,
                {
                    **io,
                    **{
                        k: io[k][i : i + 1]
                        for k in ("latent_model_input", "encoder_hidden_states", "added_time_ids")
                    },
                },
            )
            for i in range(2)
        ]
    finally:
        unet.set_time_context("release")
    assert rel_err(pair, torch.cat(halves)) < 1e-5
    # the trap of README section 6: the corrected layout is 0.30 away from the release
    assert rel_err(pair, io["unet_plain_out"]) > 0.1


def test_wfm_release_layout_independent_of_window_batching(models, io, wfm_outputs):
    head, wfm, _ = models
    io2 = second_window(io)
    head_latents = head(io["trunk_features"])
    head_cfg = torch.cat([torch.zeros_like(head_latents), head_latents])
    b = batched(io, io2)
    with torch.no_grad():
        down, mid, infofill = wfm(
            b["latent_model_input"],
            b["timestep"],
            b["encoder_hidden_states"],
            b["added_time_ids"],
            head_latents=torch.cat([head_cfg, head_cfg]),
        )
    rows = head_cfg.shape[0]
    assert rel_err(infofill[:2], io["wfm_infofill"]) < 1e-5
    assert rel_err(mid[:rows], io["wfm_mid_res"]) < 1e-5
    assert rel_err(down[11][:rows], io["wfm_down_res_11"]) < 1e-5
    assert rel_err(infofill[:2], wfm_outputs[2]) < 1e-5


def test_fixed_layout_matches_installed_diffusers(models, io, fixtures_dir):
    diffusers = pytest.importorskip("diffusers")
    if tuple(int(x) for x in diffusers.__version__.split(".")[:2]) < (0, 28):
        pytest.skip("installed diffusers predates the time_context fix (PR #7268)")
    from engine.fixtures import read_config, read_tensors

    ref = diffusers.UNetSpatioTemporalConditionModel(**read_config(fixtures_dir, "wfm_unet")["unet_config"])
    ref.load_state_dict(read_tensors(fixtures_dir, "wfm_unet_unet.safetensors"), strict=True)
    unet = models[2]
    unet.set_time_context("fixed")
    try:
        ours = run_unet(unet, io)
    finally:
        unet.set_time_context("release")
    with torch.no_grad():
        theirs = ref.eval()(
            io["latent_model_input"],
            io["timestep"],
            io["encoder_hidden_states"],
            io["added_time_ids"],
            return_dict=False,
        )[0]
    assert rel_err(ours, theirs) < 1e-5


# --- full-size key manifests ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifests(fixtures_dir):
    return json.loads((fixtures_dir / "key_manifests.json").read_text())["modules"]


def assert_matches_manifest(model: torch.nn.Module, entry: dict) -> None:
    expected = {k: v["shape"] for k, v in entry["state_dict"].items()}
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert sorted(set(ours) ^ set(expected)) == []
    assert ours == expected
    assert sum(p.numel() for p in model.parameters()) == entry["num_parameters"]
    state = {k: torch.empty(shape, device="meta") for k, shape in expected.items()}
    model.load_state_dict(state, strict=True, assign=True)


def svd_xt_config(entry: dict) -> SVDUNetConfig:
    return SVDUNetConfig.from_dict(entry["config"])


def test_svd_xt_unet_manifest(manifests):
    entry = manifests[UNET_MANIFEST]
    with torch.device("meta"):
        unet = SVDUNet(svd_xt_config(entry))
    assert_matches_manifest(unet, entry)


def test_warping_feature_mapper_manifest(manifests):
    entry = manifests["warping_feature_mapper.pth"]
    with torch.device("meta"):
        wfm = WarpingFeatureMapper(svd_xt_config(entry))
    assert_matches_manifest(wfm, entry)


def test_head_embedder_manifest(manifests):
    entry = manifests["head_embedder.pth"]
    with torch.device("meta"):
        head = HeadNet(trunk_channels=512, latent_channels=entry["config"]["noise_latent_channels"])
    assert_matches_manifest(head, entry)
