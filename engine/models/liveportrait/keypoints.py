"""LivePortrait keypoint maths as pure functions on batched tensors.

Conventions (all from the release, see LivePortrait ``utils/camera.py`` and FRVD's
``MotionExtractorEval``): angles in degrees; ``rotation_matrix`` returns (Rz @ Ry @ Rx)^T so
keypoints are row vectors multiplied on the right (``kp @ R``); keypoints are [B, K, 3].

Batching: the release writes ``scale [B,1] * pts [B,K,3] + t [B,3]``, which broadcasts as
intended only for B == 1. Here scale is expanded to [B,1,1] and t to [B,1,3], which gives the
release's numbers for B == 1 and the per-frame values for any B. Source-side arguments may have
batch 1 and are broadcast against F driving frames.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

NUM_POSE_BINS = 66


@dataclass(frozen=True)
class KeypointInfo:
    """Refined motion-extractor output for B images."""

    pitch: torch.Tensor  # [B, 1] degrees
    yaw: torch.Tensor  # [B, 1] degrees
    roll: torch.Tensor  # [B, 1] degrees
    t: torch.Tensor  # [B, 3]
    exp: torch.Tensor  # [B, K, 3] expression offsets
    scale: torch.Tensor  # [B, 1]
    kp: torch.Tensor  # [B, K, 3] canonical keypoints

    def __getitem__(self, index: int | slice) -> KeypointInfo:
        """Batch slice; an int keeps the batch dim (info[0] is batch 1)."""
        sl = slice(index, index + 1) if isinstance(index, int) else index
        return KeypointInfo(**{f.name: getattr(self, f.name)[sl] for f in fields(self)})

    @property
    def batch_size(self) -> int:
        return self.kp.shape[0]

    def rotation(self) -> torch.Tensor:
        return rotation_matrix(self.pitch, self.yaw, self.roll)


@dataclass(frozen=True)
class DrivingKeypoints:
    """Per-frame motion applied to the source's canonical keypoints, and the result x_d."""

    rotation: torch.Tensor  # [F, 3, 3]
    delta: torch.Tensor  # [F, K, 3] expression
    scale: torch.Tensor  # [F, 1]
    t: torch.Tensor  # [F, 3]
    x_d: torch.Tensor  # [F, K, 3]


def headpose_degrees(logits: torch.Tensor) -> torch.Tensor:
    """66-bin pose logits [B, 66] -> degrees [B, 1]: softmax expectation over bins * 3 - 97.5."""
    bins = torch.arange(logits.shape[-1], dtype=logits.dtype, device=logits.device)
    probs = F.softmax(logits, dim=-1)
    return (torch.sum(probs * bins, dim=-1) * 3 - 97.5).unsqueeze(-1)


def rotation_matrix(pitch: torch.Tensor, yaw: torch.Tensor, roll: torch.Tensor) -> torch.Tensor:
    """Degrees ([B] or [B, 1]) -> [B, 3, 3] = (Rz(roll) @ Ry(yaw) @ Rx(pitch))^T."""
    x, y, z = (a.reshape(-1) / 180 * math.pi for a in (pitch, yaw, roll))
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    rot_x = torch.stack([one, zero, zero,
                         zero, torch.cos(x), -torch.sin(x),
                         zero, torch.sin(x), torch.cos(x)], dim=1).reshape(-1, 3, 3)
    rot_y = torch.stack([torch.cos(y), zero, torch.sin(y),
                         zero, one, zero,
                         -torch.sin(y), zero, torch.cos(y)], dim=1).reshape(-1, 3, 3)
    rot_z = torch.stack([torch.cos(z), -torch.sin(z), zero,
                         torch.sin(z), torch.cos(z), zero,
                         zero, zero, one], dim=1).reshape(-1, 3, 3)
    return (rot_z @ rot_y @ rot_x).transpose(1, 2)


def refine_kp_info(raw: Mapping[str, torch.Tensor]) -> KeypointInfo:
    """Raw heads (pose logits, flat exp/kp) -> degrees and [B, K, 3] (LivePortrait ``get_kp_info``)."""
    bs = raw["kp"].shape[0]
    return KeypointInfo(
        pitch=headpose_degrees(raw["pitch"]),
        yaw=headpose_degrees(raw["yaw"]),
        roll=headpose_degrees(raw["roll"]),
        t=raw["t"],
        exp=raw["exp"].reshape(bs, -1, 3),
        scale=raw["scale"],
        kp=raw["kp"].reshape(bs, -1, 3),
    )


def compose_keypoints(kp: torch.Tensor, rotation: torch.Tensor, delta: torch.Tensor, scale: torch.Tensor,
                      t: torch.Tensor) -> torch.Tensor:
    """scale * (kp @ R + delta) + t with scale [B, 1] and t [B, 3] broadcast per batch element."""
    return scale[:, :, None] * (kp @ rotation + delta) + t[:, None, :]


def _zero_tz(t: torch.Tensor) -> torch.Tensor:
    return torch.cat([t[:, :2], torch.zeros_like(t[:, 2:])], dim=1)


def transform_keypoint(info: KeypointInfo, rotation: torch.Tensor | None = None) -> torch.Tensor:
    """Source keypoints x_s = (kp @ R + exp) * scale, then only tx, ty added (tz ignored) -> [B, K, 3]."""
    rot = info.rotation() if rotation is None else rotation
    return compose_keypoints(info.kp, rot, info.exp, info.scale, _zero_tz(info.t))


def relative_motion(source: KeypointInfo, source_rotation: torch.Tensor, driving: KeypointInfo,
                    driving_rotation: torch.Tensor, first: KeypointInfo,
                    first_rotation: torch.Tensor) -> DrivingKeypoints:
    """Driving motion relative to the FIRST driving frame, applied to the source (FRVD inference).

    R = (R_d R_d0^T) R_s, delta = exp_s + (exp_d - exp_d0), scale = s_s * (s_d / s_d0),
    t = t_s + (t_d - t_d0) with t_z = 0; x_d = scale * (kp_s @ R + delta) + t.
    ``source`` / ``first`` have batch 1 (broadcast) or F; ``driving`` has batch F.
    """
    rot = (driving_rotation @ first_rotation.transpose(1, 2)) @ source_rotation
    delta = source.exp + (driving.exp - first.exp)
    scale = source.scale * (driving.scale / first.scale)
    t = _zero_tz(source.t + (driving.t - first.t))
    n = driving.batch_size
    rot, delta, scale, t = (v.expand(n, *v.shape[1:]) for v in (rot, delta, scale, t))
    return DrivingKeypoints(rot, delta, scale, t, compose_keypoints(source.kp, rot, delta, scale, t))


def absolute_motion(source: KeypointInfo, driving: KeypointInfo, driving_rotation: torch.Tensor,
                    zero_tz: bool = False) -> DrivingKeypoints:
    """Driving pose/expression/scale/translation used directly on the source's canonical keypoints.

    x_d = s_d * (kp_s @ R_d + exp_d) + t_d. The release's absolute path (FRVD training's
    ``MotionExtractor.forward``, i.e. self-reenactment) keeps the driving t_z, so that is the
    default; ``zero_tz=True`` drops it like LivePortrait's own non-relative animation does.
    """
    t = _zero_tz(driving.t) if zero_tz else driving.t
    n = driving.batch_size
    kp = source.kp.expand(n, *source.kp.shape[1:])
    x_d = compose_keypoints(kp, driving_rotation, driving.exp, driving.scale, t)
    return DrivingKeypoints(driving_rotation, driving.exp, driving.scale, t, x_d)
