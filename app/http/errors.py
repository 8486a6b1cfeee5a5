"""Every error body is ``{"error": str}`` or ``{"error": str, "params": object}``.

What the code raises from the catalogue (``app.errors.ClientError``) is answered as it
is; Litestar's own shapes (404, 405, 413, 429, validation) are rewritten to catalogue
entries here, and a database that cannot be reached is a 503, never a 500 with a stack
trace.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException

from app import errors as catalogue
from app.errors import ClientError, ErrorSpec
from app.logging import rate_limited

#: A database outage would log a line per request: repeats are held back.
log = rate_limited(logging.getLogger("jobnode.http"))


def error_response(
    spec: ErrorSpec,
    params: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
    status_code: int | None = None,
) -> Response[dict[str, Any]]:
    """``spec``'s body, with its status unless ``status_code`` says otherwise (a
    Litestar error of a status the catalogue has no entry for)."""
    return Response(
        spec.body(params), status_code=status_code or spec.status, media_type=MediaType.JSON, headers=headers
    )


def exception_handlers(max_body_bytes: int) -> dict[Any, Any]:
    def client_error(_: Request[Any, Any, Any], exc: ClientError) -> Response[dict[str, Any]]:
        return error_response(exc.spec, exc.params, exc.headers)

    def http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
        status = exc.status_code
        if status == 413:
            return error_response(catalogue.BODY_TOO_LARGE, {"limit": max_body_bytes})
        if status == 429:
            headers = dict(exc.headers or {})
            headers["Retry-After"] = headers.get("RateLimit-Reset", "1")
            return error_response(catalogue.TOO_MANY_REQUESTS, headers=headers)
        if status >= 500:
            log.error("server error %s: %s", status, exc.detail)
            return error_response(catalogue.INTERNAL_ERROR, status_code=status)
        spec = catalogue.LITESTAR_GENERIC.get(status, catalogue.BAD_REQUEST)
        return error_response(spec, headers=exc.headers, status_code=status)

    def unexpected(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
        outage = catalogue.database_outage(exc)
        if outage is not None:
            log.warning("database unavailable: %s", outage)
            return error_response(catalogue.DATABASE_UNAVAILABLE)
        log.exception("unhandled error", exc_info=exc)
        return error_response(catalogue.INTERNAL_ERROR)

    return {ClientError: client_error, HTTPException: http_error, Exception: unexpected}
