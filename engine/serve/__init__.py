"""The serving layer: ``python -m engine.serve`` (HTTP jobs, a WebSocket stream, a browser page).

Built only on the session API (``engine.api``). Importing this package is cheap (no FastAPI, no
torch): the webcam client imports ``engine.serve.protocol`` from here.
"""

from engine.serve.config import ServeConfig

__all__ = ["ServeConfig"]
