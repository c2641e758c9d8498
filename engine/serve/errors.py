"""One JSON error shape for every refusal: ``{"error": {"status", "field", "message", "hint"}}``.

``field`` names what was wrong (a form field, a header, ``body``); ``hint`` says what to do.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import JSONResponse


@dataclass
class ApiError(Exception):
    status: int
    field: str
    message: str
    hint: str = ""
    headers: dict[str, str] | None = None

    def body(self) -> dict:
        return {"error": {"status": self.status, "field": self.field, "message": self.message, "hint": self.hint}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def too_large(field: str, message: str, hint: str) -> ApiError:
    return ApiError(413, field, message, hint)


def unsupported(field: str, message: str, hint: str) -> ApiError:
    return ApiError(415, field, message, hint)


def invalid(field: str, message: str, hint: str = "") -> ApiError:
    return ApiError(422, field, message, hint)


def busy(field: str, message: str, hint: str, retry_after: int = 5) -> ApiError:
    return ApiError(429, field, message, hint, {"Retry-After": str(retry_after)})


def not_found(what: str = "job") -> ApiError:
    return ApiError(404, "id", f"no {what} with this id", f"list them with GET /v1/{what}s")


async def api_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return exc.response()
