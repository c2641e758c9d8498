"""POSE and EXP (cross-identity): our own motion extractor's head pose and expression of the result
frames vs the driving frames, as the paper measures them with LivePortrait's extractor.

    POSE   mean over frames of the mean absolute difference of (yaw, pitch, roll), degrees
    EXP    mean over frames of the mean absolute difference of the expression offsets [K, 3]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from engine.diffusion import conditioning
from engine.models.liveportrait.keypoints import KeypointInfo
from engine.models.liveportrait.motion_branch import to_model_input

CHUNK = 16


class MotionMetrics:
    def __init__(self, preset: str, weights: Path | None) -> None:
        from engine.api import Reenactor

        self.engine = Reenactor.from_preset(preset, weights=weights)

    @torch.no_grad()
    def info(self, frames_u8: np.ndarray) -> KeypointInfo:
        infos = []
        for i in range(0, len(frames_u8), CHUNK):
            images = to_model_input(conditioning.to_pm1(frames_u8[i : i + CHUNK]))
            infos.append(self.engine.stages.source.keypoints(images))
        return KeypointInfo(**{k: torch.cat([getattr(x, k) for x in infos]) for k in infos[0].__dataclass_fields__})

    def __call__(self, result_u8: np.ndarray, driving_u8: np.ndarray) -> dict[str, float]:
        a, b = self.info(result_u8), self.info(driving_u8)
        pose = torch.cat([a.yaw - b.yaw, a.pitch - b.pitch, a.roll - b.roll], dim=1).abs().mean()
        exp = (a.exp - b.exp).abs().mean()
        return {"pose": float(pose), "exp": float(exp)}
