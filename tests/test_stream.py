"""The causal stream on the tiny preset: causality, emission before the look-ahead runs out,
state that does not grow, clips of any length, and the window plan as a pure function."""

from __future__ import annotations

import numpy as np
import pytest

from engine.api import EngineOptions, Reenactor, RunOptions
from engine.cli.reenact import DEFAULT_DRIVING, DEFAULT_SOURCE
from engine.io import read_video
from engine.runtime.stream import CausalWindows

FAST = RunOptions(steps=1)


@pytest.fixture(scope="module")
def engine() -> Reenactor:
    return Reenactor.from_preset("tiny")


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return read_video(DEFAULT_DRIVING, 128).frames  # 28 real frames


def long_clip(clip: np.ndarray, n: int) -> np.ndarray:
    """A real clip played forwards and backwards until it has ``n`` frames (ping-pong, no jumps)."""
    loop = np.concatenate([clip, clip[::-1]])
    return np.concatenate([loop] * (n // len(loop) + 1))[:n]


def stream_all(engine: Reenactor, frames: np.ndarray) -> list:
    with engine.stream(DEFAULT_SOURCE, FAST) as s:
        out = []
        for frame in frames:
            s.push(frame)
            out += s.ready()
        s.end()
        out += list(s.results())
    return out


# ------------------------------------------------------------------------------- window plan


def test_window_plan_matches_the_release_windows_and_flushes_the_tail() -> None:
    plan = CausalWindows(14, 6)
    assert plan.next_window(13, 0, False) is None  # frame 13 not yet here
    assert plan.next_window(14, 0, False) == list(range(14))
    assert plan.next_window(21, 14, False) is None
    assert plan.next_window(22, 14, False) == [0, *range(9, 22)]  # the release's second window
    assert plan.next_window(25, 22, True) == [0, *range(12, 25)]  # the last window ends at the last frame
    assert plan.next_window(25, 25, True) is None
    assert plan.next_window(5, 0, True) == [0, 1, 2, 3, 4] + [4] * 9  # short clip: padded
    assert plan.next_window(0, 0, True) is None
    assert (plan.lookahead, plan.steady_lookahead) == (13, 7)


# ------------------------------------------------------------------------------------ stream


def test_causality_changes_after_t_plus_lookahead_leave_frames_up_to_t_identical(engine, clip) -> None:
    frames = long_clip(clip, 40)
    changed = frames.copy()
    c = 30  # first changed driving frame
    changed[c:] = 255 - changed[c:]
    a, b = stream_all(engine, frames), stream_all(engine, changed)
    assert [f.index for f in a] == list(range(40)) == [f.index for f in b]
    lookahead = engine.stream(DEFAULT_SOURCE, FAST)
    L = lookahead.lookahead
    lookahead.close()
    t = c - L - 1  # every output frame up to t must be bit-identical
    for fa, fb in zip(a[: t + 1], b[: t + 1], strict=True):
        assert np.array_equal(fa.frame, fb.frame), fa.index
    assert any(not np.array_equal(fa.frame, fb.frame) for fa, fb in zip(a[c:], b[c:], strict=True))


def test_frames_are_emitted_before_the_lookahead_runs_out_and_state_stays_bounded(clip) -> None:
    windows_wanted = (3, 30)
    n = 8 * windows_wanted[1] + 14
    frames = long_clip(clip, n)
    sizes = {}
    # 64 px: 254 frames through the whole stream; the bounds are in frames, not pixels
    with Reenactor.from_preset("tiny", EngineOptions(size=64)) as engine, engine.stream(DEFAULT_SOURCE, FAST) as s:
        got = []
        for j, frame in enumerate(frames):
            s.push(frame)
            # output k must be out before driving frame k + L + 1 is pushed: wait for every k <= j - L
            while len(got) <= j - s.lookahead:
                out = s.get(timeout=120)
                assert out is not None, f"frame {len(got)} not emitted after driving frame {j} was pushed"
                got.append(out)
            if s.windows_done in windows_wanted and s.windows_done not in sizes:
                state = s.state_sizes()
                sizes[s.windows_done] = {k: state[k] for k in ("heads", "known", "pending_times")}
        s.end()
        got += list(s.results())
    assert [f.index for f in got] == list(range(n))
    # the same fixed bounds after 3 and after 30 windows (exact counts depend on how far motion ran ahead):
    # heads: frame 0 + the last size-2 emitted + up to stride received ahead; known: frame 0 + size-2
    bounds = {"heads": 1 + 12 + 8, "known": 1 + 12, "pending_times": 14 + 32}
    for w in windows_wanted:
        assert all(sizes[w][k] <= bounds[k] for k in bounds), sizes
    assert sizes[3]["known"] == sizes[30]["known"] == 13
    assert all(f.frame.shape == (64, 64, 3) and f.latency > 0 for f in got)


@pytest.mark.parametrize("n", [1, 14, 15])
def test_clips_of_any_length(engine, clip, n: int) -> None:
    out = stream_all(engine, long_clip(clip, n))
    assert [f.index for f in out] == list(range(n))


def test_stream_first_window_equals_exact_mode_on_one_window(engine, clip) -> None:
    """With one window there is nothing to pin: the stream computes what exact mode computes."""
    frames = clip[:14]
    streamed = np.stack([f.frame for f in stream_all(engine, frames)])
    exact = engine.render(DEFAULT_SOURCE, frames, options=FAST).frames
    # the stream runs motion one frame per call (exact mode: 16), so allow uint8 truncation flips
    assert np.abs(streamed.astype(int) - exact.astype(int)).max() <= 2
