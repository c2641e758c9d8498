"""Bearer-token access: one shared key, compared in constant time.

Every endpoint but ``/healthz`` (and the static browser page, which holds no data and sends the key
the user types with each of its calls) needs ``Authorization: Bearer KEY`` when a key is set. The
WebSocket takes the key from the same header or from ``token`` in its first message, because a
browser cannot set headers on a WebSocket.
"""

from __future__ import annotations

import hmac

from starlette.requests import HTTPConnection

from engine.serve.errors import ApiError


def token_ok(expected: str | None, given: str | None) -> bool:
    """True when no key is configured, or ``given`` equals it (hmac.compare_digest: no timing leak)."""
    if expected is None:
        return True
    if given is None:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def bearer(conn: HTTPConnection) -> str | None:
    """The token of an ``Authorization: Bearer ...`` header, or None."""
    header = conn.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def require(conn: HTTPConnection) -> None:
    """FastAPI dependency for the HTTP routes."""
    expected = conn.app.state.ctx.config.api_key
    if not token_ok(expected, bearer(conn)):
        raise ApiError(401, "authorization", "missing or wrong API key",
                       "send the header 'Authorization: Bearer KEY' with the key the server was started with",
                       {"WWW-Authenticate": "Bearer"})
