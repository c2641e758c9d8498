"""Windows batched per denoiser call (engine.config.window_batch): a window's numbers are the same bits
whatever the batch, on the fixture weights at one and two threads; the default batch within its budget."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from engine.config import presets
from engine.config.window_batch import (
    BUDGET_SHARE,
    CPU_WINDOWS,
    GPU_WINDOWS,
    auto_window_batch,
    window_bytes,
)
from engine.fixtures import read_tensors
from engine.fixtures.wfm_unet import build_models


@pytest.fixture(scope="module")
def denoiser(fixtures_dir):
    head, wfm, unet = build_models(fixtures_dir)
    io = read_tensors(fixtures_dir, "wfm_unet_io.safetensors")
    heads = torch.cat([torch.zeros_like(io["head_latents"]), io["head_latents"]])
    window = (io["latent_model_input"], io["timestep"], io["encoder_hidden_states"], io["added_time_ids"], heads)

    @torch.no_grad()
    def call(windows: list[tuple[torch.Tensor, ...]]) -> torch.Tensor:
        x, t, ehs, ids, h = (torch.cat([w[i] for w in windows]) for i in range(5))
        down, mid, infofill = wfm(x, t, ehs, ids, head_latents=h)
        return unet(x, t, ehs, ids, down, mid) + infofill

    return call, window


@pytest.fixture(params=[1, 2], ids=lambda n: f"{n}threads")
def threads(request) -> Iterator[int]:
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def other_window(window: tuple[torch.Tensor, ...], seed: int) -> tuple[torch.Tensor, ...]:
    """Another window at another timestep: its latents, head latents and timestep drawn afresh."""
    g = torch.Generator().manual_seed(seed)
    x, t, ehs, ids, h = window
    timestep = torch.full_like(t.reshape(-1).expand(x.shape[0]), float(seed))
    x = x.clone()
    x[:, :, :4] = torch.randn(x[:, :, :4].shape, generator=g)
    return x, timestep, ehs, ids, h + 0.1 * torch.randn(h.shape, generator=g)


@pytest.mark.parametrize("count", [3, CPU_WINDOWS])
def test_a_window_gets_the_same_bits_in_any_batch(denoiser, threads, count):
    call, window = denoiser
    t = window[1].reshape(-1).expand(window[0].shape[0])  # one timestep per row, as the engine feeds it
    window = (window[0], t, *window[2:])
    alone = call([window])
    others = [other_window(window, seed) for seed in range(1, count)]
    batched = call([others[0], window, *others[1:]])  # not in first place: rows 2-3
    assert torch.equal(batched[2:4], alone)
    # and the other windows are not copies of it (the check would be empty otherwise)
    assert not torch.equal(batched[:2], alone)


def test_default_batch_renders_the_same_frames_as_one_window_per_call() -> None:
    from engine.api import EngineOptions, Reenactor, RunOptions
    from engine.cli.reenact import DEFAULT_DRIVING, DEFAULT_SOURCE
    from engine.io import read_video

    clip = read_video(DEFAULT_DRIVING, 64, max_frames=28).frames  # 3 windows: one call (7 and more: above)
    results = {}
    for batch in (1, None):
        with Reenactor.from_preset("tiny", EngineOptions(size=64, window_batch=batch)) as engine:
            results[engine.cfg.windows.batch] = engine.render(DEFAULT_SOURCE, clip, options=RunOptions(steps=1)).frames
    assert sorted(results) == [1, CPU_WINDOWS]
    assert np.array_equal(results[1], results[CPU_WINDOWS])


def test_the_default_batch_fits_the_budget() -> None:
    tiny, official = presets.from_name("tiny"), presets.from_name("official")
    per_window = window_bytes(official, 512, "float16")
    assert window_bytes(official, 512, "float32") == 2 * per_window
    assert window_bytes(official, 256, "float16") < per_window / 3  # ~ the latent area, a quarter
    # plenty of memory: the caps; the CPU's keeps a call under 16 rows (one convolution kernel)
    assert auto_window_batch(tiny, 128, "float32", "cpu", 1 << 40) == CPU_WINDOWS
    assert 2 * CPU_WINDOWS < 16
    assert auto_window_batch(official, 512, "float16", "cuda", 1 << 40) == GPU_WINDOWS
    # otherwise as many as BUDGET_SHARE of the free memory holds, never fewer than one
    for windows in (1, 2, 5):
        free = int((windows + 0.5) * per_window / BUDGET_SHARE)
        assert auto_window_batch(official, 512, "float16", "cuda", free) == windows
    assert auto_window_batch(official, 512, "float16", "cuda", 0) == 1


def test_free_memory_on_the_host_is_what_the_kernel_says_is_available() -> None:
    import os

    from engine.runtime.common import free_memory

    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert 0 < free_memory("cpu") <= total
