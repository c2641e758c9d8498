"""Optional dependencies, imported where they are used.

The torch path (arrays in, arrays out) needs torch and numpy alone: a GPU box that carries only CUDA
torch must be able to import ``engine.api`` and render. Video files need PyAV, resizing and face
alignment need OpenCV; those modules bind the package through ``lazy`` so it is imported on first use,
and a missing one is one clear error naming the package and what needs it (``MissingDependency``).
Type checkers see the real module (``if TYPE_CHECKING: import av``).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from engine.errors import EngineError


class MissingDependency(EngineError, ImportError):
    """An optional package a feature needs is not installed (the message names it and the fix)."""


# import name -> pip distribution
DISTRIBUTIONS = {"av": "av", "cv2": "opencv-python-headless", "diffusers": "diffusers",
                 "transformers": "transformers", "onnxruntime": "onnxruntime", "tensorrt": "tensorrt"}


def require(name: str, needed_for: str) -> ModuleType:
    """``import name``, or ``MissingDependency`` saying which package ``needed_for`` needs."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        dist = DISTRIBUTIONS.get(name, name)
        raise MissingDependency(f"{needed_for} needs the Python package '{dist}' (import {name} failed: {exc}); "
                                f"install it with: pip install {dist}") from None


class LazyModule:
    """A module imported on first attribute access (``require``'s error if it is missing)."""

    def __init__(self, name: str, needed_for: str) -> None:
        self._name, self._needed_for = name, needed_for
        self._module: ModuleType | None = None

    def __getattr__(self, attr: str) -> Any:
        if self._module is None:
            self._module = require(self._name, self._needed_for)
        return getattr(self._module, attr)

    def __repr__(self) -> str:
        state = "imported" if self._module is not None else "not yet imported"
        return f"<lazy module {self._name!r} ({state})>"


def lazy(name: str, needed_for: str) -> Any:
    return LazyModule(name, needed_for)
