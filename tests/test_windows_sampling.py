from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.config.settings import SVD_XT_SCHEDULER
from engine.diffusion import sampling, windows


def release_windows(num_frames: int, size: int, overlap: int) -> list[list[int]]:
    """The release's expression, verbatim in effect (fails for clips shorter than a window)."""
    idx = [[0, *range(i + 1, min(i + size, num_frames))] for i in range(0, num_frames - size + 1, size - overlap)]
    if idx[-1][-1] < num_frames - 1:
        idx.append([0, *range(num_frames - size + 1, num_frames)])
    return idx


@given(st.integers(14, 200))
@settings(max_examples=60, deadline=None)
def test_windows_equal_release_and_cover_every_frame(num_frames: int) -> None:
    got = windows.window_indices(num_frames, 14, 6)
    assert got == release_windows(num_frames, 14, 6)
    covered = {i for w in got for i in w}
    assert covered == set(range(num_frames))
    assert all(w[0] == 0 and len(w) == 14 and len(set(w)) == 14 for w in got)


@pytest.mark.parametrize("num_frames", [1, 2, 13, 14])
def test_short_clips_get_one_window(num_frames: int) -> None:
    assert windows.window_indices(num_frames) == [list(range(num_frames))]


def test_release_builder_fails_on_short_clips_ours_does_not() -> None:
    with pytest.raises(IndexError):
        release_windows(5, 14, 6)
    assert windows.window_indices(5) == [[0, 1, 2, 3, 4]]


def test_window_weights_match_fixture(fixtures_dir) -> None:
    cfg = json.loads((fixtures_dir / "pipeline_config.json").read_text())
    assert windows.window_weights(14).tolist() == cfg["window_weights"]
    assert windows.window_indices(cfg["call_kwargs"]["num_frames"]) == cfg["windows"]


def test_batches_keep_order() -> None:
    ws = windows.window_indices(40)
    groups = windows.batches(ws, 2)
    assert [w for g in groups for w in g] == ws and all(len(g) <= 2 for g in groups)
    with pytest.raises(ValueError):
        windows.batches(ws, 0)


def test_karras_schedule_matches_fixture_exactly(fixtures_dir) -> None:
    from safetensors.torch import load_file

    ref = load_file(str(fixtures_dir / "pipeline_io.safetensors"))
    s = sampling.karras_schedule(len(ref["timesteps"]), SVD_XT_SCHEDULER)
    assert torch.equal(s.sigmas, ref["sigmas"])
    assert torch.equal(s.timesteps, ref["timesteps"])
    assert torch.equal(s.init_noise_sigma, ref["init_noise_sigma"])


@pytest.mark.parametrize("steps", [1, 3, 25, 30])
def test_karras_schedule_matches_diffusers(steps: int) -> None:
    from diffusers import EulerDiscreteScheduler

    sch = EulerDiscreteScheduler.from_config(SVD_XT_SCHEDULER)
    sch.set_timesteps(steps)
    s = sampling.karras_schedule(steps, SVD_XT_SCHEDULER)
    torch.testing.assert_close(s.sigmas, sch.sigmas.float(), rtol=1e-6, atol=0)
    torch.testing.assert_close(s.timesteps, sch.timesteps.float(), rtol=1e-6, atol=1e-6)


def _v_model(gen: torch.Generator, steps: int, shape: tuple[int, ...]) -> tuple[list[torch.Tensor], object]:
    """Random v-predictions per step and a model_fn that turns them into denoised estimates."""
    vs = [torch.randn(shape, generator=gen) for _ in range(steps)]
    calls = iter(vs)

    def model_fn(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return sampling.v_to_x0(next(calls), x, sigma)

    return vs, model_fn


def test_sample_euler_matches_diffusers_scheduler() -> None:
    from diffusers import EulerDiscreteScheduler

    sch = EulerDiscreteScheduler.from_config(SVD_XT_SCHEDULER)
    sch.set_timesteps(5)
    s = sampling.karras_schedule(5, SVD_XT_SCHEDULER)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 4, 8, 8, generator=gen) * s.init_noise_sigma
    vs, model_fn = _v_model(gen, 5, tuple(x.shape))
    seen: list[torch.Tensor] = []
    ours = sampling.sample_euler(model_fn, x.clone(), s.sigmas, callback=lambda i, xi, sg, d: seen.append(xi))
    for i, t in enumerate(sch.timesteps):
        x = sch.step(vs[i], t, x, return_dict=False)[0]
        torch.testing.assert_close(seen[i], x, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours, x, rtol=1e-5, atol=1e-5)


def test_ddim_schedule_uses_ddim_timesteps_and_ends_clean() -> None:
    from diffusers import DDIMScheduler

    d = DDIMScheduler.from_config(SVD_XT_SCHEDULER)
    d.set_timesteps(30)
    s = sampling.ddim_schedule(30, SVD_XT_SCHEDULER)
    alphas = d.alphas_cumprod[d.timesteps]
    torch.testing.assert_close(s.sigmas[:-1], ((1 - alphas) / alphas).sqrt().float(), rtol=1e-5, atol=0)
    assert s.sigmas[-1] == 0 and torch.all(s.sigmas[:-1] > s.sigmas[1:])


def test_sample_ddim_equals_euler_in_this_parametrisation() -> None:
    gen = torch.Generator().manual_seed(1)
    sigmas = torch.tensor([3.0, 1.5, 0.4, 0.0])
    x = torch.randn(2, 4, 8, generator=gen)
    _, fn_a = _v_model(torch.Generator().manual_seed(2), 3, (2, 4, 8))
    _, fn_b = _v_model(torch.Generator().manual_seed(2), 3, (2, 4, 8))
    torch.testing.assert_close(sampling.sample_ddim(fn_a, x, sigmas), sampling.sample_euler(fn_b, x, sigmas))


def test_unknown_sampler_is_rejected() -> None:
    with pytest.raises(ValueError, match="euler"):
        sampling.make_schedule("lms", 10, SVD_XT_SCHEDULER)
