"""``GET`` and ``POST /api/jobs`` as a plain ASGI route: the two requests of every job.

A Litestar HTTP handler costs more CPU before the handler runs (request object,
signature model, kwargs, response object, headers) than the node spends on the job
itself (the benchmark's profile shows it). This route keeps what matters of it —
routing, the middleware (metrics, rate limit), the exception handlers and so every
error shape — and answers with the encoded body itself. The OpenAPI document shows
these two operations from ``JobsReference``, which runs the same functions.
"""

from __future__ import annotations

from typing import Any, cast

import msgspec
from litestar import asgi
from litestar.connection import ASGIConnection
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.handlers import ASGIRouteHandler
from litestar.types import (
    HTTPDisconnectEvent,
    HTTPRequestEvent,
    HTTPResponseStartEvent,
    HTTPScope,
    Receive,
    Scope,
    Send,
)

from app.errors import METHOD_NOT_ALLOWED
from app.http.controllers.jobs import IDEMPOTENCY_KEY, JobsApi, read_jobs, submit_job, submit_job_keyed
from app.http.params import content_length

_encode = msgspec.json.Encoder().encode
_ALLOW = "GET, POST"
_REPLAYED = (b"idempotent-replayed", b"true")


class ClientGone(Exception):
    """The client disconnected before its body arrived: there is nobody to answer."""


async def read_body(connection: ASGIConnection[Any, Any, Any, Any], receive: Receive, limit: int) -> bytes:
    """The request body, refused past ``limit`` bytes whether announced or streamed
    (as ``Request.body()`` does for HTTP handlers, which ASGI routes do not have)."""
    announced = content_length(connection.headers.get("content-length"))
    if announced is not None and announced > limit:
        raise RequestEntityTooLarge
    chunks: list[bytes] = []
    size = 0
    while True:
        message = cast("HTTPRequestEvent | HTTPDisconnectEvent", await receive())  # an HTTP route's
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise RequestEntityTooLarge
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def jobs_endpoint(api: JobsApi) -> ASGIRouteHandler:
    limit = api.server.max_body_bytes

    @asgi("/api/jobs", is_mount=False, copy_scope=False)
    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        connection: ASGIConnection[Any, Any, Any, Any] = ASGIConnection(scope, receive, send)
        method = cast("HTTPScope", scope)["method"]
        replayed = False
        if method == "POST":
            try:
                body = await read_body(connection, receive, limit)
            except ClientGone:
                return
            key = connection.headers.get(IDEMPOTENCY_KEY)
            if key is None:
                answer: Any = await submit_job(api, connection, body)
            else:
                submitted = await submit_job_keyed(api, connection, body, key)
                (answer,) = submitted.answers
                replayed = submitted.replayed
        elif method == "GET":
            answer = await read_jobs(api, connection)
        else:
            raise METHOD_NOT_ALLOWED.error(headers={"Allow": _ALLOW})
        payload = _encode(answer)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        if replayed:
            headers.append(_REPLAYED)
        start: HTTPResponseStartEvent = {"type": "http.response.start", "status": 200, "headers": headers}
        await send(start)
        await send({"type": "http.response.body", "body": payload, "more_body": False})

    return endpoint
