"""The container client's lean HTTP/1.1 path (``app.containers.http11``) against real
asyncio servers on loopback, each scripted to answer one way: keep-alive, the ways a
response can be framed or cut, and every failure text a job step can end with.

Every test runs on the standard event loop and on uvloop (the node's loop under uvicorn).
"""

from __future__ import annotations

import asyncio
import email.utils
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
import uvloop

from app.config.settings import ContainerSettings
from app.containers import http11
from app.containers.client import ContainerClient, StepFailed, parse_retry_after
from tests.support import free_port

# The policy fixture works on every pytest-asyncio the project allows (>=0.24); its
# replacement hook exists only in the newest. Should the override stop working, the
# ``client`` fixture's loop check fails instead of uvloop going untested in silence.
pytestmark = pytest.mark.filterwarnings('ignore:Overriding the "event_loop_policy" fixture is deprecated')


@pytest.fixture(params=["asyncio", "uvloop"])
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    return uvloop.EventLoopPolicy() if request.param == "uvloop" else asyncio.DefaultEventLoopPolicy()


@dataclass
class Request:
    line: str
    headers: dict[str, str]  # names in lower case
    body: bytes
    connection: int  # 0 for the server's first connection, 1 for its second, …

    @property
    def data(self) -> Any:
        return msgspec.json.decode(self.body)["data"]


#: Writes the answer to one request; returns whether to keep reading that connection.
Handler = Callable[[asyncio.StreamWriter, Request], Awaitable[bool]]


@dataclass
class Service:
    """A container-protocol server that counts connections and records every request."""

    handler: Handler
    host: str = "127.0.0.1"
    connections: int = 0
    ended: int = 0  # connections over, from either side
    requests: list[Request] = field(default_factory=list)
    server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://[{self.host}]:{port}" if ":" in self.host else f"http://{self.host}:{port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number, self.connections = self.connections, self.connections + 1
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")[:-2]
                headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in head[1:])}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                request = Request(head[0], headers, body, number)
                self.requests.append(request)
                keep = await self.handler(writer, request)
                await writer.drain()
                if not keep:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self.ended += 1

    async def wait_ended(self, count: int) -> None:
        """Until ``count`` connections are over, and the client's loop has seen it too."""
        for _ in range(500):
            if self.ended >= count:
                await asyncio.sleep(0.05)
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{self.ended} connections ended, expected {count}")


def response(body: bytes, status: str = "200 OK", *, version: str = "HTTP/1.1", extra: str = "") -> bytes:
    return (
        f"{version} {status}\r\nContent-Type: application/json\r\n{extra}Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


async def echo(writer: asyncio.StreamWriter, request: Request) -> bool:
    writer.write(response(msgspec.json.encode(request.data)))
    return True


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[Service]]]:
    services: list[Service] = []

    async def start(handler: Handler, host: str = "127.0.0.1") -> Service:
        service = Service(handler, host)
        service.server = await asyncio.start_server(service._serve, host, 0)
        services.append(service)
        return service

    yield start
    for service in services:
        assert service.server is not None
        service.server.close()


@pytest.fixture
async def client(event_loop_policy: asyncio.AbstractEventLoopPolicy) -> AsyncIterator[ContainerClient]:
    on_uvloop = isinstance(asyncio.get_running_loop(), uvloop.Loop)
    assert on_uvloop == isinstance(event_loop_policy, uvloop.EventLoopPolicy), "not on the loop asked for"
    container_client = ContainerClient()
    yield container_client
    await container_client.close()


def settings(**extra: Any) -> ContainerSettings:
    return ContainerSettings(id="c", **extra)


async def failure(client: ContainerClient, url: str, **extra: Any) -> StepFailed:
    with pytest.raises(StepFailed) as caught:
        await client.call(settings(**extra), url, {"n": 1}, False)
    return caught.value


async def test_consecutive_calls_share_one_connection(serve, client):
    service = await serve(echo)
    outputs = [await client.call(settings(), service.url, {"n": n}, n % 2 == 0) for n in range(5)]
    assert outputs == [{"n": n} for n in range(5)]
    assert service.connections == 1
    first = service.requests[0]
    assert first.line == "POST /service_output HTTP/1.1"
    assert first.headers["host"] == service.url.removeprefix("http://")
    assert first.headers["content-type"] == "application/json"
    assert "authorization" not in first.headers
    assert msgspec.json.decode(first.body) == {"source": 1, "destination": 1, "data": {"n": 0}, "requires_proof": True}


