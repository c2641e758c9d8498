"""Motion controls: what of the driving motion reaches the source, and how smoothly (one run's or
one stream's choices; a running stream may change them between frames). Each control is declared
once, below, with ``knob(...)`` (engine.config.knobs): the reenact and webcam CLIs' flags, the server's
job fields and stream start options, engine.batch's manifest columns and ``RunOptions``' keywords all
derive from these declarations. Their maths is ``engine.models.liveportrait.motion_controls``; their
effect is measured in docs/controls.md.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from engine.config.knobs import knob, knob_fields
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
    """Per-frame choices over the driving motion; the defaults are the release's motion, bit for bit."""

    smooth: float = knob(0.0, "causal smoothing of the driving motion: strength 0 (off) .. 1", lo=0.0, hi=1.0,
                         serve=True)
    expression_scale: float = knob(1.0, "times the driving expression change since the first frame",
                                   lo=0.0, hi=MAX_SCALE, serve=True)
    pose_scale: float = knob(1.0, "times the head rotation, translation and zoom since the first frame",
                             lo=0.0, hi=MAX_SCALE, serve=True)
    lock_pose: bool = knob(False, "keep the source's head pose: expression only (pose scale 0)", serve=True)
    lock_expression: bool = knob(False, "keep the source's expression: head pose only (expression scale 0)",
                                 serve=True)
    eyes: str = knob("driving", "where the eye keypoints' expression comes from", choices=REGION_SOURCES,
                     serve=True)
    lips: str = knob("driving", "where the lip keypoints' expression comes from", choices=REGION_SOURCES,
                     serve=True)

    def check(self, relative: bool = True) -> None:
        """One InputError naming the field for a bad value (of the wrong type, or outside its declaration's
        limits), or for controls that need ``relative`` motion."""
        for f, k in knob_fields(MotionControls):
            value = getattr(self, f.name)
            if isinstance(f.default, bool) and not isinstance(value, bool):
                raise InputError(f"{f.name} must be true or false, got {value!r}")
            if isinstance(f.default, float) and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise InputError(f"{f.name} must be a number, got {value!r}")
            try:
                k.check(f.name, value)
            except ValueError as err:
                raise InputError(str(err)) from None
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

    def updated(self, **changes: Any) -> MotionControls:
        unknown = set(changes) - set(CONTROL_NAMES)
        if unknown:
            raise InputError(f"unknown motion control(s) {sorted(unknown)}; controls are {', '.join(CONTROL_NAMES)}")
        new = replace(self, **changes)
        new.check()
        return new


CONTROL_NAMES = tuple(f.name for f in fields(MotionControls))  # in declaration order
