"""A minimal keep-alive HTTP/1.1 client for the load generator.

On 2 cores the load generator shares the CPU with the node, the service and the
database, so its own cost per request matters: aiohttp spends ~150 µs of CPU per
request here, this client a fraction of that. It speaks only what the benchmark needs:
one request at a time per connection, ``Content-Length`` or chunked responses, no
redirects, no TLS. Loopback only.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any


class HttpError(Exception):
    pass


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(HttpError(f"connection closed: {exc}"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.waiter is None or self.waiter.done():
            return
        parsed = self._parse()
        if parsed is not None:
            self.waiter.set_result(parsed)

    def _parse(self) -> tuple[int, bytes] | None:
        buffer = self.buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = bytes(buffer[:end]).lower()
        status = int(head[9:12])
        marker = head.find(b"\r\ncontent-length:")
        if marker >= 0:
            stop = head.find(b"\r\n", marker + 2)
            length = int(head[marker + 17 : stop if stop >= 0 else len(head)])
            if len(buffer) < end + 4 + length:
                return None
            body = bytes(buffer[end + 4 : end + 4 + length])
            del buffer[: end + 4 + length]
            return status, body
        if b"transfer-encoding: chunked" in head:
            position, parts = end + 4, []
            while True:
                line_end = buffer.find(b"\r\n", position)
                if line_end < 0:
                    return None
                size = int(bytes(buffer[position:line_end]).split(b";")[0], 16)
                if size == 0:
                    trailer_end = buffer.find(b"\r\n\r\n", line_end)
                    if trailer_end < 0:
                        return None
                    del buffer[: trailer_end + 4]
                    return status, b"".join(parts)
                if len(buffer) < line_end + 2 + size + 2:
                    return None
                parts.append(bytes(buffer[line_end + 2 : line_end + 2 + size]))
                position = line_end + 2 + size + 2
        raise HttpError("response without Content-Length or chunked encoding")


def _expire(waiter: asyncio.Future[tuple[int, bytes]], timeout: float) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError(f"no response within {timeout:g} s"))


class Connection:
    """One keep-alive connection; ``request`` is not re-entrant (one client, one request)."""

    def __init__(
        self, host: str, port: int, local_address: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        self.host, self.port, self.local_address = host, port, local_address
        self._protocol: _Protocol | None = None
        #: ``Host``, and ``headers`` (an operator's token, say), sent with every request.
        self._host_header = "".join(
            f"{name}: {value}\r\n" for name, value in {"Host": f"{host}:{port}", **(headers or {})}.items()
        ).encode()

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        local = (self.local_address, 0) if self.local_address else None
        _, protocol = await loop.create_connection(_Protocol, self.host, self.port, local_addr=local)
        return protocol

    async def request(
        self, method: str, target: str, body: bytes | None = None, timeout: float = 60.0
    ) -> tuple[int, bytes]:
        protocol = self._protocol
        if protocol is None or protocol.closed:
            protocol = self._protocol = await self._connect()
        head = [f"{method} {target} HTTP/1.1\r\n".encode(), self._host_header]
        if body is not None:
            head.append(b"Content-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n")
        head.append(b"\r\n")
        if body:
            head.append(body)
        loop = asyncio.get_running_loop()
        waiter = protocol.waiter = loop.create_future()
        assert protocol.transport is not None
        protocol.transport.write(b"".join(head))
        timer = loop.call_later(timeout, _expire, waiter, timeout)
        try:
            return await waiter
        except BaseException:
            self.close()
            raise
        finally:
            timer.cancel()
            protocol.waiter = None

    def close(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
        self._protocol = None


def json_body(value: Any) -> bytes:
    import msgspec

    return msgspec.json.encode(value)
