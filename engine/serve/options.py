"""Client options (multipart fields or the stream's JSON) -> ``RunOptions``, each bad value a 422
naming its field. The run fields are the knobs of ``RunConfig`` and of its motion controls declared
with ``serve=True`` (plus the mode); their types and checks are the declaration's, applied field by
field so the error can say which field it was."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from engine.api import RunOptions
from engine.config.modes import RUN_KNOBS
from engine.errors import InputError
from engine.serve.config import ServeConfig
from engine.serve.errors import invalid

_SERVED = [f.name for f, k in RUN_KNOBS if k.serve]
RUN_FIELDS = ("mode", *_SERVED)  # passed to RunOptions
JOB_FIELDS = (*RUN_FIELDS, "size", "side_by_side", "max_frames", "absolute_motion")
_TYPES = RunOptions.types()
_INTS = {"size", "max_frames", *(n for n in _SERVED if _TYPES[n] is int)}
_FLOATS = {n for n in _SERVED if _TYPES[n] is float}
_BOOLS = {"side_by_side", "absolute_motion", *(n for n in _SERVED if _TYPES[n] is bool)}
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}
GUIDANCE_RANGE = (0.0, 20.0)  # classifier-free guidance scales a client may ask for (the release uses 1-3)


@dataclass(frozen=True)
class JobOptions:
    run: RunOptions
    side_by_side: bool = False
    max_frames: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"run": self.run.to_json(), "side_by_side": self.side_by_side, "max_frames": self.max_frames}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobOptions:
        return cls(RunOptions.from_json(data["run"]), data["side_by_side"], data["max_frames"])


def _convert(name: str, value: Any) -> Any:
    text = str(value).strip()
    try:
        if (name in _INTS or name in _FLOATS) and not text.isascii():  # int("٣") and float("１.５") parse
            raise ValueError
        if name in _INTS:
            if isinstance(value, float) or isinstance(value, bool):
                raise ValueError
            return int(text, 10)
        if name in _FLOATS:
            number = float(text)
            if not math.isfinite(number):
                raise invalid(name, f"{name} must be a finite number, got {text!r}")
            lo, hi = GUIDANCE_RANGE
            if name == "guidance" and not lo <= number <= hi:  # the others: their declaration's limits
                raise invalid(name, f"{name} must be between {lo:g} and {hi:g}, got {text!r}")
            return number
        if name in _BOOLS:
            if isinstance(value, bool):
                return value
            if text.lower() in _TRUE | _FALSE:
                return text.lower() in _TRUE
            raise ValueError
    except ValueError:
        kind = "a whole number" if name in _INTS else "a number" if name in _FLOATS else "true or false"
        raise invalid(name, f"{name} must be {kind}, got {text[:40]!r}") from None
    return text


def parse(values: dict[str, Any], config: ServeConfig, engine_size: int, allowed: tuple[str, ...]) -> JobOptions:
    """``values``: field -> raw value (strings from a form, JSON scalars from the stream)."""
    for name in values:
        if name not in allowed:
            raise invalid(name, f"unknown option {name!r}", f"options are: {', '.join(allowed)}")
    given = {k: _convert(k, v) for k, v in values.items() if v is not None}
    run: dict[str, Any] = {name: given[name] for name in RUN_FIELDS if name in given}
    if given.get("absolute_motion"):
        run["relative_motion"] = False
    if "steps" not in run and config.default_steps is not None:
        run["steps"] = config.default_steps
    if run.get("steps") is not None and run["steps"] > config.max_steps:
        raise invalid("steps", f"steps {run['steps']} is over this server's limit of {config.max_steps}",
                      "ask for fewer steps")
    for name, value in run.items():  # RunOptions.check, one field at a time, so the error names it
        try:
            RunOptions(**{name: value}).check()
        except InputError as err:
            raise invalid(name, str(err)) from None
        except (TypeError, ValueError) as err:
            raise invalid(name, f"{name}: {err}") from None
    options = RunOptions(**run)
    try:
        options.check()
    except InputError as err:
        raise invalid("options", str(err)) from None
    size = given.get("size")
    if size is not None and size != engine_size:
        raise invalid("size", f"this server renders at {engine_size}x{engine_size}, not {size}",
                      f"leave size out, or start the server with --size {size}")
    max_frames = given.get("max_frames")
    if max_frames is not None and max_frames < 1:
        raise invalid("max_frames", f"max_frames must be >= 1, got {max_frames}")
    return JobOptions(options, bool(given.get("side_by_side", False)), max_frames)
