"""User-facing errors: one clear message (what, which file, what to do), no traceback."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class EngineError(Exception):
    """An error the CLI prints as one line and exits non-zero on."""

    exit_code = 2


class InputError(EngineError):
    """A user-supplied file (image, video, output path) cannot be used."""


class WeightsError(EngineError):
    """A weights folder or checkpoint does not match what the engine expects."""


class FaceError(InputError):
    """The source image has no usable face, or several and no choice among them."""


# Optional dependencies, imported where they are used: the torch path (arrays in, arrays out) needs torch
# and numpy alone, so a GPU box carrying only CUDA torch can import engine.api and render. Video needs PyAV,
# resizing and face alignment OpenCV, building the networks diffusers/transformers; those modules bind the
# package with ``lazy_import`` (imported on first use; type checkers see the real module under TYPE_CHECKING),
# and a missing one is one clear error naming the package and what needs it.
class MissingDependency(EngineError, ImportError):
    """An optional package a feature needs is not installed (the message names it and the fix)."""


# import name -> pip distribution
DISTRIBUTIONS = {"av": "av", "cv2": "opencv-python-headless", "diffusers": "diffusers",
                 "transformers": "transformers", "onnxruntime": "onnxruntime", "tensorrt": "tensorrt"}


def require_import(name: str, needed_for: str) -> ModuleType:
    """``import name``, or ``MissingDependency`` saying which package ``needed_for`` needs."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        dist = DISTRIBUTIONS.get(name, name)
        raise MissingDependency(f"{needed_for} needs the Python package '{dist}' (import {name} failed: {exc}); "
                                f"install it with: pip install {dist}") from None


class LazyModule:
    """A module imported on first attribute access (``require_import``'s error if it is missing)."""

    def __init__(self, name: str, needed_for: str) -> None:
        self._name, self._needed_for = name, needed_for
        self._module: ModuleType | None = None

    def __getattr__(self, attr: str) -> Any:
        if self._module is None:
            self._module = require_import(self._name, self._needed_for)
        return getattr(self._module, attr)

    def __repr__(self) -> str:
        state = "imported" if self._module is not None else "not yet imported"
        return f"<lazy module {self._name!r} ({state})>"


def lazy_import(name: str, needed_for: str) -> Any:
    return LazyModule(name, needed_for)
