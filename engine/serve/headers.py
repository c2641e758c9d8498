"""Security headers on every HTTP answer (a pure ASGI middleware: streaming answers untouched).

- ``X-Content-Type-Options: nosniff``: a result or an error is never re-interpreted as HTML/script;
- ``X-Frame-Options: DENY`` and CSP ``frame-ancestors 'none'``: no page of ours inside another's frame;
- ``Referrer-Policy: no-referrer``;
- ``Content-Security-Policy``: the page (``/`` and ``/static/``) may load only its own script and
  style, talk only to this origin (HTTP and WebSocket) and show camera/result blobs; everything
  else (JSON, results) gets ``default-src 'none'; sandbox``, so even a browser told to render a
  result runs nothing from it.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
            "media-src 'self' blob: mediastream:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
            "form-action 'self'; frame-ancestors 'none'")
API_CSP = "default-src 'none'; frame-ancestors 'none'; sandbox"
COMMON = ((b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"), (b"referrer-policy", b"no-referrer"))


def is_page(path: str) -> bool:
    return path == "/" or path.startswith("/static/")


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        csp = (PAGE_CSP if is_page(scope.get("path", "")) else API_CSP).encode()

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                have = {name.lower() for name, _ in headers}
                headers += [(k, v) for k, v in (*COMMON, (b"content-security-policy", csp)) if k not in have]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)