async def test_concurrent_calls_open_as_many_connections_and_keep_them(serve, client):
    async def slow_echo(writer: asyncio.StreamWriter, request: Request) -> bool:
        await asyncio.sleep(0.05)
        return await echo(writer, request)

    service = await serve(slow_echo)
    for _ in range(2):
        outputs = await asyncio.gather(*(client.call(settings(), service.url, n, False) for n in range(8)))
        assert outputs == list(range(8))
    assert service.connections == 8


async def test_an_idle_connection_the_server_closed_is_not_used(serve, client):
    async def answer_then_close(writer: asyncio.StreamWriter, request: Request) -> bool:
        await echo(writer, request)
        return False  # a keep-alive answer, then the server's idle timeout (at once)

    service = await serve(answer_then_close)
    assert await client.call(settings(), service.url, 1, False) == 1
    await service.wait_ended(1)
    assert await client.call(settings(), service.url, 2, False) == 2
    assert service.connections == 2


@pytest.mark.parametrize(
    "version, extra", [("HTTP/1.1", "Connection: close\r\n"), ("HTTP/1.0", "")], ids=["connection-close", "http-1.0"]
)
async def test_a_response_that_ends_keep_alive_closes_the_connection(serve, client, version, extra):
    async def answer(writer: asyncio.StreamWriter, request: Request) -> bool:
        writer.write(response(msgspec.json.encode(request.data), version=version, extra=extra))
        return True  # the server would keep reading: the client must be the one to close

    service = await serve(answer)
    assert await client.call(settings(), service.url, 1, False) == 1
    await service.wait_ended(1)
    assert await client.call(settings(), service.url, 2, False) == 2
    assert service.connections == 2


async def test_http_1_0_keep_alive_is_honoured(serve, client):
    async def answer(writer: asyncio.StreamWriter, request: Request) -> bool:
        writer.write(
            response(msgspec.json.encode(request.data), version="HTTP/1.0", extra="Connection: keep-alive\r\n")
        )
        return True

    service = await serve(answer)
    assert [await client.call(settings(), service.url, n, False) for n in range(3)] == [0, 1, 2]
    assert service.connections == 1


async def test_chunked_body_in_separate_writes(serve, client):
    async def chunked(writer: asyncio.StreamWriter, request: Request) -> bool:
        body = msgspec.json.encode({"echo": request.data, "pad": "x" * 100})
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        for start in range(0, len(body), 7):
            piece = body[start : start + 7]
            writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            await writer.drain()
            await asyncio.sleep(0.001)
        writer.write(b"0\r\n\r\n")
        return True

    service = await serve(chunked)
    for n in range(3):
        assert await client.call(settings(), service.url, n, False) == {"echo": n, "pad": "x" * 100}
    assert service.connections == 1, "the end of a chunked body was not recognised"


async def test_response_split_into_single_bytes(serve, client):
    async def trickle(writer: asyncio.StreamWriter, request: Request) -> bool:
        for byte in response(msgspec.json.encode(request.data), extra="X-Padding: abc\r\n"):
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0)
        return True

    service = await serve(trickle)
    data = {"text": "héllo", "list": list(range(20))}
    assert await client.call(settings(), service.url, data, False) == data
    assert await client.call(settings(), service.url, 5, False) == 5
    assert service.connections == 1


async def test_body_read_until_the_server_closes(serve, client):
    async def unframed(writer: asyncio.StreamWriter, request: Request) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n")
        await writer.drain()
        writer.write(msgspec.json.encode(request.data))
        return False

    service = await serve(unframed)
    assert await client.call(settings(), service.url, {"long": "y" * 5000}, False) == {"long": "y" * 5000}
    assert await client.call(settings(), service.url, 2, False) == 2
    assert service.connections == 2


async def test_interim_100_continue_is_skipped(serve, client):
    async def with_continue(writer: asyncio.StreamWriter, request: Request) -> bool:
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()
        return await echo(writer, request)

    service = await serve(with_continue)
    assert await client.call(settings(), service.url, 1, False) == 1
    assert await client.call(settings(), service.url, 2, False) == 2
    assert service.connections == 1


