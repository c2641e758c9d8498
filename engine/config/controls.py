"""Motion controls: what of the driving motion reaches the source, and how smoothly (one run's or
one stream's choices; a running stream may change them between frames). Their maths is
``engine.models.liveportrait.motion_controls``; their effect is measured in docs/controls.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

from engine.errors import InputError

# LivePortrait's implicit-keypoint indices for the lips and the eyes (its ``animation_region`` "lip"
# and "eyes" in live_portrait_pipeline.py); the release's M has 21 keypoints.
LIP_KEYPOINTS = (6, 12, 14, 17, 19, 20)
EYE_KEYPOINTS = (11, 13, 15, 16, 18)
MAX_SCALE = 4.0  # expression/pose scales above this only exaggerate noise (and overflow the warp grid)
REGION_SOURCES = ("driving", "source")
SMOOTHED = ("pitch", "yaw", "roll", "t", "exp", "scale")  # what the warp consumes of a driving frame


@dataclass(frozen=True)
class MotionControls:
    """Per-frame choices over the driving motion; a running stream may change them between frames."""

    smooth: float = 0.0  # causal smoothing strength in [0, 1]; 0: off
    expression_scale: float = 1.0  # times the driving expression change since the first frame
    pose_scale: float = 1.0  # times the head rotation/translation/zoom since the first frame
    lock_pose: bool = False  # keep the source's head pose (expression only): pose_scale 0
    lock_expression: bool = False  # keep the source's expression (head pose only): expression_scale 0
    eyes: str = "driving"  # driving | source: where the eye keypoints' expression comes from
    lips: str = "driving"  # driving | source

    def check(self, relative: bool = True) -> None:
        """One InputError naming the field for a bad value (or for controls that need ``relative`` motion)."""
        for name, lo, hi in (("smooth", 0.0, 1.0), ("expression_scale", 0.0, MAX_SCALE),
                             ("pose_scale", 0.0, MAX_SCALE)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InputError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value) or not lo <= value <= hi:
                raise InputError(f"{name} must be a finite number in [{lo:g}, {hi:g}], got {value}")
        for name in ("lock_pose", "lock_expression"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("eyes", "lips"):
            if getattr(self, name) not in REGION_SOURCES:
                raise InputError(f"{name} must be one of {', '.join(REGION_SOURCES)}, got {getattr(self, name)!r}")
        if not relative and self.changes_motion:
            raise InputError("motion controls (scales, locks, eyes/lips from the source) act on the motion "
                             "relative to the first frame: they need relative motion (drop absolute motion)")

    @property
    def effective_pose_scale(self) -> float:
        return 0.0 if self.lock_pose else float(self.pose_scale)

    @property
    def effective_expression_scale(self) -> float:
        return 0.0 if self.lock_expression else float(self.expression_scale)

    @property
    def changes_motion(self) -> bool:
        """False for the release's relative motion (every control at its default but ``smooth``)."""
        return (self.effective_pose_scale != 1.0 or self.effective_expression_scale != 1.0
                or self.eyes != "driving" or self.lips != "driving")

    @classmethod
    def of(cls, obj: Any) -> MotionControls:
        """The controls among the attributes of ``obj`` (run options, parsed arguments, a dict)."""
        get = obj.get if isinstance(obj, dict) else lambda k, d: getattr(obj, k, d)
        defaults = cls()
        return cls(**{f.name: get(f.name, getattr(defaults, f.name)) for f in fields(cls)})

    def updated(self, **changes: Any) -> MotionControls:
        unknown = set(changes) - CONTROL_NAMES
        if unknown:
            raise InputError(f"unknown motion control(s) {sorted(unknown)}; controls are {sorted(CONTROL_NAMES)}")
        new = replace(self, **changes)
        new.check()
        return new


CONTROL_NAMES = frozenset(f.name for f in fields(MotionControls))
