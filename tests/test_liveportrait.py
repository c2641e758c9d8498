"""LivePortrait motion branch: fixture parity, release key maps, batching, strict loading, keypoint maths."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from engine.fixtures import read_config, read_tensors
from engine.fixtures.liveportrait import build_networks_for, fixture_inputs, fixture_model, reproduce, run_motion
from engine.models.liveportrait import (
    AppearanceFeatureExtractor,
    MotionBranch,
    MotionExtractor,
    SPADETrunk,
    WarpingNetwork,
)
from engine.models.liveportrait import keypoints as motion

MANIFEST_MODULES = {
    "appearance_feature_extractor.pth": (AppearanceFeatureExtractor, "appearance_feature_extractor_params"),
    "motion_extractor.pth": (MotionExtractor, "motion_extractor_params"),
    "warping_module.pth": (WarpingNetwork, "warping_module_params"),
    "spade_generator.pth": (SPADETrunk, "spade_generator_params"),
}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


@pytest.fixture(scope="module")
def motion_run(fixtures_dir: Path):
    """The production motion stages over the fixture's networks: run(source, driving, **options)."""
    nets, model = build_networks_for(fixtures_dir), fixture_model(fixtures_dir)
    return lambda source, driving, **kw: run_motion(nets, model, source, driving, **kw)