async def test_bytes_after_the_response_spoil_the_connection(serve, client):
    async def trailing_garbage(writer: asyncio.StreamWriter, request: Request) -> bool:
        writer.write(response(msgspec.json.encode(request.data)) + b"HTTP/1.1 200 OK\r\n")
        return True

    service = await serve(trailing_garbage)
    assert await client.call(settings(), service.url, 1, False) == 1
    assert await client.call(settings(), service.url, 2, False) == 2
    assert service.connections == 2


async def test_server_closes_without_answering(serve, client):
    async def hang_up(writer: asyncio.StreamWriter, request: Request) -> bool:
        return False

    service = await serve(hang_up)
    failed = await failure(client, service.url, retries=2)
    assert (failed.error, failed.delivered) == ("connection closed by the container before it answered", True)
    assert len(service.requests) == 1, "a delivered request must not be re-sent"


async def test_request_on_a_reused_connection_is_not_sent_twice(serve, client):
    """A POST that met a closing keep-alive connection fails; it is not re-sent: the
    container may have run it (RFC 9112 §9.3.1.1; aiohttp does not retry a POST either)."""

    async def answer_once(writer: asyncio.StreamWriter, request: Request) -> bool:
        if len(service.requests) == 1:
            return await echo(writer, request)
        return False  # read the second request, then died

    service = await serve(answer_once)
    assert await client.call(settings(), service.url, 1, False) == 1
    failed = await failure(client, service.url)
    assert (failed.error, failed.delivered) == ("connection closed by the container before it answered", True)
    assert [r.connection for r in service.requests] == [0, 0]


async def test_server_closes_in_the_middle_of_the_body(serve, client):
    async def cut(writer: asyncio.StreamWriter, request: Request) -> bool:
        writer.write(response(b'{"long": "' + b"z" * 1000 + b'"}')[:-500])
        return False

    service = await serve(cut)
    failed = await failure(client, service.url)
    assert failed.delivered is True
    assert failed.error.startswith("request failed: IncompleteResponse: "), failed.error


async def test_not_http(serve, client):
    async def garbage(writer: asyncio.StreamWriter, request: Request) -> bool:
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        return True

    service = await serve(garbage)
    failed = await failure(client, service.url)
    assert failed.delivered is True
    assert failed.error.startswith("request failed: InvalidResponse: invalid HTTP response"), failed.error


async def test_refused_connection_is_not_delivered_and_is_retried(client):
    url = f"http://127.0.0.1:{free_port()}"
    failed = await failure(client, url)
    assert (failed.error, failed.delivered) == ("connection refused", False)
    started = time.monotonic()
    assert (await failure(client, url, retries=2)).error == "connection refused"
    assert time.monotonic() - started >= 0.15, "retries wait 0.05 s, then 0.1 s"


async def test_unknown_host_cannot_connect(client):
    failed = await failure(client, "http://no-such-host.invalid:3000")
    assert failed.delivered is False
    assert failed.error.startswith("cannot connect: "), failed.error


async def test_timeout_bounds_the_whole_call_and_drops_the_connection(serve, client):
    async def too_slow(writer: asyncio.StreamWriter, request: Request) -> bool:
        await asyncio.sleep(2)
        return await echo(writer, request)

    service = await serve(too_slow)
    started = time.monotonic()
    failed = await failure(client, service.url, timeout=0.2)
    assert time.monotonic() - started < 1.5
    assert (failed.error, failed.delivered) == ("timed out after 0.2 s", True)
    await service.wait_ended(1)  # the client gave the connection up (the server was still writing)


async def test_non_2xx_status_with_body_excerpt(serve, client):
    long_body = b"e" * 300

    async def unavailable(writer: asyncio.StreamWriter, request: Request) -> bool:
        writer.write(response(long_body, "503 Service Unavailable"))
        return True

    service = await serve(unavailable)
    failed = await failure(client, service.url)
    assert (failed.error, failed.delivered) == ("HTTP 503: " + "e" * 200 + "…", True)
    failed = await failure(client, service.url)
    assert service.connections == 1, "an error status with a complete body keeps the connection"


async def test_invalid_json(serve, client):
    async def not_json(writer: asyncio.StreamWriter, request: Request) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 8\r\n\r\nnot json")
        return True

    service = await serve(not_json)
    failed = await failure(client, service.url)
    assert (failed.error, failed.delivered) == ("not valid JSON: not json", True)


