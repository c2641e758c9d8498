"""What of the driving motion reaches the source, and how smoothly: smoothing and motion controls.

Both act on LivePortrait keypoint parameters, before the warp and the diffusion, so they cost
almost nothing per frame.

The controls themselves (``MotionControls``) are configuration: ``engine.config.controls``.

* ``MotionSmoother``: a causal constant-velocity Kalman filter over the driving frame's pose angles,
  translation, expression and scale. Output for frame t depends on frames <= t only, so a stream's
  look-ahead does not change. One ``smooth`` strength in [0, 1] sets the ratio of measurement to
  process noise; the filter's gains depend only on that ratio, so one number fits degrees and
  expression offsets alike. 0 is off (the frame passes through untouched).
* ``controlled_motion``: the release's relative motion (``keypoints.relative_motion``) with its two
  relative terms scaled: head pose (rotation as an axis-angle power of R_d R_d0^T, translation and
  zoom) by ``pose_scale`` and expression by ``expression_scale``; ``lock_pose`` / ``lock_expression``
  are scale 0; the eye and lip keypoints (LivePortrait's indices, ``EYE_KEYPOINTS`` /
  ``LIP_KEYPOINTS``) can keep the source's expression.

``MotionControls()`` (the defaults) is the identity: the motion stage then runs the release's own
functions, bit for bit. See docs/controls.md.
"""

from __future__ import annotations

from dataclasses import fields, replace

import torch

from engine.config.controls import EYE_KEYPOINTS, LIP_KEYPOINTS, SMOOTHED, MotionControls
from engine.models.liveportrait.keypoints import (
    DrivingKeypoints,
    KeypointInfo,
    compose_keypoints,
    relative_motion,
    rotation_matrix,
)

# ------------------------------------------------------------------------------------ smoothing


def kalman_ratio(strength: float) -> float:
    """Smoothing strength in (0, 1] -> measurement / process noise variance ratio (10^(6 s), per frame^4)."""
    return 10.0 ** (6.0 * strength)


