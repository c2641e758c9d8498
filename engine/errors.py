"""User-facing errors: one clear message (what, which file, what to do), no traceback."""

from __future__ import annotations


class EngineError(Exception):
    """An error the CLI prints as one line and exits non-zero on."""

    exit_code = 2


class InputError(EngineError):
    """A user-supplied file (image, video, output path) cannot be used."""


class WeightsError(EngineError):
    """A weights folder or checkpoint does not match what the engine expects."""


class FaceError(InputError):
    """The source image has no usable face, or several and no choice among them."""