async def test_bearer_and_path_prefix(serve, client):
    service = await serve(echo)
    assert await client.call(settings(bearer="s3cret"), service.url + "/v1/model", 3, False) == 3
    (request,) = service.requests
    assert request.line == "POST /v1/model/service_output HTTP/1.1"
    assert request.headers["authorization"] == "Bearer s3cret"


async def test_ipv6_loopback(serve, client):
    if not socket.has_ipv6:
        pytest.skip("this Python has no IPv6 support")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"cannot bind [::1]: {exc}")
    service = await serve(echo, "::1")
    assert service.url.startswith("http://[::1]:")
    assert [await client.call(settings(), service.url, n, False) for n in range(2)] == [0, 1]
    assert service.connections == 1
    assert service.requests[0].headers["host"] == service.url.removeprefix("http://")


async def test_close_closes_idle_connections(serve, client):
    service = await serve(echo)
    assert await client.call(settings(), service.url, 1, False) == 1
    await client.close()
    await service.wait_ended(1)


async def test_cancelled_call_does_not_leave_its_connection_for_the_next(serve, client):
    async def slow_first(writer: asyncio.StreamWriter, request: Request) -> bool:
        if request.data == "slow":
            await asyncio.sleep(0.3)
        return await echo(writer, request)

    service = await serve(slow_first)
    task = asyncio.create_task(client.call(settings(), service.url, "slow", False))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await service.wait_ended(1)  # given up, not left open (nor pooled, to read the late answer)
    assert await client.call(settings(), service.url, "fast", False) == "fast"
    assert service.connections == 2


def test_only_plain_http_urls_take_the_lean_path():
    assert http11.endpoint("http://127.0.0.1:3000/service_output", {}) is not None
    assert http11.endpoint("HTTP://example.com/service_output", {}).key == ("example.com", 80)
    assert http11.endpoint("http://[::1]:8/x", {}).key == ("::1", 8)
    for url in (
        "https://example.com/service_output",
        "http://user:pw@example.com/service_output",
        "http://example.com/service_output?q=1",
        "http://example.com:99999/service_output",
        "http://bücher.example/service_output",
    ):
        assert http11.endpoint(url, {}) is None, url
    with pytest.raises(ValueError):
        http11.endpoint("http://example.com/service_output", {"Authorization": "Bearer a\r\nX-Evil: 1"})


async def test_connection_reset_is_worded_like_the_other_failures(serve, client):
    """A container that resets the connection (RST) instead of answering: a ContainerError
    in the form of the others, not an exception's repr."""

    async def reset(writer: asyncio.StreamWriter, request: Request) -> bool:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return False  # closed with linger 0: a reset

    service = await serve(reset)
    failed = await failure(client, service.url, retries=2)
    assert (failed.error, failed.delivered) == ("connection reset by the container before it answered", True)
    assert len(service.requests) == 1, "a delivered request must not be re-sent"


@pytest.mark.parametrize(
    "body, error",
    [
        (b'{"text": "a\\u0000b"}', "output contains a NUL character, which cannot be stored"),
        (b'{"a\\u0000": 1}', "output contains a NUL character, which cannot be stored"),
        (b"[" * 65 + b"]" * 65, "output is nested deeper than 64 levels"),
        (b"[" * 5000 + b"]" * 5000, "output is nested deeper than 64 levels"),  # too deep to decode at all
    ],
    ids=["nul", "nul-key", "deep-65", "deep-5000"],
)
async def test_outputs_that_cannot_be_stored_fail_the_step(serve, client, body, error):
    async def answer(writer: asyncio.StreamWriter, request: Request) -> bool:
        writer.write(response(body))
        return True

    service = await serve(answer)
    failed = await failure(client, service.url, retries=2)
    assert (failed.error, failed.delivered) == (error, True)
    assert len(service.requests) == 1


