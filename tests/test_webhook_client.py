"""The webhook POST through the node's lean HTTP/1.1 client (``app.containers.http11``, as
``app.maintenance.webhook_http`` uses it for ``http://`` URLs), against a real receiver
(``tests/webhook_receiver.py``): each attempt's own headers on one kept connection, the
URL's host in ``Host`` while the connection goes to the address the allow-list approved,
3xx never followed, ``webhooks.timeout``, a refused connection. No database involved."""

from __future__ import annotations

import hashlib
import hmac
import time

import pytest

from app.config.settings import WebhookSettings
from app.containers import http11
from app.maintenance.webhook_http import AddressRefused, WebhookClient
from tests.webhook_receiver import Receiver

SECRET = "client-secret"


def _client(allowed: list[str], **settings: float) -> WebhookClient:
    return WebhookClient(WebhookSettings(allowed_hosts=allowed, secret=SECRET, **settings))  # type: ignore[arg-type]


def _signed(header: str, body: bytes) -> bool:
    fields = dict(part.split("=", 1) for part in header.split(","))
    expected = hmac.new(SECRET.encode(), f"{fields['t']}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields["v1"]) and abs(int(fields["t"]) - time.time()) < 60


async def test_each_attempt_carries_its_own_headers_on_one_kept_connection():
    async with Receiver() as receiver:
        client = _client(["127.0.0.1"])
        try:
            for attempt, (delivery, body) in enumerate([("d-1", b'{"a":1}'), ("d-2", b'{"b":22}'), ("d-1", b"[]")], 1):
                answer = await client.post(receiver.hook("each"), delivery, attempt, body)
                assert answer.delivered and answer.status_code == 200 and answer.error is None
            assert client._lean.open_connections == 1  # one keep-alive connection served all three
        finally:
            await client.close()
    got = receiver.of("each")
    assert [(r.delivery, r.headers["Jobnode-Attempt"], r.body) for r in got] == [
        ("d-1", "1", b'{"a":1}'),
        ("d-2", "2", b'{"b":22}'),
        ("d-1", "3", b"[]"),
    ]
    for r in got:
        assert r.headers["Host"] == f"127.0.0.1:{receiver.port}"
        assert r.headers["Content-Type"] == "application/json" and r.headers["Jobnode-Event"] == "job.finished"
        assert r.headers["User-Agent"] == "jobnode-webhooks"
        assert _signed(r.headers["Jobnode-Signature"], r.body)
    assert not _signed(got[0].headers["Jobnode-Signature"], got[1].body)


async def test_a_name_goes_to_the_address_approved_with_its_host_in_the_host_header():
    """``localhost`` may resolve to ::1 as well; only 127.0.0.1 is allowed, and the receiver
    listens there alone: the POST arrives only if the approved address is the one used."""
    async with Receiver() as receiver:
        client = _client(["localhost", "127.0.0.1/32"])
        refusing = _client(["localhost"])  # a name entry alone never allows loopback
        try:
            answer = await client.post(receiver.hook("named", host="localhost"), "d", 1, b"{}")
            refused = await refusing.post(receiver.hook("refused", host="localhost"), "d", 1, b"{}")
        finally:
            await client.close()
            await refusing.close()
    assert answer.delivered, answer
    (got,) = receiver.of("named")
    assert got.headers["Host"] == f"localhost:{receiver.port}"
    assert refused.refused and refused.status_code is None
    assert refused.error is not None and refused.error.startswith("refused: localhost resolves to ")
    assert "127.0.0.1" in refused.error and receiver.of("refused") == []


async def test_the_pool_connects_where_resolve_says_and_never_resolves_a_kept_connection_again():
    """A name no DNS knows: only the hook's answer can have led the connection anywhere."""
    calls: list[tuple[str, int]] = []

    async def resolve(host: str, port: int) -> list[str]:
        calls.append((host, port))
        return ["127.0.0.1"]

    async def refuse(host: str, port: int) -> list[str]:
        raise AddressRefused(f"{host} refused")

    async with Receiver() as receiver:
        pool = http11.Http11Pool()
        other = http11.Http11Pool()
        try:
            target = http11.endpoint(f"http://hooks.invalid:{receiver.port}/pinned", {"X-Fixed": "1"})
            assert target is not None
            for n in range(2):
                status, _, _ = await pool.post(target, b"{}", 5, f"X-Own: {n}\r\n".encode(), resolve)
                assert status == 200
            with pytest.raises(AddressRefused):
                await other.post(target, b"{}", 5, b"", refuse)
        finally:
            await pool.close()
            await other.close()
    assert calls == [("hooks.invalid", receiver.port)]  # once: the second POST reused the connection
    got = receiver.of("pinned")
    assert [(r.headers["Host"], r.headers["X-Fixed"], r.headers["X-Own"]) for r in got] == [
        (f"hooks.invalid:{receiver.port}", "1", "0"),
        (f"hooks.invalid:{receiver.port}", "1", "1"),
    ]


async def test_a_redirect_is_the_answer_a_slow_receiver_times_out_a_closed_port_cannot_connect():
    async with Receiver() as receiver:
        receiver.answers["moved"] = [("redirect", receiver.hook("target"))]
        receiver.answers["slow"] = [("slow", 3)]
        client = _client(["127.0.0.1"], timeout=0.5)
        try:
            moved = await client.post(receiver.hook("moved"), "d", 1, b"{}")
            started = time.monotonic()
            slow = await client.post(receiver.hook("slow"), "d", 1, b"{}")
            took = time.monotonic() - started
            after = await client.post(receiver.hook("after"), "d", 2, b"{}")  # a new connection
        finally:
            await client.close()
        down = Receiver()  # nothing listens on its port
        closed = _client(["127.0.0.1"])
        try:
            refused = await closed.post(down.hook("nobody"), "d", 1, b"{}")
        finally:
            await closed.close()
    assert (moved.status_code, moved.error, moved.delivered) == (302, "HTTP 302", False)
    assert receiver.of("target") == [] and len(receiver.of("moved")) == 1
    assert (slow.status_code, slow.error, slow.refused) == (None, "timed out after 0.5 s", False)
    assert 0.4 < took < 1.5
    assert after.delivered
    assert refused.status_code is None and not refused.refused
    assert refused.error == "cannot connect: Connection refused", refused.error
