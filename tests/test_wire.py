"""A response leaves the node in one send: its head and body reach the client as one TCP
segment (uvicorn writes them apart; ``app.http.wire.CorkedTransport`` joins them), with
both of uvicorn's parsers; a streamed body still arrives whole and in order, and a closing
response is sent before the connection closes."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import uvicorn

from app.http.wire import JsonErrorsH11Protocol, protocol_class, server_options
from tests.support import free_port

#: ``struct tcp_info``'s ``tcpi_data_segs_in`` (Linux 4.6 and later): segments with data.
DATA_SEGS_IN = 152
pytestmark = pytest.mark.skipif(not hasattr(socket, "TCP_INFO"), reason="counts segments with Linux's TCP_INFO")
PROTOCOLS = {"httptools": protocol_class(), "h11": JsonErrorsH11Protocol}


def data_segments_in(sock: socket.socket) -> int:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return struct.unpack_from("I", info, DATA_SEGS_IN)[0]


async def app(scope: dict[str, Any], receive: Callable, send: Callable) -> None:
    """``/`` answers 64 bytes with a length; ``/stream`` three chunks, 20 ms apart."""
    if scope["type"] != "http":
        return
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"one,", b"two,"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
            await asyncio.sleep(0.02)
        await send({"type": "http.response.body", "body": b"three"})
        return
    body = b"x" * 64
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"64")]})
    await send({"type": "http.response.body", "body": body})


@asynccontextmanager
async def serving(protocol: type[asyncio.Protocol]) -> AsyncIterator[int]:
    port = free_port()
    options = {**server_options(), "http": protocol}
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="error", **options)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        yield port
    finally:
        server.should_exit = True
        await task


def read_response(sock: socket.socket) -> bytes:
    """The response's bytes, up to the end of its body (a length, a last chunk, or EOF)."""
    answer = b""
    while True:
        data = sock.recv(65536)
        if not data:
            return answer
        answer += data
        head, _, body = answer.partition(b"\r\n\r\n")
        if b"content-length: 64" in head.lower() and len(body) >= 64:
            return answer
        if b"transfer-encoding: chunked" in head.lower() and body.endswith(b"0\r\n\r\n"):
            return answer


def exchange(port: int, requests: list[bytes]) -> tuple[list[bytes], int]:
    """Send each request once the previous answer is in; the answers and the data
    segments that carried them."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        answers = []
        for request in requests:
            sock.sendall(request)
            answers.append(read_response(sock))
        return answers, data_segments_in(sock)


@pytest.mark.parametrize("parser", sorted(PROTOCOLS))
async def test_each_response_is_one_segment(parser: str) -> None:
    async with serving(PROTOCOLS[parser]) as port:
        answers, segments = await asyncio.to_thread(exchange, port, [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"] * 5)
    assert all(a.startswith(b"HTTP/1.1 200") and a.endswith(b"x" * 64) for a in answers), answers
    assert segments == 5


@pytest.mark.parametrize("parser", sorted(PROTOCOLS))
async def test_a_streamed_body_arrives_in_order_and_a_closing_answer_before_the_close(parser: str) -> None:
    stream = b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n"
    closing = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    async with serving(PROTOCOLS[parser]) as port:
        (streamed, last), segments = await asyncio.to_thread(exchange, port, [stream, closing])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(closing)
            alone = await asyncio.to_thread(read_response, sock)
            rest = await asyncio.to_thread(sock.recv, 1)
    body = streamed.partition(b"\r\n\r\n")[2]
    assert body == b"4\r\none,\r\n4\r\ntwo,\r\n5\r\nthree\r\n0\r\n\r\n", streamed
    # The stream's chunks 20 ms apart leave as they come (one segment each), not at the end.
    assert segments == 4
    for answer in (last, alone):
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"x" * 64), answer
    assert rest == b""  # closed after the answer