async def test_outputs_that_can_be_stored_pass_whatever_they_look_like(serve, client):
    """A literal backslash before ``u0000`` is no NUL, brackets inside strings are no
    nesting, and 64 levels are allowed: the checks' fast paths only send these to the walk."""
    outputs = [{"a": "\\u0000"}, {"s": "[{" * 100}, msgspec.json.decode(b"[" * 64 + b"]" * 64)]
    bodies = iter(msgspec.json.encode(output) for output in outputs)

    async def answer(writer: asyncio.StreamWriter, request: Request) -> bool:
        writer.write(response(next(bodies)))
        return True

    service = await serve(answer)
    assert [await client.call(settings(), service.url, 1, False) for _ in outputs] == outputs


async def test_the_depth_limit_is_the_clients(serve):
    async def answer(writer: asyncio.StreamWriter, request: Request) -> bool:
        writer.write(response(b'{"a": {"b": {}}}'))
        return True

    service = await serve(answer)
    strict = ContainerClient(max_json_depth=2)
    try:
        failed = await failure(strict, service.url)
        assert failed.error == "output is nested deeper than 2 levels"
    finally:
        await strict.close()
    lenient = ContainerClient(max_json_depth=3)
    try:
        assert await lenient.call(settings(), service.url, 1, False) == {"a": {"b": {}}}
    finally:
        await lenient.close()


async def test_a_nul_byte_in_an_error_body_is_not_stored_as_one(serve, client):
    """The error text is stored in a text column, which PostgreSQL refuses a NUL in."""

    async def broken(writer: asyncio.StreamWriter, request: Request) -> bool:
        writer.write(response(b"bad\x00thing", "500 Internal Server Error"))
        return True

    service = await serve(broken)
    failed = await failure(client, service.url)
    assert failed.error == "HTTP 500: bad\\x00thing"


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "aiohttp"])
@pytest.mark.parametrize(
    ("status", "extra", "reason", "retry_after"),
    [
        ("503 Service Unavailable", "Retry-After: 7\r\n", "5xx", 7.0),
        ("429 Too Many Requests", "retry-after:  2 \r\n", "429", 2.0),
        ("429 Too Many Requests", "Retry-After: soon\r\n", "429", None),  # garbage: ignored
        ("500 Internal Server Error", "Retry-After: 9\r\n", "5xx", None),  # only 429 and 503 ask
        ("502 Bad Gateway", "", "5xx", None),
        ("400 Bad Request", "Retry-After: 3\r\n", None, None),
        ("404 Not Found", "", None, None),
    ],
)
async def test_which_failures_a_retry_may_call_again(serve, client, lean, status, extra, reason, retry_after):
    """``retry_reason`` and ``retry_after`` (a container's ``retry``), the same from either client."""

    async def answer(writer: asyncio.StreamWriter, request: Request) -> bool:
        writer.write(response(b'{"detail": "x"}', status, extra=extra))
        return True

    service = await serve(answer)
    # Credentials in the URL take aiohttp's path (``http11.endpoint`` leaves them to it).
    url = service.url if lean else service.url.replace("http://", "http://user:pw@")
    failed = await failure(client, url)
    assert failed.error.startswith(f"HTTP {status[:3]}")
    assert (failed.retry_reason, failed.retry_after) == (reason, retry_after)


async def test_retry_after_as_an_http_date(serve, client):
    later = email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)

    async def busy(writer: asyncio.StreamWriter, request: Request) -> bool:
        writer.write(response(b"{}", "503 Service Unavailable", extra=f"Retry-After: {later}\r\n"))
        return True

    service = await serve(busy)
    failed = await failure(client, service.url)
    assert failed.retry_after is not None and 27 <= failed.retry_after <= 30
    assert parse_retry_after(b"Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # past: at once
    assert parse_retry_after("-5") is None and parse_retry_after(b"") is None


async def test_transport_failures_may_be_retried_and_bad_answers_not(serve, client):
    async def too_slow(writer: asyncio.StreamWriter, request: Request) -> bool:
        await asyncio.sleep(1)
        return False

    async def hang_up(writer: asyncio.StreamWriter, request: Request) -> bool:
        return False

    async def not_json(writer: asyncio.StreamWriter, request: Request) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nnot json")
        return True

    assert (await failure(client, (await serve(too_slow)).url, timeout=0.1)).retry_reason == "timeout"
    assert (await failure(client, (await serve(hang_up)).url)).retry_reason == "connection"
    assert (await failure(client, f"http://127.0.0.1:{free_port()}")).retry_reason == "connection"
    assert (await failure(client, (await serve(not_json)).url)).retry_reason is None
