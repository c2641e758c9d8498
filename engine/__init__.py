"""FRVD face-reenactment inference engine.

``from engine import Reenactor`` is the session API (``engine.api``); it is imported on first use
so that the command-line tools that do not need it start quickly.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["EngineOptions", "Reenactor", "RunControl", "RunOptions", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("Reenactor", "EngineOptions", "RunOptions", "RunControl"):
        from engine import api

        return getattr(api, name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
