"""uvicorn's HTTP and WebSocket protocols with two guards uvicorn lacks (passed as classes to
``uvicorn.run(http=..., ws=...)``):

- ``HeaderTimeoutHttp``: a request's complete header block must arrive within ``header_timeout``
  seconds of the connection opening (a fresh connection) or of the request's first byte (a kept-alive
  one; an idle kept-alive connection is closed by uvicorn's own keep-alive timer), else the
  connection is closed. uvicorn's keep-alive timer is cancelled by any byte, so a client trickling
  one header byte a second held a connection forever (200 of them were held in the probe).
- ``GuardedWebSocket``: until the application raises it (``admission``: once the key is checked),
  a message may be at most ``admission.PREAUTH_MAX_BYTES``; the parser refuses a larger one as its
  frame header arrives (close 1009), so an unauthenticated client cannot make the server buffer a
  large message.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from engine.serve.admission import LIMIT_EXTENSION, PREAUTH_MAX_BYTES


class HeaderTimeoutHttp(HttpToolsProtocol):
    header_timeout = 10.0  # set by ``protocols()``

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm()

    def _arm(self) -> None:
        if getattr(self, "_header_timer", None) is None:  # an armed deadline is kept, not extended
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def _disarm(self) -> None:
        if getattr(self, "_header_timer", None) is not None:
            self._header_timer.cancel()  # type: ignore[union-attr]
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def on_message_begin(self) -> None:
        self._arm()
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


class GuardedWebSocket(WebSocketsSansIOProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn.max_message_size = min(PREAUTH_MAX_BYTES, self.config.ws_max_size)

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:  # the handshake succeeded: the application may raise the limit
            scope.setdefault("extensions", {})[LIMIT_EXTENSION] = {"raise": self._raise_limit}

    def _raise_limit(self) -> None:
        self.conn.max_message_size = self.config.ws_max_size


def protocols(header_timeout: float) -> tuple[type[HttpToolsProtocol], type[WebSocketsSansIOProtocol]]:
    """-> (http, ws) protocol classes for ``uvicorn.run``."""
    http = type("HeaderTimeoutHttp", (HeaderTimeoutHttp,), {"header_timeout": header_timeout})
    return http, GuardedWebSocket
