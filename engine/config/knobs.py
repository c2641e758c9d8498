"""One declaration per setting: a dataclass field carrying its help, limits and choices.

    steps: int = knob(25, "denoising steps", lo=1)

The field's name, type annotation and default are the dataclass's own; ``knob`` adds what a
front end needs to offer and check it. The CLI (``engine.cli.args.add_knob_arguments``), the
server (``engine.serve.options``) and ``check_knobs`` read these fields, so a setting is declared
here once and nowhere else.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import NoneType, UnionType
from typing import Any

KNOB = "knob"  # the dataclass field metadata key


@dataclass(frozen=True)
class Knob:
    """What a front end needs besides a field's name, type and default."""

    help: str
    lo: float | None = None  # inclusive bounds of a number
    hi: float | None = None
    choices: Sequence[Any] | None = None
    parse: Callable[[str], Any] | None = None  # text -> value (ValueError if malformed); e.g. a strategy string
    multiple_of: int = 1
    cli: bool = True  # offered as a --flag by CLIs built from the dataclass
    serve: bool = False  # accepted as a field by the HTTP server (engine.serve.options)

    def check(self, name: str, value: Any) -> Any:
        """``value`` (already of the field's type) checked against the limits; returns it normalised.
        A bad value is a ValueError naming the setting."""
        if value is None:
            return None
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{name} {value!r} is not one of {', '.join(map(str, self.choices))}")
        if isinstance(value, bool):
            return value
        if isinstance(value, int | float):
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value}")
            if (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
                span = f"in [{self.lo:g}, {self.hi:g}]" if self.lo is not None and self.hi is not None else (
                    f">= {self.lo:g}" if self.lo is not None else f"<= {self.hi:g}")
                raise ValueError(f"{name} must be {span}, got {value}")
            if isinstance(value, int) and value % self.multiple_of:
                raise ValueError(f"{name} must be a multiple of {self.multiple_of}, got {value}")
        if self.parse is not None and isinstance(value, str):
            return str(self.parse(value))
        return value


def knob(default: Any, help: str, **limits: Any) -> Any:
    """A dataclass field with ``default`` and a Knob (help, lo, hi, choices, parse, multiple_of, cli, serve)."""
    return dataclasses.field(default=default, metadata={KNOB: Knob(help, **limits)})


def base_type(annotation: Any) -> type:
    """A field's resolved annotation -> its one non-None type (``int | None`` -> int)."""
    if isinstance(annotation, UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = next(a for a in typing.get_args(annotation) if a is not NoneType)
    return annotation if isinstance(annotation, type) else str


def knob_fields(cls: Any) -> list[tuple[dataclasses.Field, Knob]]:
    """The fields of dataclass ``cls`` declared with ``knob``, in declaration order."""
    return [(f, f.metadata[KNOB]) for f in dataclasses.fields(cls) if KNOB in f.metadata]


def check_knobs(obj: Any, names: Iterable[str] | None = None) -> None:
    """Every knob of dataclass instance ``obj`` (or the ``names`` among them) within its limits."""
    wanted = set(names) if names is not None else None
    for f, k in knob_fields(type(obj)):
        if wanted is None or f.name in wanted:
            k.check(f.name, getattr(obj, f.name))
