"""Motion smoothing and motion controls: the maths (closed forms), the motion stage on real frames,
and the stream (causality with smoothing on, controls changed and the source switched between frames)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.api import EngineOptions, Reenactor, RunOptions
from engine.cli.reenact import DEFAULT_DRIVING, DEFAULT_SOURCE
from engine.config.controls import EYE_KEYPOINTS, LIP_KEYPOINTS, MotionControls
from engine.diffusion import conditioning
from engine.errors import InputError
from engine.io import read_video
from engine.models.liveportrait.keypoints import KeypointInfo, rotation_matrix
from engine.models.liveportrait.motion_controls import MotionSmoother, rotation_power

SIZE = 64  # pixels do not matter here: keypoints and frame identity do


@pytest.fixture(scope="module")
def engine() -> Reenactor:
    return Reenactor.from_preset("tiny", EngineOptions(size=SIZE))


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    frames = read_video(DEFAULT_DRIVING, SIZE).frames  # 28 real frames
    loop = np.concatenate([frames, frames[::-1]])
    return np.concatenate([loop, loop])[:40]


# ------------------------------------------------------------------------------------ maths


def test_rotation_power_is_the_angle_times_the_power_about_the_same_axis() -> None:
    r = rotation_matrix(torch.tensor([[20.0], [-5.0], [0.0]]), torch.tensor([[-30.0], [10.0], [0.0]]),
                        torch.tensor([[10.0], [3.0], [0.0]]))
    assert torch.equal(rotation_power(r, 0.0), torch.eye(3).expand(3, 3, 3))
    assert rotation_power(r, 1.0) is r
    half = rotation_power(r, 0.5)
    assert torch.allclose(half @ half, r, atol=1e-5)  # scales compose: (R^a)^b = R^(ab)
    assert torch.allclose(rotation_power(half, 2.0), r, atol=1e-5)
    assert torch.allclose(rotation_power(r, -1.0 + 2.0) @ rotation_power(r, 0.0), r, atol=1e-6)
    angle = torch.acos(((r.diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2).clamp(-1, 1))
    angle2 = torch.acos(((rotation_power(r, 1.5).diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2).clamp(-1, 1))
    assert torch.allclose(angle2[:2], 1.5 * angle[:2], atol=1e-4)  # identity (angle 0) stays identity


def _info(values: torch.Tensor) -> KeypointInfo:
    """A KeypointInfo whose every parameter follows the 1-D signal ``values`` [F]."""
    f = values.shape[0]
    col = values[:, None]
    return KeypointInfo(pitch=col.clone(), yaw=col.clone(), roll=col.clone(), t=col.repeat(1, 3),
                        exp=values[:, None, None].repeat(1, 21, 3), scale=1 + 0.01 * col, kp=torch.zeros(f, 21, 3))


def test_smoother_is_causal_passes_frame_0_and_reduces_jitter_with_little_lag() -> None:
    g = torch.Generator().manual_seed(0)
    n = 400
    clean = 10 * torch.sin(torch.arange(n) * 2 * math.pi / 50)  # a 2 s head turn at 25 fps
    noise = torch.randn(n, generator=g)
    noisy = clean + noise
    out = MotionSmoother(0.5)(_info(noisy)).yaw[:, 0]
    assert out[0] == noisy[0]  # the relative motion's anchor is the driving frame's own
    # a linear filter: what it leaves of the jitter is its output minus its output on the clean signal
    on_clean = MotionSmoother(0.5)(_info(clean)).yaw[:, 0]
    jitter = lambda x: (x[51:] - x[50:-1]).abs().mean().item()  # noqa: E731 - frame-to-frame, converged
    assert jitter(out - on_clean) < 0.25 * jitter(noise)  # measured 0.17
    err = lambda x, lag: (x[100 + lag :] - clean[100 : n - lag]).pow(2).mean().item()  # noqa: E731
    lag = min(range(8), key=lambda k: err(on_clean, k))
    assert lag <= 2, lag  # measured 2 frames on a 2 s oscillation
    changed = noisy.clone()
    changed[200:] += 50  # a change at frame 200 leaves every output before it identical
    again = MotionSmoother(0.5)(_info(changed)).yaw[:, 0]
    assert torch.equal(again[:200], out[:200]) and not torch.equal(again[200:], out[200:])
    assert torch.equal(MotionSmoother(0.0)(_info(noisy)).yaw[:, 0], noisy)  # off: untouched


def test_bad_controls_are_one_clear_error() -> None:
    for bad in ({"expression_scale": -1.0}, {"pose_scale": math.nan}, {"pose_scale": 1e9}, {"smooth": 2.0},
                {"eyes": "left"}, {"lock_pose": "yes"}):
        with pytest.raises(InputError, match=next(iter(bad))):
            MotionControls(**bad).check()
    with pytest.raises(InputError, match="relative motion"):
        MotionControls(lock_pose=True).check(relative=False)
    with pytest.raises(InputError, match="unknown motion control"):
        MotionControls().updated(colour=1)


# ------------------------------------------------------------------------------- motion stage


def _motion(engine: Reenactor, clip: np.ndarray, **controls):
    source = engine.set_source(DEFAULT_SOURCE).features
    stage = engine.stages.motion(source, True, MotionControls(**controls))
    return source.motion, stage.run_pm1(conditioning.to_pm1(clip[:6]))


def test_lock_pose_keeps_the_source_pose_and_expression_scale_0_its_expression(engine, clip) -> None:
    src, free = _motion(engine, clip)
    _, locked = _motion(engine, clip, lock_pose=True)
    kp = locked.keypoints
    assert torch.equal(kp.rotation, src.rotation.expand_as(kp.rotation))  # every frame
    t_s = torch.cat([src.info.t[:, :2], torch.zeros(1, 1)], dim=1)
    assert torch.equal(kp.t, t_s.expand_as(kp.t)) and torch.equal(kp.scale, src.info.scale.expand_as(kp.scale))
    assert torch.equal(kp.delta, free.keypoints.delta)  # the expression still moves
    assert not torch.equal(kp.x_d, free.keypoints.x_d)
    _, still = _motion(engine, clip, expression_scale=0.0)
    assert torch.equal(still.keypoints.delta, src.info.exp.expand_as(still.keypoints.delta))
    assert torch.equal(still.keypoints.rotation, free.keypoints.rotation)  # the pose still moves
    _, both = _motion(engine, clip, lock_expression=True)
    assert torch.equal(both.keypoints.delta, still.keypoints.delta)


def test_scales_compose_and_eyes_lips_come_from_the_source(engine, clip) -> None:
    src, free = _motion(engine, clip)
    _, half_e = _motion(engine, clip, expression_scale=0.5)
    _, half_p = _motion(engine, clip, pose_scale=0.5)
    _, both = _motion(engine, clip, expression_scale=0.5, pose_scale=0.5)
    assert torch.equal(both.keypoints.delta, half_e.keypoints.delta)
    assert torch.equal(both.keypoints.rotation, half_p.keypoints.rotation)
    exp_s = src.info.exp
    assert torch.allclose(half_e.keypoints.delta - exp_s, 0.5 * (free.keypoints.delta - exp_s), atol=1e-6)
    _, double = _motion(engine, clip, pose_scale=2.0)
    h = half_p.keypoints.rotation @ src.rotation.transpose(1, 2)  # (R_d R_d0^T)^0.5
    d = double.keypoints.rotation @ src.rotation.transpose(1, 2)
    assert torch.allclose(h @ h @ h @ h, d, atol=1e-5)  # R^0.5 four times = R^2
    _, eyes = _motion(engine, clip, eyes="source", lips="source")
    rows = list(EYE_KEYPOINTS + LIP_KEYPOINTS)
    other = [i for i in range(exp_s.shape[1]) if i not in rows]
    assert torch.equal(eyes.keypoints.delta[:, rows], exp_s[:, rows].expand(6, -1, -1))
    assert torch.equal(eyes.keypoints.delta[:, other], free.keypoints.delta[:, other])


# ------------------------------------------------------------------------------------- stream

STEPS = RunOptions(steps=1, controls=MotionControls(smooth=0.5))


def _stream(engine: Reenactor, frames: np.ndarray, source=DEFAULT_SOURCE, events=None) -> list:
    events = events or {}
    with engine.stream(source, STEPS) as s:
        out = []
        for i, frame in enumerate(frames):
            if i in events:
                events[i](s)
            s.push(frame)
            out += s.ready()
        s.end()
        out += list(s.results())
        assert s.state_sizes()["segments"] == 1
    assert [f.index for f in out] == list(range(len(frames)))
    return [f.frame for f in out]


@pytest.fixture(scope="module")
def smooth_run(engine, clip) -> list:
    return _stream(engine, clip)


def test_stream_with_smoothing_is_causal(engine, clip, smooth_run) -> None:
    changed = clip.copy()
    c = 30
    changed[c:] = 255 - changed[c:]
    other = _stream(engine, changed)
    with engine.stream(DEFAULT_SOURCE, STEPS) as s:
        lookahead = s.lookahead
    t = c - lookahead - 1
    assert all(np.array_equal(a, b) for a, b in zip(smooth_run[: t + 1], other[: t + 1], strict=True))
    assert any(not np.array_equal(a, b) for a, b in zip(smooth_run[c:], other[c:], strict=True))


def test_source_switch_at_frame_20_and_bad_changes_before_it_change_nothing(engine, clip, media_dir, smooth_run,
                                                                           tmp_path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")

    def poke(s) -> None:  # each bad request is one InputError; the stream goes on unchanged
        with pytest.raises(InputError, match="broken.png"):
            s.switch_source(bad)
        for change in ({"pose_scale": -1.0}, {"expression_scale": math.nan}, {"pose_scale": 1e6}, {"smooth": 7.0}):
            with pytest.raises(InputError, match=next(iter(change))):
                s.set_controls(**change)
        assert s.controls == STEPS.controls

    switch = {10: poke, 20: lambda s: s.switch_source(media_dir / "source2.png")}
    switched = _stream(engine, clip, events=switch)  # 40 frames in order (checked there)
    # before the switch: the frames of the run without it (so the bad requests at 10 changed nothing)
    assert all(np.array_equal(a, b) for a, b in zip(smooth_run[:20], switched[:20], strict=True))
    assert all(not np.array_equal(a, b) for a, b in zip(smooth_run[20:], switched[20:], strict=True))
    third = _stream(engine, clip, events={20: lambda s: s.switch_source(media_dir / "source3.png")})
    assert all(np.array_equal(a, b) for a, b in zip(switched[:20], third[:20], strict=True))
    assert all(not np.array_equal(a, b) for a, b in zip(switched[20:], third[20:], strict=True))  # new source's


def test_controls_change_between_frames(engine, clip, smooth_run) -> None:
    c = 26
    locked = _stream(engine, clip, events={c: lambda s: s.set_controls(lock_pose=True, expression_scale=0.0)})
    with engine.stream(DEFAULT_SOURCE, STEPS) as s:
        lookahead = s.lookahead
    assert all(np.array_equal(a, b) for a, b in zip(smooth_run[: c - lookahead], locked[: c - lookahead],
                                                    strict=True))
    assert any(not np.array_equal(a, b) for a, b in zip(smooth_run[c:], locked[c:], strict=True))
