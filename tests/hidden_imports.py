"""Make packages look uninstalled in this process (not a test module).

``hide("av", "cv2")`` wraps every finder on ``sys.meta_path`` so that those top-level packages (and
their submodules) are not found - what a machine without them sees: ``import av`` raises
``ModuleNotFoundError`` and ``importlib.util.find_spec("av")`` is None. Call it before anything
imports them (tests run it first thing in a fresh ``python -c`` subprocess).
"""

from __future__ import annotations

import sys
from typing import Any


class _Hiding:
    def __init__(self, inner: Any, names: frozenset[str]) -> None:
        self.inner, self.names = inner, names

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.inner, attr)

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name.partition(".")[0] in self.names:
            return None
        find = getattr(self.inner, "find_spec", None)
        return find(name, path, target) if find is not None else None


def hide(*names: str) -> None:
    loaded = [m for m in sys.modules if m.partition(".")[0] in names]
    if loaded:
        raise RuntimeError(f"already imported, cannot hide: {loaded}")
    sys.meta_path[:] = [_Hiding(f, frozenset(names)) for f in sys.meta_path]
