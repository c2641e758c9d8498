"""LivePortrait networks used by FRVD's motion branch, with the release's state-dict key names."""

from engine.models.liveportrait.appearance import AppearanceFeatureExtractor
from engine.models.liveportrait.motion import MotionExtractor
from engine.models.liveportrait.motion_branch import MotionBranch
from engine.models.liveportrait.spade_trunk import SPADETrunk
from engine.models.liveportrait.warping import WarpingNetwork, WarpOutput

__all__ = [
    "AppearanceFeatureExtractor",
    "MotionBranch",
    "MotionExtractor",
    "SPADETrunk",
    "WarpOutput",
    "WarpingNetwork",
]
