"""FRVD's motion branch: LivePortrait F, M, W and the truncated G, as the release's ``MotionExtractorEval``.

source (first frame only) -> kp info, R_s, f_s = F(I_s), x_s; every driving frame -> kp info,
keypoints relative to the first driving frame -> W(f_s; x_s, x_d) -> SPADE trunk feature.
This module holds the four networks under the release's checkpoint names; the one implementation
of the steps is ``engine.runtime.stages`` (SourceStage.source_motion, MotionStage), which runs them through
a backend's ``appearance`` / ``motion`` / ``warp`` graphs and is what the liveportrait fixture checks.

Precision: the release keeps these four modules outside the modules it casts to fp16 and runs
them in fp32 even under CUDA autocast. Here ``_apply`` refuses floating-point dtype casts coming
from a parent module's ``.half()`` / ``.to(dtype)`` (device moves still pass), so the weights stay
float32, and the torch backend runs their graphs with autocast disabled.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from engine.models.liveportrait.appearance import AppearanceFeatureExtractor
from engine.models.liveportrait.motion import MotionExtractor
from engine.models.liveportrait.spade_trunk import SPADETrunk
from engine.models.liveportrait.warping import WarpingNetwork

INPUT_SIZE = 256
SUBMODULES = ("appearance_feature_extractor", "motion_extractor", "warping_module", "spade_generator")


def to_model_input(images_pm1: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in [-1, 1] -> float32 [B, 3, 256, 256] in [0, 1]: (x+1)/2 then bilinear resize."""
    x = (images_pm1.float() + 1.0) / 2.0
    if tuple(x.shape[-2:]) != (INPUT_SIZE, INPUT_SIZE):
        # align_corners=False and no antialias, as the release's F.interpolate call.
        x = F.interpolate(x, [INPUT_SIZE, INPUT_SIZE], mode="bilinear")
    return x


class MotionBranch(nn.Module):
    """LivePortrait F/M/W/G under the release's checkpoint names, built from a models.yaml dict."""

    def __init__(self, model_params: Mapping[str, Any]) -> None:
        super().__init__()
        self.appearance_feature_extractor = AppearanceFeatureExtractor(
            **model_params["appearance_feature_extractor_params"])
        self.motion_extractor = MotionExtractor(**model_params["motion_extractor_params"])
        self.warping_module = WarpingNetwork(**model_params["warping_module_params"])
        self.spade_generator = SPADETrunk(**model_params["spade_generator_params"])
        self.eval()

    @property
    def trunk_channels(self) -> int:
        return self.spade_generator.out_channels

    def load_weights(self, state_dicts: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
        """Strictly load one state dict per sub-module name (``SUBMODULES``)."""
        missing = set(SUBMODULES) - set(state_dicts)
        if missing:
            raise KeyError(f"no weights for {sorted(missing)}")
        for name in SUBMODULES:
            getattr(self, name).load_state_dict(state_dicts[name], strict=True)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> MotionBranch:
        def keep_float32(t: torch.Tensor) -> torch.Tensor:
            moved = fn(t)
            if t.is_floating_point() and moved.dtype != t.dtype:
                return t.to(device=moved.device)  # keep the dtype, honour only the device move
            return moved

        return super()._apply(keep_float32, recurse)
