"""Graph specs as data: shapes, dims, profiles, names, fingerprints - no export, no weights."""

from __future__ import annotations

import pytest
import torch

from engine.config import presets
from engine.graphs.modules import GRAPH_NAMES, GraphOptions, build_specs
from engine.graphs.spec import Dim, TensorSpec, parse_dim


@pytest.fixture(scope="module")
def tiny_specs():
    return build_specs(presets.tiny(), GraphOptions(image_size=128))


def test_dim_expressions_parse() -> None:
    assert parse_dim(16) == (16, None)
    assert parse_dim("frames") == (1, "frames")
    assert parse_dim("2*windows") == (2, "windows")
    with pytest.raises(ValueError):
        parse_dim("windows*2")
    with pytest.raises(ValueError):
        Dim("x", 3, 2, 4)


def test_every_graph_has_a_spec_with_named_io(tiny_specs) -> None:
    assert tuple(tiny_specs) == GRAPH_NAMES
    assert tiny_specs["motion"].output_names == ["pitch", "yaw", "roll", "t", "exp", "scale", "kp"]
    assert tiny_specs["denoiser"].output_names == ["unet_out", "infofill"]
    assert tiny_specs["warp"].input_names == ["feature_volume", "kp_source", "kp_driving"]
    for spec in tiny_specs.values():
        assert len(set(spec.input_names)) == len(spec.inputs) and spec.opset >= 18
        assert spec.slots, spec.name


def test_denoiser_batch_is_two_cfg_halves_per_window(tiny_specs) -> None:
    spec = tiny_specs["denoiser"]
    profile = spec.profile()
    lo, opt, hi = profile["sample"]
    assert (lo[0], opt[0], hi[0]) == (2, 2, 8)  # windows 1 / 1 / 4
    assert profile["timestep"] == ((2,), (2,), (8,))  # one timestep per row: windows may differ in sigma
    assert spec.solve_dims({"sample": (6, 14, 8, 16, 16), "timestep": (6,), "encoder_hidden_states": (6, 1, 32),
                            "added_time_ids": (6, 3), "head_latents": (6, 14, 32, 16, 16)}) == {"windows": 3}
    with pytest.raises(ValueError, match="inconsistent"):  # an odd batch is not a set of CFG pairs
        spec.solve_dims({"sample": (3, 14, 8, 16, 16), "timestep": (3,), "encoder_hidden_states": (3, 1, 32),
                         "added_time_ids": (3, 3), "head_latents": (3, 14, 32, 16, 16)})
    with pytest.raises(ValueError, match="outside the built range"):
        spec.solve_dims({n: s for n, s in spec.input_shapes({"windows": 5}).items()})
    dyn = spec.dynamic_shapes()
    assert set(dyn) == set(spec.input_names)
    assert all(list(dyn[n]) == [0] for n in spec.input_names)
    assert spec.dim_values("export") == {"windows": 2}  # traced at >= 2: torch.export specialises 1


def test_static_frames_for_the_decomposed_warp() -> None:
    spec = build_specs(presets.tiny(), GraphOptions(image_size=128, grid_sample="decomposed"))["warp"]
    assert spec.dim("frames").min == spec.dim("frames").max == 16
    assert spec.onnx_shape(spec.inputs[2]) == [16, 21, 3]
    assert spec.dynamic_shapes()["kp_driving"] == {}


def test_official_sample_shapes_need_no_weights() -> None:
    specs = build_specs(presets.official(), GraphOptions(image_size=512))
    x = specs["denoiser"].sample_inputs("min")
    assert x["sample"].shape == (2, 14, 8, 64, 64) and x["head_latents"].shape == (2, 14, 320, 64, 64)
    assert x["encoder_hidden_states"].shape == (2, 1, 1024)
    assert torch.all(x["encoder_hidden_states"][0] == 0)  # the uncond half of the CFG pair is zeros
    assert specs["appearance"].output_shapes({}) == {"feature_volume": (1, 32, 16, 64, 64)}
    assert specs["warp"].output_shapes({"frames": 16})["trunk"] == (16, 512, 64, 64)
    assert specs["image_encoder"].output_shapes({}) == {"image_embeds": (1, 1024)}
    assert specs["vae_decoder"].input_shapes({"frames": 1}) == {"latents": (1, 4, 64, 64)}


def test_fingerprint_follows_what_shapes_the_graph() -> None:
    base = build_specs(presets.tiny(), GraphOptions(image_size=128))
    other_size = build_specs(presets.tiny(), GraphOptions(image_size=256))
    fixed = build_specs(presets.tiny(), GraphOptions(image_size=128, time_context="fixed"))
    assert base["denoiser"].fingerprint() != fixed["denoiser"].fingerprint()
    assert base["warp"].fingerprint() == fixed["warp"].fingerprint()  # no temporal attention there
    assert base["vae_decoder"].fingerprint() != other_size["vae_decoder"].fingerprint()
    assert base["appearance"].fingerprint() == other_size["appearance"].fingerprint()  # always 256^2


def test_tensor_spec_concrete() -> None:
    t = TensorSpec("x", ("2*windows", 14, "c"))
    assert t.concrete({"windows": 3, "c": 5}) == (6, 14, 5)
    assert t.symbolic() == ["2*windows", 14, "c"]