class MotionSmoother:
    """Causal constant-velocity Kalman filter over each scalar of the driving keypoint parameters.

    Every scalar has state (value, velocity); all share one 2x2 covariance (same model, same noise),
    so a step is a few tensor operations on the whole frame. The first frame passes unchanged (the
    relative motion's anchor stays the driving frame's own). State is two tensors per parameter,
    whatever the stream's length.
    """

    def __init__(self, strength: float = 0.0) -> None:
        self.strength = strength
        self.state: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
        self.cov = torch.zeros(2, 2, dtype=torch.float64)

    def set_strength(self, strength: float) -> None:
        if strength == 0.0:
            self.state = None  # off: the next time it is on, it starts from that frame
        self.strength = strength

    def __call__(self, info: KeypointInfo) -> KeypointInfo:
        """Frames in order (batch F, one or several); returns them filtered, the same shapes."""
        if self.strength == 0.0:
            return info
        out = [self._step(info[i]) for i in range(info.batch_size)]
        return KeypointInfo(**{f.name: torch.cat([getattr(o, f.name) for o in out]) for f in fields(KeypointInfo)})

    def _step(self, frame: KeypointInfo) -> KeypointInfo:
        if self.state is None:
            self.state = {k: (getattr(frame, k).clone(), torch.zeros_like(getattr(frame, k))) for k in SMOOTHED}
            r = 1.0
            self.cov = torch.tensor([[r, 0.0], [0.0, r]], dtype=torch.float64)  # measurement-noise units
            return frame
        # 1. predict with constant velocity: x += v; P = F P F^T + Q (Q: white acceleration noise, q = 1/ratio)
        q = 1.0 / kalman_ratio(self.strength)
        f = torch.tensor([[1.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
        noise = q * torch.tensor([[0.25, 0.5], [0.5, 1.0]], dtype=torch.float64)
        p = f @ self.cov @ f.T + noise
        # 2. update with the measurement (variance 1): gain k = P H^T / (H P H^T + 1), H = [1, 0]
        gain = p[:, 0] / (p[0, 0] + 1.0)
        self.cov = p - gain[:, None] * p[0:1, :]
        k_x, k_v = float(gain[0]), float(gain[1])
        values = {}
        for name, (x, v) in self.state.items():
            x_pred = x + v
            residual = getattr(frame, name) - x_pred
            x_new, v_new = x_pred + k_x * residual, v + k_v * residual
            self.state[name] = (x_new, v_new)
            values[name] = x_new
        return replace(frame, **values)


# ------------------------------------------------------------------------------------- controls


def rotation_power(rotation: torch.Tensor, power: float) -> torch.Tensor:
    """R^power for rotation matrices [B, 3, 3]: the same axis, the angle times ``power`` (Rodrigues)."""
    if power == 1.0:
        return rotation
    eye = torch.eye(3, dtype=rotation.dtype, device=rotation.device).expand_as(rotation)
    if power == 0.0:
        return eye.clone()
    cos = ((rotation.diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2).clamp(-1.0, 1.0)
    angle = torch.acos(cos)  # [B], in [0, pi]
    skew = (rotation - rotation.transpose(1, 2)) / 2  # sin(angle) * K
    sin = torch.sin(angle)
    small = sin.abs() < 1e-6
    k = skew / torch.where(small, torch.ones_like(sin), sin)[:, None, None]  # unit-axis cross matrix
    a = (angle * power)[:, None, None]
    rotated = eye + torch.sin(a) * k + (1 - torch.cos(a)) * (k @ k)
    # near 0 the axis is ill-defined: R ~ I + sin(angle) K, so I + power * skew is the first-order power
    return torch.where(small[:, None, None], eye + power * skew, rotated)


def controlled_motion(source: KeypointInfo, source_rotation: torch.Tensor, driving: KeypointInfo,
                      driving_rotation: torch.Tensor, first: KeypointInfo, first_rotation: torch.Tensor,
                      controls: MotionControls) -> DrivingKeypoints:
    """``relative_motion`` with its relative terms scaled (the defaults call it unchanged).

    R = (R_d R_d0^T)^p R_s, t = t_s + p (t_d - t_d0) (t_z = 0), scale = s_s (s_d / s_d0)^p,
    delta = exp_s + e (exp_d - exp_d0), with the eye/lip rows set to exp_s when taken from the source.
    """
    if not controls.changes_motion:
        return relative_motion(source, source_rotation, driving, driving_rotation, first, first_rotation)
    p, e = controls.effective_pose_scale, controls.effective_expression_scale
    rot = rotation_power(driving_rotation @ first_rotation.transpose(1, 2), p) @ source_rotation
    delta = source.exp + e * (driving.exp - first.exp)
    keep = [*(EYE_KEYPOINTS if controls.eyes == "source" else ()),
            *(LIP_KEYPOINTS if controls.lips == "source" else ())]
    keep = [i for i in keep if i < delta.shape[1]]  # a model with fewer keypoints has no such rows
    if keep:
        delta = delta.clone()
        delta[:, keep] = source.exp[:, keep].expand(delta.shape[0], -1, -1)
    scale = source.scale * (driving.scale / first.scale) ** p
    t = source.t + p * (driving.t - first.t)
    t = torch.cat([t[:, :2], torch.zeros_like(t[:, 2:])], dim=1)
    n = driving.batch_size
    rot, delta, scale, t = (v.expand(n, *v.shape[1:]) for v in (rot, delta, scale, t))
    return DrivingKeypoints(rot, delta, scale, t, compose_keypoints(source.kp, rot, delta, scale, t))


def smoothed_rotation(info: KeypointInfo) -> torch.Tensor:
    """The rotation of (smoothed) pose angles."""
    return rotation_matrix(info.pitch, info.yaw, info.roll)