@pytest.fixture(scope="module")
def inputs(fixtures_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    return fixture_inputs(read_tensors(fixtures_dir, "liveportrait_io.safetensors"))


@pytest.fixture(scope="module")
def manifests(fixtures_dir: Path) -> dict:
    return json.loads((fixtures_dir / "key_manifests.json").read_text())


# ---------------------------------------------------------------- fixture parity


@pytest.mark.slow
def test_fixture_checks_pass(fixtures_dir: Path) -> None:
    checks = reproduce(fixtures_dir)
    io_names = {n for n, t in read_tensors(fixtures_dir, "liveportrait_io.safetensors").items()
                if t.is_floating_point()}
    assert {c.name for c in checks} == io_names
    worst = sorted(checks, key=lambda c: c.error, reverse=True)
    report = ", ".join(f"{c.name}={c.error:.2e}/{c.tol:.0e}" for c in worst[:8])
    failed = [c.name for c in checks if not c.passed]
    assert not failed, f"failed {failed}; worst: {report}"


@pytest.mark.slow
def test_batched_driving_equals_frame_by_frame(motion_run, inputs: tuple) -> None:
    source, driving = inputs[0], inputs[1][:3]
    per_frame = motion_run(source, driving, chunk=1)
    batched = motion_run(source, driving, chunk=2)  # uneven last chunk
    assert batched["out"].shape[0] == driving.shape[0] and batched["out"].shape[-2:] == (64, 64)
    for name, ref in per_frame.items():
        assert batched[name].shape == ref.shape, name
        assert rel_err(batched[name], ref) < 1e-5, name


@pytest.mark.slow
def test_absolute_mode_uses_driving_pose_directly(motion_run, inputs: tuple) -> None:
    source, driving = inputs[0], inputs[1][1:2]
    rec = motion_run(source, driving, relative=False)
    expected = rec["drv_scale"][:, :, None] * (rec["src_kp"] @ rec["drv_R"] + rec["drv_exp"]) + rec["drv_t"][:, None]
    assert torch.allclose(rec["x_d_new"], expected, atol=1e-6)


@pytest.mark.slow
def test_outer_autocast_does_not_reach_the_motion_graphs(motion_run, inputs: tuple) -> None:
    source, driving = inputs[0], inputs[1][:2]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = motion_run(source.half(), driving.half())["out"]  # also: half inputs are upcast
    assert under_autocast.dtype == torch.float32
    # Only the inputs' fp16 rounding differs (fixture pixels are k/255*2-1, not all fp16-exact).
    reference = motion_run(source.half().float(), driving.half().float())["out"]
    assert rel_err(under_autocast, reference) < 1e-6  # bf16 compute would be ~1e-2 off


# ---------------------------------------------------------------- release key maps


@pytest.mark.parametrize("checkpoint", sorted(MANIFEST_MODULES))
def test_full_size_key_maps(manifests: dict, checkpoint: str) -> None:
    cls, params_key = MANIFEST_MODULES[checkpoint]
    expected = manifests["modules"][checkpoint]["state_dict"]
    with torch.device("meta"):
        module = cls(**manifests["models_yaml"][params_key])
    ours = {k: (list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in module.state_dict().items()}
    if isinstance(module, SPADETrunk):
        ours.update({k: (list(s), "float32") for k, s in module.tail_keys().items()})
    assert ours == {k: (v["shape"], v["dtype"]) for k, v in expected.items()}
    params = {k for k, _ in module.named_parameters()}
    for key in module.state_dict():
        assert (key in params) == (expected[key]["kind"] == "parameter"), key
    # Every released key loads strictly (the spade decoder tail is accepted and ignored).
    dtypes = {"float32": torch.float32, "int64": torch.int64}
    state = {k: torch.empty(v["shape"], dtype=dtypes[v["dtype"]], device="meta") for k, v in expected.items()}
    module.load_state_dict(state, strict=True, assign=True)


def test_full_size_motion_branch_builds(manifests: dict) -> None:
    with torch.device("meta"):
        full = MotionBranch(manifests["models_yaml"])
    assert full.trunk_channels == 512
    n_params = {name: sum(p.numel() for p in getattr(full, name).parameters())
                for name in ("appearance_feature_extractor", "motion_extractor", "warping_module")}
    for name, count in n_params.items():
        assert count == manifests["summary"][f"{name}.pth"]["num_parameters"], name


# ---------------------------------------------------------------- strict loading


def _spade_state(fixtures_dir: Path) -> dict[str, torch.Tensor]:
    return dict(read_tensors(fixtures_dir, "liveportrait_spade_generator.safetensors"))


def _spade(fixtures_dir: Path) -> SPADETrunk:
    return SPADETrunk(**read_config(fixtures_dir, "liveportrait")["model_params"]["spade_generator_params"])


def test_spade_accepts_tail_and_ignores_it(fixtures_dir: Path) -> None:
    state = _spade_state(fixtures_dir)
    tail = [k for k in state if k.startswith(("up_0.", "up_1.", "conv_img."))]
    assert tail and set(tail) == set(_spade(fixtures_dir).tail_keys())
    _spade(fixtures_dir).load_state_dict(state, strict=True)
    without_tail = {k: v for k, v in state.items() if k not in tail}
    _spade(fixtures_dir).load_state_dict(without_tail, strict=True)


@pytest.mark.parametrize("mutation", ["extra", "extra_under_tail", "missing", "tail_shape", "trunk_shape"])
def test_spade_bad_keys_raise(fixtures_dir: Path, mutation: str) -> None:
    state = _spade_state(fixtures_dir)
    if mutation == "extra":
        state["G_middle_6.conv_0.bias"] = torch.zeros(16)
    elif mutation == "extra_under_tail":
        state["up_0.conv_0.weight"] = torch.zeros(8, 16, 3, 3)
    elif mutation == "missing":
        del state["G_middle_3.conv_1.weight_u"]
    elif mutation == "tail_shape":
        state["up_1.conv_0.bias"] = torch.zeros(9)
    else:
        state["fc.bias"] = torch.zeros(17)
    with pytest.raises(RuntimeError):
        _spade(fixtures_dir).load_state_dict(state, strict=True)


def test_motion_branch_bad_key_raises(fixtures_dir: Path) -> None:
    branch = MotionBranch(read_config(fixtures_dir, "liveportrait")["model_params"])
    names = ("appearance_feature_extractor", "motion_extractor", "warping_module", "spade_generator")
    states = {n: dict(read_tensors(fixtures_dir, f"liveportrait_{n}.safetensors")) for n in names}
    states["warping_module"]["dense_motion_network.extra.weight"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        branch.load_weights(states)
    del states["warping_module"]["dense_motion_network.extra.weight"]
    del states["motion_extractor"]["detector.fc_t.bias"]
    with pytest.raises(RuntimeError, match="Missing key"):
        branch.load_weights(states)


def test_unknown_backbone_raises() -> None:
    with pytest.raises(ValueError, match="backbone"):
        MotionExtractor(backbone="convnextv2_huge")


def test_branch_stays_float32_under_parent_casts(fixtures_dir: Path) -> None:
    branch = MotionBranch(read_config(fixtures_dir, "liveportrait")["model_params"])
    parent = nn.Sequential(branch, nn.Linear(2, 2))
    parent.half()
    assert parent[1].weight.dtype == torch.float16
    assert all(p.dtype == torch.float32 for p in branch.parameters())
    parent.to(dtype=torch.bfloat16)
    assert all(t.dtype == torch.float32 for t in branch.state_dict().values() if t.is_floating_point())


# ---------------------------------------------------------------- keypoint maths


def _random_info(batch: int, num_kp: int = 21, seed: int = 0) -> motion.KeypointInfo:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)
    return motion.KeypointInfo(pitch=20 * r(batch, 1), yaw=20 * r(batch, 1), roll=20 * r(batch, 1),
                               t=0.1 * r(batch, 3), exp=0.03 * r(batch, num_kp, 3),
                               scale=1.5 + 0.05 * r(batch, 1), kp=0.5 * r(batch, num_kp, 3))


def test_headpose_degrees() -> None:
    uniform = torch.zeros(2, 66)
    assert torch.allclose(motion.headpose_degrees(uniform), torch.zeros(2, 1), atol=1e-4)
    peaked = torch.full((3, 66), -1e4)
    for row, k in enumerate((0, 10, 65)):
        peaked[row, k] = 0.0
    expected = torch.tensor([[-97.5], [-67.5], [97.5]])
    assert torch.equal(motion.headpose_degrees(peaked), expected)


def test_rotation_is_orthonormal_and_follows_release_convention() -> None:
    info = _random_info(8)
    rot = motion.rotation_matrix(info.pitch, info.yaw, info.roll)
    eye = torch.eye(3).expand(8, 3, 3)
    assert torch.allclose(rot @ rot.transpose(1, 2), eye, atol=1e-6)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(8), atol=1e-6)
    # Pitch only: R = Rx^T, so the row vector (0, 1, 0) maps to Rx's column 1 = (0, cos, sin).
    a = 30.0
    rot_x = motion.rotation_matrix(torch.tensor([a]), torch.zeros(1), torch.zeros(1))[0]
    c, s = math.cos(math.radians(a)), math.sin(math.radians(a))
    assert torch.allclose(torch.tensor([0.0, 1.0, 0.0]) @ rot_x, torch.tensor([0.0, c, s]), atol=1e-6)
    # Composition order: (Rz @ Ry @ Rx)^T = Rx^T Ry^T Rz^T.
    parts = [motion.rotation_matrix(*(v if i == j else torch.zeros(8, 1) for j, v in
                                      enumerate((info.pitch, info.yaw, info.roll)))) for i in range(3)]
    assert torch.allclose(rot, parts[0] @ parts[1] @ parts[2], atol=1e-6)


def test_transform_keypoint_ignores_tz() -> None:
    info = _random_info(3)
    x = motion.transform_keypoint(info)
    rot = info.rotation()
    expected = (info.kp @ rot + info.exp) * info.scale[:, :, None]
    expected[..., :2] += info.t[:, None, :2]
    assert torch.equal(x, expected)


def test_relative_motion_with_first_frame_gives_source_keypoints() -> None:
    source, driving = _random_info(1, seed=1), _random_info(5, seed=2)
    r_s, r_d = source.rotation(), driving.rotation()
    x_s = motion.transform_keypoint(source, r_s)
    same = motion.relative_motion(source, r_s, driving[2], r_d[2:3], driving[2], r_d[2:3])
    assert torch.allclose(same.x_d, x_s, atol=1e-6)
    assert same.t[:, 2].abs().max() == 0  # t_z zeroed as in the release


def test_relative_motion_batched_equals_release_per_frame() -> None:
    source, driving = _random_info(1, seed=3), _random_info(6, seed=4)
    r_s, r_d = source.rotation(), driving.rotation()
    batched = motion.relative_motion(source, r_s, driving, r_d, driving[0], r_d[:1])
    for i in range(6):
        d_i, d_0 = driving[i], driving[0]
        r_new = (r_d[i:i + 1] @ r_d[:1].permute(0, 2, 1)) @ r_s
        delta = source.exp + (d_i.exp - d_0.exp)
        scale = source.scale * (d_i.scale / d_0.scale)
        t = source.t + (d_i.t - d_0.t)
        t[..., 2] = 0
        x_d = scale * (source.kp @ r_new + delta) + t  # the release's batch-1 broadcasting
        assert torch.equal(batched.x_d[i:i + 1], x_d)
        assert torch.equal(batched.rotation[i:i + 1], r_new)
        assert torch.equal(batched.scale[i:i + 1], scale)


def test_absolute_motion() -> None:
    source, driving = _random_info(1, seed=5), _random_info(4, seed=6)
    r_d = driving.rotation()
    out = motion.absolute_motion(source, driving, r_d)
    expected = driving.scale[:, :, None] * (source.kp @ r_d + driving.exp) + driving.t[:, None, :]
    assert torch.equal(out.x_d, expected)
    no_tz = motion.absolute_motion(source, driving, r_d, zero_tz=True)
    assert torch.equal(no_tz.x_d[..., :2], expected[..., :2])
    assert torch.allclose(no_tz.x_d[..., 2] + driving.t[:, None, 2], expected[..., 2], atol=1e-6)


def test_keypoint_info_indexing_keeps_batch_dim() -> None:
    info = _random_info(4)
    assert info[1].kp.shape == (1, 21, 3)
    assert info[1:3].batch_size == 2
    assert torch.equal(info[3].pitch, info.pitch[3:4])
