"""A fast container-protocol echo service for the benchmark (asyncio, one process).

``tests/services/server.py`` is a ThreadingHTTPServer (a thread per connection), too
slow to tell the node's cost apart from the service's. This one speaks just enough
HTTP/1.1 for keep-alive clients (aiohttp, the node's container client):

    POST /service_output   body {"data": ...} -> 200, the ``data`` as JSON
    GET  /health           200 {"status": "ok"}
    anything else          404

Requests must carry ``Content-Length`` (no chunked bodies); pipelined requests are
answered in order. Run: ``python -m tests.bench.echo --port 3000`` (uses uvloop when
installed). Both the raw and the end-to-end measurements go through this same service.

``--work-us N`` makes each ``/service_output`` call spend N µs of CPU before it answers,
as a service computing its answer does: with 250 µs it answers 3,000–4,000 requests per
second on any machine, the speed of the reference in issue 5 (the Infernet node's echo
service), against which the ratio of end-to-end to raw rate is the figure that matters.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
import time

import msgspec

_decode = msgspec.json.Decoder()
_encode = msgspec.json.Encoder()

_HEALTH = b'{"status":"ok"}'
_NOT_FOUND = b'{"detail":"not found"}'
_BAD = b'{"detail":"body must be a JSON object with a \\"data\\" key"}'


def _response(status: bytes, body: bytes) -> bytes:
    return (
        b"HTTP/1.1 "
        + status
        + b"\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


def spend_cpu(seconds: float) -> None:
    """Busy for ``seconds`` of this process's CPU time (not wall time: a service that
    shares the cores with the node still spends the same CPU per call)."""
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


class EchoProtocol(asyncio.Protocol):
    __slots__ = ("buffer", "transport")

    #: CPU seconds each ``/service_output`` call spends before answering (``--work-us``).
    work = 0.0
    #: Seconds each ``/service_output`` answer waits before it is sent (``--delay-ms``).
    delay = 0.0

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        out: list[bytes] = []
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buffer[:end]
            length = 0
            marker = head.lower().find(b"\r\ncontent-length:")
            if marker >= 0:
                stop = head.find(b"\r\n", marker + 2)
                length = int(head[marker + 17 : stop if stop >= 0 else len(head)])
            if len(buffer) < end + 4 + length:
                break
            body = buffer[end + 4 : end + 4 + length]
            buffer = buffer[end + 4 + length :]
            out.append(self.handle(head, body))
        self.buffer = buffer
        if out and self.transport is not None:
            if EchoProtocol.delay:  # answers of one read leave together, in order
                asyncio.get_running_loop().call_later(EchoProtocol.delay, self._send, b"".join(out))
            else:
                self.transport.write(b"".join(out))

    def _send(self, answers: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(answers)

    @staticmethod
    def handle(head: bytes, body: bytes) -> bytes:
        line = head[: head.find(b"\r\n")] if b"\r\n" in head else head
        parts = line.split(b" ")
        method, path = parts[0], parts[1] if len(parts) > 1 else b""
        if method == b"POST" and path == b"/service_output":
            try:
                request = _decode.decode(body)
                data = request["data"]
            except (msgspec.DecodeError, KeyError, TypeError):
                return _response(b"400 Bad Request", _BAD)
            if EchoProtocol.work:
                spend_cpu(EchoProtocol.work)
            return _response(b"200 OK", _encode.encode(data))
        if method == b"GET" and path == b"/health":
            return _response(b"200 OK", _HEALTH)
        return _response(b"404 Not Found", _NOT_FOUND)


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(EchoProtocol, host, port, backlog=1024, reuse_address=True)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"bench echo service listening on {host}:{port}", file=sys.stderr, flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "3000")))
    parser.add_argument("--work-us", type=float, default=0.0, help="CPU µs spent per /service_output call")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="ms each /service_output answer waits")
    args = parser.parse_args(argv)
    EchoProtocol.work = args.work_us / 1e6
    EchoProtocol.delay = args.delay_ms / 1e3
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        asyncio.run(serve(args.host, args.port))
    else:
        uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
