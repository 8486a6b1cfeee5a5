"""The node's HTTP/1.1 protocol: uvicorn's, with the node's error shape for the requests
uvicorn refuses before the application sees them.

uvicorn answers a request it cannot parse (a garbage or over-long request line, a
malformed header) with a plain-text 400 from its protocol class; every other error of
the node is ``{"error": str, "params"?: obj}`` as JSON, so these are too:

- 400 ``{"error": "Invalid HTTP request"}``: the request cannot be parsed (httptools
  also refuses a request target longer than 65,535 bytes).
- 431 ``{"error": "Request header fields too large", "params": {"limit": N}}``: the
  header fields of one request exceed ``MAX_HEADER_BYTES`` (httptools has no limit of
  its own, so a client could make the node buffer any amount of headers).

A response leaves in one send: uvicorn writes its head and its body with a write each,
and each write to a socket is a system call and, on the other end, a wake-up; the writes
of one turn of the event loop are joined (``CorkedTransport``) and sent at the next.

httptools is uvicorn's parser when it is installed (it is a dependency); h11 is the
fallback, with the same JSON 400 and its own limit on a request's head
(``h11_max_incomplete_event_size``). ``server_options`` gives uvicorn both, and is what
``jobnode serve`` and the tests' in-process node use.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import h11
import msgspec

try:
    from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
except ImportError:  # pragma: no cover - httptools is a dependency
    HttpToolsProtocol = None  # type: ignore[assignment,misc]
from uvicorn.protocols.http.h11_impl import H11Protocol

from app.errors import HEADERS_TOO_LARGE, INVALID_HTTP_REQUEST, ErrorSpec
from app.logging import rate_limited

#: uvicorn logs a warning for every request it refuses: repeats are held back.
rate_limited(logging.getLogger("uvicorn.error"))

#: Bytes of header names and values one request may carry (request target excluded).
MAX_HEADER_BYTES = 64 * 1024
#: h11 counts the request line and the headers together.
H11_MAX_HEAD_BYTES = 64 * 1024 + MAX_HEADER_BYTES


def error_body(spec: ErrorSpec, params: dict[str, Any] | None = None) -> bytes:
    return msgspec.json.encode(spec.body(params))


class _HeadersTooLarge(Exception):
    """Raised from the parser's header callback; httptools reports it as a parser error."""


class CorkedTransport:
    """A transport whose writes of one turn of the event loop leave in one ``write``.

    Everything but writing and closing is the socket transport's own."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] | None = None

    def write(self, data: bytes) -> None:
        if self._pending is None:
            self._pending = [data]
            self._loop.call_soon(self.flush)
        else:
            self._pending.append(data)

    def writelines(self, lines: list[bytes]) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        pending, self._pending = self._pending, None
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending or ()))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _Corked(asyncio.Protocol):
    """Puts a connection's writes behind a ``CorkedTransport``."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        corked = CorkedTransport(cast(asyncio.Transport, transport), asyncio.get_running_loop())
        super().connection_made(cast(asyncio.Transport, corked))


if HttpToolsProtocol is not None:

    class JsonErrorsHttpToolsProtocol(_Corked, HttpToolsProtocol):
        """uvicorn's httptools protocol with JSON errors and a bound on header bytes."""

        _header_bytes = 0
        _headers_too_large = False

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._header_bytes = 0

        def on_header(self, name: bytes, value: bytes) -> None:
            self._header_bytes += len(name) + len(value)
            if self._header_bytes > MAX_HEADER_BYTES:
                self._headers_too_large = True
                raise _HeadersTooLarge
            super().on_header(name, value)

        def send_400_response(self, msg: str) -> None:
            if self._headers_too_large:
                status, body = HEADERS_TOO_LARGE.status, error_body(HEADERS_TOO_LARGE, {"limit": MAX_HEADER_BYTES})
            else:
                status, body = INVALID_HTTP_REQUEST.status, error_body(INVALID_HTTP_REQUEST)
            content = [STATUS_LINE[status]]
            for name, value in self.server_state.default_headers:
                content.extend([name, b": ", value, b"\r\n"])
            content.extend(
                [
                    b"content-type: application/json\r\n",
                    b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                    b"connection: close\r\n",
                    b"\r\n",
                    body,
                ]
            )
            self.transport.write(b"".join(content))
            self.transport.close()


class JsonErrorsH11Protocol(_Corked, H11Protocol):
    """uvicorn's h11 protocol with the JSON 400."""

    def send_400_response(self, msg: str) -> None:
        body = error_body(INVALID_HTTP_REQUEST)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        for event in (
            h11.Response(status_code=INVALID_HTTP_REQUEST.status, headers=headers, reason=b"Bad Request"),
            h11.Data(data=body),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event))
        self.transport.close()


def protocol_class() -> type[asyncio.Protocol]:
    """What uvicorn's ``http="auto"`` would pick, with the node's error shape."""
    if HttpToolsProtocol is not None:
        return JsonErrorsHttpToolsProtocol
    return JsonErrorsH11Protocol  # pragma: no cover


def server_options() -> dict[str, Any]:
    """``uvicorn.Config`` keyword arguments for the node's HTTP protocol."""
    return {"http": protocol_class(), "h11_max_incomplete_event_size": H11_MAX_HEAD_BYTES}
