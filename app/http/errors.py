"""Every error body is ``{"error": str}`` or ``{"error": str, "params": object}``.

Litestar's own shapes (404, 405, 413, 429, validation) are rewritten here, and a
database that cannot be reached is a 503, never a 500 with a stack trace.
"""

from __future__ import annotations

import logging
from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException

from app.db.errors import DATABASE_UNAVAILABLE, describe, is_database_unavailable
from app.logging import rate_limited

#: A database outage would log a line per request: repeats are held back.
log = rate_limited(logging.getLogger("jobnode.http"))


class ApiError(HTTPException):
    """An error the API documents: status, message and optional params."""

    def __init__(
        self, status_code: int, error: str, params: dict[str, Any] | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status_code=status_code, detail=error, headers=headers)
        self.error = error
        self.params = params


def error_response(
    status_code: int, error: str, params: dict[str, Any] | None = None, headers: dict[str, str] | None = None
) -> Response[dict[str, Any]]:
    body: dict[str, Any] = {"error": error} if params is None else {"error": error, "params": params}
    return Response(body, status_code=status_code, media_type=MediaType.JSON, headers=headers)


_GENERIC = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    429: "Too many requests",
}


def exception_handlers(max_body_bytes: int) -> dict[Any, Any]:
    def http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
        if isinstance(exc, ApiError):
            return error_response(exc.status_code, exc.error, exc.params, exc.headers)
        status = exc.status_code
        if status == 413:
            return error_response(413, "Request body too large", {"limit": max_body_bytes})
        if status == 429:
            headers = dict(exc.headers or {})
            headers["Retry-After"] = headers.get("RateLimit-Reset", "1")
            return error_response(429, "Too many requests", headers=headers)
        if status >= 500:
            log.error("server error %s: %s", status, exc.detail)
            return error_response(status, "Internal server error")
        return error_response(status, _GENERIC.get(status, "Bad request"), headers=exc.headers)

    def unexpected(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
        if is_database_unavailable(exc):
            log.warning("database unavailable: %s", describe(exc))
            return error_response(503, DATABASE_UNAVAILABLE)
        log.exception("unhandled error", exc_info=exc)
        return error_response(500, "Internal server error")

    return {HTTPException: http_error, Exception: unexpected}
