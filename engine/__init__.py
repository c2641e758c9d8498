"""FRVD face-reenactment inference engine.

``from engine import Reenactor`` is the session API (``engine.api``); it is imported on first use
so that the command-line tools that do not need it start quickly.
"""

from __future__ import annotations

import os
from typing import Any

# The runtime overlaps stages in threads; OpenMP workers that spin while idle would take the cores
# from the busy ones (measured: an in-process stream at 5.3 vs 11.0 fps on 2 cores). It only takes
# effect when set before torch is first imported, as it is through any ``python -m engine.*``.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
__all__ = ["EngineOptions", "Reenactor", "RunControl", "RunOptions", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("Reenactor", "EngineOptions", "RunOptions", "RunControl"):
        from engine import api

        return getattr(api, name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
