"""A lean HTTP/1.1 keep-alive client for the container protocol's ``POST /service_output``.

Why not aiohttp for this one request: every job step is one such POST, and aiohttp spent
several times the CPU of this client on each (measured with many concurrent calls to
``tests/bench/echo.py``; a large share of the node's CPU under load), most of it in
machinery this request never uses (cookies, redirects, tracing, streams, middlewares). This client does only what the
call needs — one request at a time per connection, a body of bytes out, a whole body of
bytes back — on ``asyncio.Protocol`` (so it runs on uvloop too), with responses parsed by
httptools (llhttp), where a good part of a call's cost is the send system call itself.

It raises ``TimeoutError``, ``ConnectFailed``, ``ClosedBeforeAnswer``, ``InvalidResponse``,
``IncompleteResponse`` or the ``OSError`` that broke the connection; what those mean for a
job step is decided by ``app.containers.client``, not here.

Webhook POSTs (``app.maintenance.webhook_http``) use it too, for the same reason: they
add headers of their own to each request (``extra``), and connect only to the address
their ``resolve`` hook approved (the SSRF check: the address checked is the address
connected to, never resolved again); the ``Host`` header stays the URL's host.

A request is never re-sent, not even one that met a keep-alive connection the peer was
closing: a POST is not idempotent (RFC 9112 §9.3.1.1), and nothing tells "closed before
it read the request" apart from "read it, ran it, then died". aiohttp does not retry a POST
either. Idle connections the peer closes are dropped as soon as the loop sees it, so only a
close that crosses the request on the wire can still fail a call.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Mapping
from urllib.parse import quote, urlsplit

import httptools

#: Idle connections kept per (host, port); more are closed when released.
MAX_IDLE_PER_ORIGIN = 256
#: Seconds an idle connection is kept (aiohttp's ``keepalive_timeout`` was 30 s).
IDLE_SECONDS = 30.0


class HTTPFailure(Exception):
    """Anything that went wrong between connecting and the end of the response."""


class ConnectFailed(HTTPFailure):
    """The TCP connection could not be opened, so nothing was sent."""

    def __init__(self, os_error: OSError) -> None:
        super().__init__(str(os_error))
        self.os_error = os_error


class ClosedBeforeAnswer(HTTPFailure):
    """The peer closed the connection (cleanly) before the response headers were complete."""


class IncompleteResponse(HTTPFailure):
    """The connection ended in the middle of the response body."""


class InvalidResponse(HTTPFailure):
    """The bytes received are not an HTTP/1.x response (llhttp refused them)."""


class Endpoint:
    """One URL to POST to, with its request head rendered once instead of on every call."""

    __slots__ = ("head", "host", "key", "port")

    def __init__(self, host: str, port: int, target: str, host_header: str, headers: Mapping[str, str]) -> None:
        lines = [
            f"POST {target} HTTP/1.1",
            f"Host: {host_header}",
            # This client decodes no content coding, so it asks for none.
            "Accept-Encoding: identity",
        ]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if any("\r" in line or "\n" in line for line in lines):
            # A CR or LF inside a value would let it inject headers (aiohttp refuses them too).
            raise ValueError(f"newline or carriage return in the request head of {target}")
        head = "\r\n".join(lines) + "\r\n"
        self.key = (host, port)
        self.host = host
        self.port = port
        self.head = head.encode("latin-1")

    def request(self, body: bytes, extra: bytes = b"") -> bytes:
        """``extra``: header lines of this request alone, each ending in CRLF, which the
        caller renders from values that cannot hold a CR or LF."""
        return b"".join((self.head, extra, b"Content-Length: ", str(len(body)).encode(), b"\r\n\r\n", body))


#: Addresses to connect to for (host, port), in order, instead of the system resolver's.
Resolve = Callable[[str, int], Awaitable[list[str]]]


def endpoint(url: str, headers: Mapping[str, str]) -> Endpoint | None:
    """The ``Endpoint`` of a plain ``http://`` URL; None for what only aiohttp handles
    (https, credentials in the URL, a query or fragment, a non-ASCII host name)."""
    parts = urlsplit(url)
    host = parts.hostname
    if (
        parts.scheme.lower() != "http"
        or not host
        or not host.isascii()
        or parts.username is not None
        or parts.password is not None
        or parts.query
        or parts.fragment
    ):
        return None
    try:
        port = 80 if parts.port is None else parts.port
    except ValueError:
        return None
    shown = f"[{host}]" if ":" in host else host
    host_header = shown if port == 80 else f"{shown}:{port}"
    target = quote(parts.path or "/", safe="/%:@!$&'()*+,;=~")
    return Endpoint(host, port, target, host_header, headers)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class _Connection(asyncio.Protocol):
    """One TCP connection: an asyncio protocol that feeds llhttp and answers one waiter."""

    __slots__ = (
        "_body",
        "_framed",
        "_headers_done",
        "_parser",
        "_status",
        "_waiter",
        "closed",
        "idle",
        "idle_since",
        "key",
        "loop",
        "pool",
        "retry_after",
        "transport",
    )

    def __init__(self, pool: Http11Pool, key: tuple[str, int], loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.key = key
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[tuple[int, bytes, bool]] | None = None
        #: The answer's ``Retry-After`` value (a 429 or 503 asks to be called again later).
        self.retry_after: bytes | None = None
        self._reset()

    def _reset(self) -> None:
        self._status = 0
        self._body: list[bytes] = []
        self._headers_done = False
        self.retry_after = None
        #: Content-Length or chunked: the body has an end of its own (else it ends at EOF).
        self._framed = False

    # -- use by the pool ------------------------------------------------------------
    def send(self, request: bytes) -> asyncio.Future[tuple[int, bytes, bool]]:
        """Write one request; the future gets (status, body, may the connection be reused)."""
        assert self.transport is not None and self._waiter is None
        self._reset()
        self._waiter = waiter = self.loop.create_future()
        self.transport.write(request)
        return waiter

    def close(self, reason: Exception | None = None) -> None:
        """Close at once; a request still waiting on it fails with ``reason``."""
        self.closed = True
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(reason or HTTPFailure("connection closed by this node"))
        if self.transport is not None:
            self.transport.abort()

    # -- asyncio.Protocol -----------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.pool.opened(self)

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # idle, or the answer is complete: nothing more is owed
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self.close(InvalidResponse(f"invalid HTTP response: {exc}"))

    def eof_received(self) -> bool:
        # The transport closes now and calls connection_lost a little later: never hand
        # this connection out in between (the request would be lost without a trace).
        self.closed = True
        self.pool.lost(self)
        return False  # close; connection_lost decides what the EOF meant

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.lost(self)
        waiter, self._waiter = self._waiter, None
        if waiter is None or waiter.done():
            return
        if not self._headers_done:
            waiter.set_exception(exc if exc is not None else ClosedBeforeAnswer())
        elif exc is None and not self._framed:
            waiter.set_result((self._status, b"".join(self._body), False))  # read until close: done
        else:
            failure = IncompleteResponse("connection closed before the end of the response body")
            failure.__cause__ = exc
            waiter.set_exception(failure)

    # -- httptools callbacks --------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._waiter is None:
            raise InvalidResponse("bytes after the end of the response")

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"content-length" or (name == b"transfer-encoding" and b"chunked" in value.lower()):
            self._framed = True
        elif name == b"retry-after":
            self.retry_after = value

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        status = self._status
        if 100 <= status < 200 and status != 101:
            self._reset()  # an interim response (100 Continue, 103): the answer follows
            return
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((status, b"".join(self._body), self._parser.should_keep_alive()))


class Http11Pool:
    """Idle keep-alive connections per (host, port); as many open at once as callers need."""

    def __init__(self, max_idle: int = MAX_IDLE_PER_ORIGIN, idle_seconds: float = IDLE_SECONDS) -> None:
        self.max_idle = max_idle
        self.idle_seconds = idle_seconds
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._open: set[_Connection] = set()

    @property
    def open_connections(self) -> int:
        return len(self._open)

    async def post(
        self, endpoint: Endpoint, body: bytes, timeout: float, extra: bytes = b"", resolve: Resolve | None = None
    ) -> tuple[int, bytes, bytes | None]:
        """Status, body and ``Retry-After`` value (None without one) of one POST; ``timeout``
        bounds connect, request and response together (0 or less: no bound, as aiohttp's
        ``ClientTimeout(total=0)``). ``extra``: see ``Endpoint.request``; ``resolve``, for
        a host name (an IP address is connected to as it is): the addresses a new
        connection may use, whatever it raises is raised. A pool is used with one
        ``resolve`` or none: a kept connection is reused without resolving again."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadline = now + timeout if timeout > 0 else None
        connection = self._idle_connection(endpoint.key, now) or await self._connect(loop, endpoint, deadline, resolve)
        waiter = connection.send(endpoint.request(body, extra))
        timer = loop.call_at(deadline, _expire, waiter) if deadline is not None else None
        try:
            status, raw, keep_alive = await waiter
            retry_after = connection.retry_after  # read before the connection is reused
        except BaseException:  # failed, timed out or cancelled: the rest of the answer is unwanted
            connection.close()
            raise
        finally:
            if timer is not None:
                timer.cancel()
        if keep_alive:
            self._release(connection, loop.time())
        else:
            connection.close()
        return status, raw, retry_after

    async def close(self) -> None:
        """Close every connection, idle or in use (as closing an aiohttp session does)."""
        for connection in list(self._open):
            connection.close()
        self._open.clear()
        self._idle.clear()

    # -- connections ----------------------------------------------------------------
    def _idle_connection(self, key: tuple[str, int], now: float) -> _Connection | None:
        idle = self._idle.get(key)
        while idle:
            connection = idle.pop()  # the most recently used: the least likely to be timed out
            connection.idle = False
            if connection.closed or connection.transport is None or connection.transport.is_closing():
                continue
            if now - connection.idle_since > self.idle_seconds:
                connection.close()  # so are all below it: they were released earlier
                continue
            return connection
        return None

    def _release(self, connection: _Connection, now: float) -> None:
        if connection.closed:
            return
        idle = self._idle.setdefault(connection.key, [])
        while idle and now - idle[0].idle_since > self.idle_seconds:
            stale = idle.pop(0)
            stale.idle = False
            stale.close()
        if len(idle) >= self.max_idle:
            connection.close()
            return
        connection.idle = True
        connection.idle_since = now
        idle.append(connection)

    def opened(self, connection: _Connection) -> None:
        self._open.add(connection)

    def lost(self, connection: _Connection) -> None:
        """The peer (or we) closed it: an idle connection must never be handed out again."""
        self._open.discard(connection)
        if connection.idle:
            connection.idle = False
            idle = self._idle.get(connection.key)
            if idle is not None:
                with contextlib.suppress(ValueError):
                    idle.remove(connection)

    async def _connect(
        self, loop: asyncio.AbstractEventLoop, endpoint: Endpoint, deadline: float | None, resolve: Resolve | None
    ) -> _Connection:
        """A new connection; the last address's error when none of the host's addresses
        accepts (as aiohttp reports it), ``TimeoutError`` when the deadline passes first."""
        try:
            async with asyncio.timeout_at(deadline):
                if _is_ip(endpoint.host):
                    addresses = [endpoint.host]
                elif resolve is not None:
                    addresses = await resolve(endpoint.host, endpoint.port)
                else:
                    infos = await loop.getaddrinfo(endpoint.host, endpoint.port, type=socket.SOCK_STREAM)
                    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
                error: OSError | None = None
                for address in addresses:
                    try:
                        _, connection = await loop.create_connection(
                            lambda: _Connection(self, endpoint.key, loop), address, endpoint.port
                        )
                        return connection
                    except OSError as exc:  # also the kernel's ETIMEDOUT: ours arrives as a cancel
                        error = exc
                raise ConnectFailed(error or OSError(f"no address for {endpoint.host}"))
        except TimeoutError:  # the deadline (an OSError too, hence first)
            raise
        except OSError as exc:  # getaddrinfo
            raise ConnectFailed(exc) from None


def _expire(waiter: asyncio.Future[tuple[int, bytes, bool]]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())
