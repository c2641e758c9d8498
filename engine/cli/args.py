"""Option types and path checks shared by the entry points (``engine.cli.build``, ``engine.cli.verify``,
``engine.cli.fixtures``; ``engine.cli.reenact`` can use the same).

Every bad value becomes one ``error:`` line on stderr and exit status 2, and is caught while parsing
or right after, before any network is built, weight read or file written. Families, not instances:
every integer option has its range, every float must be finite, every path is checked for what the
command will do with it (read a folder, create a folder).
"""

from __future__ import annotations

import argparse
import math
import os
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from engine.config.knobs import Knob, base_type, knob_fields
from engine.config.settings import SEED_MAX
from engine.errors import InputError

__all__ = ["SEED_MAX", "Parser", "add_knob_arguments", "creatable_dir", "existing_dir", "finite_float", "int_in",
           "knob_values", "positive_int", "seed_int"]


class Parser(argparse.ArgumentParser):
    """argparse with its usage errors as one line, like every other bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def int_in(lo: int, hi: int | None = None, multiple_of: int = 1) -> Callable[[str], int]:
    """An argparse type: an integer in [lo, hi] that is a multiple of ``multiple_of``."""

    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < lo or (hi is not None and value > hi) or value % multiple_of:
            span = f"{lo}..{hi}" if hi is not None else f">= {lo}"
            mult = f", a multiple of {multiple_of}" if multiple_of > 1 else ""
            raise argparse.ArgumentTypeError(f"{value} is out of range (needs {span}{mult})")
        return value

    parse.__name__ = "integer"  # argparse names the type in its own messages
    return parse


def finite_float(lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite float (nan and inf are refused) in [lo, hi] (or (lo, hi])."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if lo is not None and (value < lo or (lo_open and value == lo)):
            raise argparse.ArgumentTypeError(f"{value:g} must be {'>' if lo_open else '>='} {lo:g}")
        if hi is not None and value > hi:
            raise argparse.ArgumentTypeError(f"{value:g} must be <= {hi:g}")
        return value

    parse.__name__ = "number"
    return parse


positive_int = int_in(1)
seed_int = int_in(0, SEED_MAX)


def _knob_type(name: str, base: type, k: Knob) -> Callable[[str], Any]:
    """An argparse type from a knob's declaration: the text as ``base``, then the knob's own check."""

    def parse(text: str) -> Any:
        try:
            value = int(text, 10) if base is int else base(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {'a whole number' if base is int else 'a number'}") from None
        try:
            return k.check(name, value)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    parse.__name__ = {int: "integer", float: "number"}.get(base, base.__name__)
    return parse


def add_knob_arguments(p: argparse.ArgumentParser | argparse._ArgumentGroup, cls: Any,
                       default_is: str = "", only: tuple[str, ...] | None = None,
                       defaults: dict[str, Any] | None = None) -> None:
    """One ``--flag`` per ``knob`` field of dataclass ``cls`` (engine.config.knobs) offered on the command
    line (or per field named in ``only``): its type, limits, choices and help come from the declaration.
    A flag left out is absent from the parsed namespace (``knob_values`` then leaves the declaration's
    default to apply), unless this tool sets its own default in ``defaults`` (e.g. the webcam's one
    step); ``default_is`` names who supplies the default (e.g. "the mode's")."""
    hints = typing.get_type_hints(cls)
    defaults = defaults or {}
    for f, k in knob_fields(cls):
        if not k.cli or (only is not None and f.name not in only):
            continue
        flag = "--" + f.name.replace("_", "-")
        default = defaults.get(f.name, f.default)
        if default_is:
            shown = f"default: {default_is}; exact: {default}"
        else:
            shown = f"default: {default}" if default not in (None, False) else ""
        helptext = f"{k.help} ({shown})" if shown else k.help
        base = base_type(hints[f.name])
        given = defaults.get(f.name, argparse.SUPPRESS)
        if base is bool:
            p.add_argument(flag, action="store_true", default=given, help=k.help)
        else:
            choices = list(k.choices) if k.choices is not None else None
            p.add_argument(flag, type=_knob_type(f.name, base, k), choices=choices, default=given, help=helptext)


def knob_values(args: argparse.Namespace, cls: Any) -> dict[str, Any]:
    """The knobs of ``cls`` given on the command line (flags left out are absent)."""
    return {f.name: getattr(args, f.name) for f, _ in knob_fields(cls) if hasattr(args, f.name)}


def existing_dir(path: Path, option: str, what: str = "folder") -> Path:
    """``path`` must be an existing folder the command can read."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{option} {path} does not exist: give the {what}")
    if not path.is_dir():
        raise InputError(f"{option} {path} is a file, not a folder: give the {what}")
    if not os.access(path, os.R_OK | os.X_OK):
        raise InputError(f"{option} {path} cannot be read (permission denied)")
    return path


def creatable_dir(path: Path, option: str) -> Path:
    """``path`` is a folder the command may create or write into; nothing is created here."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise InputError(f"{option} {path} is a file, not a folder: give a folder (it is created if needed)")
        if not os.access(path, os.W_OK | os.X_OK):
            raise InputError(f"{option} {path} is not writable: give a folder you can write to")
        return path
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"{option} {path} cannot be created: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{option} {path} cannot be created: {parent} is not writable")
    return path

