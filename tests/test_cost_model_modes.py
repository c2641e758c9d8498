"""The cost model per mode (benchmarks/count_flops.py) against reality: FlopCounterMode counting a
real tiny run in that mode must give the FLOPs the model predicts, within 1 %."""

from __future__ import annotations

import numpy as np
import pytest
from test_count_flops import cf
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from engine.api import Reenactor, RunOptions
from engine.config import modes
from engine.runtime import ExactRun

FRAMES = 16  # two windows at overlap 2..6: the blend and the window count matter


@pytest.fixture(scope="module")
def engine() -> Reenactor:
    return Reenactor.from_preset("tiny")


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    gen = np.random.default_rng(0)
    return gen.integers(0, 256, (FRAMES, 128, 128, 3), dtype=np.uint8)


@pytest.mark.parametrize("options", [
    RunOptions(steps=2),
    RunOptions(mode="turbo"),
    RunOptions(mode="fast", sampler="heun", steps=2, overlap=4, kv_downsample=2),
], ids=["exact-2-steps", "turbo", "fast-heun-kv2"])
def test_predicted_flops_equal_counted_flops(engine: Reenactor, clip: np.ndarray, options: RunOptions) -> None:
    image = np.full((128, 128, 3), 128, np.uint8)
    image[32:96, 40:88] = 200
    cfg = engine.run_config(options)
    counter = FlopCounterMode(display=False)
    # on CPU, SDPA's fused kernel has no FLOP formula: its math form (two bmm) is counted instead.
    # The run is driven on this thread (render() prefetches on another, which the counter cannot see).
    with sdpa_kernel(SDPBackend.MATH), counter:
        engine._sources.clear()
        source = engine.set_source(image)
        run = ExactRun(engine.stages, cfg, source.features, iter(clip), engine._noise(cfg))
        frames = list(run.frames())
    assert len(frames) == FRAMES
    counted = counter.get_total_flops()
    knobs = modes.resolve(options.mode, **options.knobs())
    predicted = cf.cost_model("tiny", FRAMES, 128, knobs=knobs)["per_video"]
    assert predicted == pytest.approx(counted, rel=0.01), (predicted, counted)


def test_named_modes_meet_their_budgets_at_512() -> None:
    """fast <= 56, turbo <= 18, ultra <= 3.3 (a 4090's real-time budget) TFLOP per output frame at 512^2,
    100 frames (counted on meta), offline and streaming."""
    per_frame = {m: cf.cost_model("official", 100, 512, knobs=modes.MODES[m])["per_frame"] / 1e12
                 for m in ("fast", "turbo", "ultra")}
    per_frame["ultra stream"] = cf.cost_model("official", 100, 512, knobs=modes.MODES["ultra"],
                                              stream=True)["per_frame"] / 1e12
    assert per_frame["fast"] <= 56 and per_frame["turbo"] <= 18, per_frame
    assert per_frame["ultra"] <= 3.3 and per_frame["ultra stream"] <= 3.3, per_frame


def test_stream_windows_are_counted_from_the_causal_plan() -> None:
    assert cf.window_count(100, 14, 6, stream=False) == 12
    assert cf.window_count(14, 14, 6, stream=True) == 1
    assert cf.window_count(30, 14, 6, stream=True) == 3  # frames 0-13, then 8 new per window
