"""Requests the HTTP server refuses before the application sees them get the node's JSON
error shape: raw bytes on a socket to a real ``jobnode serve`` process, on SQLite and
PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import select
import socket
from collections.abc import Iterator

import pytest
import uvicorn

from app.http.wire import H11_MAX_HEAD_BYTES, MAX_HEADER_BYTES, JsonErrorsH11Protocol
from tests.conftest import STANDARD_CONFIG
from tests.support import NodeProcess, free_port

CHUNK = 8192


def _chunks(data: bytes) -> Iterator[bytes]:
    for start in range(0, len(data), CHUNK):
        yield data[start : start + CHUNK]


def exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` a chunk at a time, stopping once the server answers (it closes
    the connection then: more bytes would only reset it), and read the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        for chunk in _chunks(request):
            try:
                sock.sendall(chunk)
            except OSError:
                break
            if select.select([sock], [], [], 0.05)[0]:
                break
        answer = b""
        while True:
            try:
                data = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not data:
                break
            answer += data
            head, _, body = answer.partition(b"\r\n\r\n")
            if body and b"content-length" in head.lower():
                length = int(
                    next(
                        line.split(b":")[1]
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    )
                )
                if len(body) >= length:
                    break
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    return status, headers, body


def _json_error(answer: tuple[int, dict[str, str], bytes], status: int, expected: dict) -> None:
    got_status, headers, body = answer
    assert got_status == status, answer
    assert headers["content-type"] == "application/json", headers
    assert json.loads(body) == expected


@pytest.fixture
def node_process(database_url, tmp_path) -> Iterator[NodeProcess]:
    config = {**STANDARD_CONFIG, "manage_containers": False, "database": {"url": database_url}}
    process = NodeProcess(tmp_path, config)
    try:
        yield process.start()
    finally:
        process.kill()


def test_refused_requests_get_the_json_shape(node_process):
    port = node_process.port
    invalid = {"error": "Invalid HTTP request"}
    _json_error(exchange(port, b"GARBAGE\r\n\r\n"), 400, invalid)
    _json_error(exchange(port, b"GET /health HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n"), 400, invalid)
    # An over-long request line (httptools refuses a target past 64 KiB).
    _json_error(exchange(port, b"GET /health?" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"), 400, invalid)
    # A long target within the bound is served: a read of 1,000 ids is about 40 KB.
    status, _, body = exchange(
        port, b"GET /health?" + b"a" * 60_000 + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert status == 200 and json.loads(body)["status"] == "healthy"

    # Header fields past the limit (httptools has none of its own) are a 431.
    too_large = {"error": "Request header fields too large", "params": {"limit": MAX_HEADER_BYTES}}
    huge = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 1_000_000 + b"\r\n\r\n"
    _json_error(exchange(port, huge), 431, too_large)
    many = b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(20_000)) + b"\r\n"
    _json_error(exchange(port, many), 431, too_large)
    # Headers within the limit are served, and the node is still up after the refusals.
    fine = (
        b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: "
        + b"a" * (MAX_HEADER_BYTES - 100)
        + b"\r\nConnection: close\r\n\r\n"
    )
    status, _, body = exchange(port, fine)
    assert status == 200 and json.loads(body)["status"] == "healthy"
    # uvicorn logs a warning per refused request: clients do not control the log's volume.
    assert node_process.log().count("Invalid HTTP request received.") == 1, node_process.log()[-3000:]


async def test_the_h11_fallback_answers_in_json_too():
    """Without httptools uvicorn parses with h11: its refusals get the same shape."""

    async def app(scope, receive, send):
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"ok"})

    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        lifespan="off",
        log_level="error",
        http=JsonErrorsH11Protocol,
        h11_max_incomplete_event_size=H11_MAX_HEAD_BYTES,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        invalid = {"error": "Invalid HTTP request"}
        for request in (b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 200_000 + b"\r\n\r\n"):
            _json_error(await asyncio.to_thread(exchange, port, request), 400, invalid)
        status, _, body = await asyncio.to_thread(exchange, port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 200 and body == b"ok"
    finally:
        server.should_exit = True
        await task
