"""Idempotent submits (SPEC §8, issue 17): ``Idempotency-Key`` on ``POST /api/jobs`` and
``/api/jobs/batch``, on both databases. The same key and body again answer the same and
store nothing (``Idempotent-Replayed: true``); another body is a 409; a refused request
keeps no key; keys are per client and expire; concurrent duplicates, through one node or
two node processes on one PostgreSQL database, make exactly one job."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from sqlalchemy import func, select, update

from app.clock import utcnow
from app.db.engine import Database
from app.db.models import IdempotencyKey as KeyRow
from app.db.models import Subscription
from app.jobs.idempotency import IdempotencyKey
from app.jobs.requests import JobRequest
from app.maintenance.pruner import prune_keys_batch
from tests.conftest import STANDARD_CONFIG
from tests.helpers import assert_error, assert_uuid4, job, jobs_of_client, other_address
from tests.support import NodeProcess, RunningNode, create_pg_database, drop_pg_database, migrated, unavailable

MakeNode = Callable[..., AbstractAsyncContextManager[RunningNode]]
REPLAYED = "idempotent-replayed"


def _config(enabled: bool = False, **retention: Any) -> dict[str, Any]:
    """``enabled``: the scheduler, and so the leader's maintenance (the pruners), run."""
    return {
        **STANDARD_CONFIG,
        "server": {"rate_limit": None},
        "scheduler": {"enabled": enabled, "lease_seconds": 1, "poll_interval": 0.2},
        "retention": retention,
    }


#: Due in a day: stored, and no job runs meanwhile. Fixed, so that its bodies are equal.
LATER = int(time.time()) + 86400


def _later(n: int = 1) -> bytes:
    """A subscription request due ``LATER``."""
    schedule = {"period": 60, "frequency": 3, "active_at": LATER}
    return msgspec.json.encode(job("echo", data={"n": n}, subscription=schedule))


async def _subscriptions_of(database: Database, client: str) -> int:
    async with database.read() as conn:
        count = select(func.count()).select_from(Subscription).where(Subscription.client == client)
        return int((await conn.execute(count)).scalar_one())


def _body(n: int = 1) -> bytes:
    return msgspec.json.encode(job("echo", data={"n": n}))


async def _post(
    http: httpx.AsyncClient, key: str | bytes | None, body: bytes, path: str = "/api/jobs"
) -> httpx.Response:
    headers: dict[str, Any] = {"content-type": "application/json"}
    if key is not None:
        headers["Idempotency-Key"] = key
    return await http.post(path, content=body, headers=headers)


def _ok(response: httpx.Response, replayed: bool) -> Any:
    assert response.status_code == 200, response.text
    assert response.headers.get(REPLAYED) == ("true" if replayed else None), response.headers
    return response.json()


async def _keys_of(database: Database, client: str) -> int:
    async with database.read() as conn:
        count = select(func.count()).select_from(KeyRow).where(KeyRow.client == client)
        return int((await conn.execute(count)).scalar_one())


async def test_the_same_submit_again_is_answered_the_same_and_stores_nothing(make_node: MakeNode, client_address):
    async with make_node(_config()) as node, node.client(client_address) as http:
        first = _ok(await _post(http, "order-1", _body()), replayed=False)
        assert_uuid4(first["id"])
        for _ in range(2):
            assert _ok(await _post(http, "order-1", _body()), replayed=True) == first
        batch = msgspec.json.encode([job("echo", data={"n": 2}), job(), job("echo", data={"n": 3})])
        answers = _ok(await _post(http, "batch-1", batch, "/api/jobs/batch"), replayed=False)
        assert [set(a) for a in answers] == [{"id"}, {"error"}, {"id"}], answers
        assert _ok(await _post(http, "batch-1", batch, "/api/jobs/batch"), replayed=True) == answers
        assert await jobs_of_client(node.node.database, client_address) == 3
        # Without a key, the same body is a new job each time, as ever.
        unkeyed = {_ok(await _post(http, None, _body()), replayed=False)["id"] for _ in range(2)}
        assert len(unkeyed) == 2 and first["id"] not in unkeyed
        assert await jobs_of_client(node.node.database, client_address) == 5


async def test_another_body_under_a_used_key_is_a_409(make_node: MakeNode, client_address):
    async with make_node(_config()) as node, node.client(client_address) as http:
        _ok(await _post(http, "k/1", _body(1)), replayed=False)
        reused = {"key": "k/1"}
        assert_error(await _post(http, "k/1", _body(2)), 409, "Idempotency key reused", reused)
        # The raw bytes are the request: the same JSON spaced otherwise is another body.
        spaced = msgspec.json.encode(job("echo", data={"n": 1})).replace(b",", b", ")
        assert_error(await _post(http, "k/1", spaced), 409, "Idempotency key reused", reused)
        # A key of POST /api/jobs is not one of the batch endpoint's.
        as_batch = msgspec.json.encode([job("echo", data={"n": 1})])
        assert_error(await _post(http, "k/1", as_batch, "/api/jobs/batch"), 409, "Idempotency key reused", reused)
        batch = msgspec.json.encode([job("echo")])
        _ok(await _post(http, "b/1", batch, "/api/jobs/batch"), replayed=False)
        other = msgspec.json.encode([job("echo"), job("echo")])
        assert_error(await _post(http, "b/1", other, "/api/jobs/batch"), 409, "Idempotency key reused", {"key": "b/1"})
        assert await jobs_of_client(node.node.database, client_address) == 2


@pytest.mark.parametrize("path", ["/api/jobs", "/api/jobs/batch"])
async def test_malformed_keys_are_a_400(make_node: MakeNode, client_address, path):
    body = _body() if path == "/api/jobs" else msgspec.json.encode([job("echo")])
    async with make_node(_config()) as node, node.client(client_address) as http:
        for key in ["", "x" * 256, "a b", "tab\there"]:
            response = await _post(http, key, body, path)
            assert_error(response, 400, "Invalid parameter", {"name": "Idempotency-Key", "value": key})
        # Not ASCII: header bytes are read as Latin-1, and echoed so. A control character
        # is refused by the HTTP server itself.
        invalid = {"name": "Idempotency-Key", "value": "clé".encode().decode("latin-1")}
        assert_error(await _post(http, "clé".encode(), body, path), 400, "Invalid parameter", invalid)
        assert_error(await _post(http, b"\x7f", body, path), 400, "Invalid HTTP request")
        assert await jobs_of_client(node.node.database, client_address) == 0
        # The bounds: 1 and 255 visible ASCII characters.
        for key in ["!", "~" * 255]:
            _ok(await _post(http, key, body, path), replayed=False)
        assert await jobs_of_client(node.node.database, client_address) == 2


async def test_a_refused_submit_keeps_no_key(make_node: MakeNode, client_address):
    async with make_node(_config()) as node, node.client(client_address) as http:
        bad = msgspec.json.encode(job())
        assert_error(await _post(http, "fix-me", bad), 400, "No containers specified")
        malformed = await _post(http, "fix-me", b"{")
        assert malformed.status_code == 400 and malformed.json()["error"] == "Invalid job request", malformed.text
        assert await _keys_of(node.node.database, client_address) == 0
        fixed = _ok(await _post(http, "fix-me", _body()), replayed=False)
        assert _ok(await _post(http, "fix-me", _body()), replayed=True) == fixed
        assert await jobs_of_client(node.node.database, client_address) == 1


async def test_two_clients_may_use_the_same_key(make_node: MakeNode, client_address):
    other = other_address(client_address)
    async with make_node(_config()) as node, node.client(client_address) as a, node.client(other) as b:
        first = _ok(await _post(a, "shared", _body()), replayed=False)
        second = _ok(await _post(b, "shared", _body()), replayed=False)
        assert first != second
        assert _ok(await _post(a, "shared", _body()), replayed=True) == first
        assert _ok(await _post(b, "shared", _body()), replayed=True) == second
        assert await jobs_of_client(node.node.database, client_address) == 1
        assert await jobs_of_client(node.node.database, other) == 1


async def test_keys_expire_and_the_pruner_deletes_them(make_node: MakeNode, client_address):
    """``retention.idempotency_hours`` 0.0003: about a second. An expired key is a new
    request (taken over before the pruner came by), and the leader's pruner deletes
    expired keys. Subscriptions due in an hour: the scheduler runs, and no job."""
    config = _config(enabled=True, idempotency_hours=0.0003)
    async with make_node(config) as node, node.client(client_address) as http:
        database = node.node.database
        first = _ok(await _post(http, "soon-gone", _later()), replayed=False)
        assert _ok(await _post(http, "soon-gone", _later()), replayed=True) == first
        await asyncio.sleep(1.3)
        again = _ok(await _post(http, "soon-gone", _later()), replayed=False)
        assert again != first
        assert await _subscriptions_of(database, client_address) == 2
        # The leader's pruner (every 0.5 s here) deletes the expired keys.
        deadline = time.monotonic() + 15
        while await _keys_of(database, client_address):
            assert time.monotonic() < deadline, "expired keys not pruned"
            await asyncio.sleep(0.2)
        assert await _subscriptions_of(database, client_address) == 2  # what they made stays


async def test_prune_keys_batch_deletes_only_expired_keys(make_node: MakeNode, client_address):
    async with make_node(_config()) as node, node.client(client_address) as http:
        database = node.node.database
        for k in range(3):
            _ok(await _post(http, f"p{k}", _body(k)), replayed=False)
        async with database.write() as conn:
            past = utcnow() - timedelta(seconds=1)
            await conn.execute(
                update(KeyRow).where(KeyRow.client == client_address, KeyRow.key != "p2").values(expires_at=past)
            )
        while await prune_keys_batch(database, utcnow(), batch=1):
            pass
        assert await _keys_of(database, client_address) == 1
        assert _ok(await _post(http, "p2", _body(2)), replayed=True)
        _ok(await _post(http, "p0", _body(0)), replayed=False)  # expired: a new job


async def test_a_subscription_with_a_key_replays_its_id(make_node: MakeNode, client_address):
    schedule = {"period": 60, "frequency": 3, "active_at": LATER}
    body = _later()
    async with make_node(_config()) as node, node.client(client_address) as http:
        first = _ok(await _post(http, "sub-1", body), replayed=False)
        assert _ok(await _post(http, "sub-1", body), replayed=True) == first
        batch = msgspec.json.encode([job("echo", subscription=schedule), job("echo")])
        answers = _ok(await _post(http, "sub-2", batch, "/api/jobs/batch"), replayed=False)
        assert _ok(await _post(http, "sub-2", batch, "/api/jobs/batch"), replayed=True) == answers
        assert await _subscriptions_of(node.node.database, client_address) == 2
        document = await http.get(f"/api/subscriptions/{first['id']}")
        assert document.status_code == 200, document.text
        assert await jobs_of_client(node.node.database, client_address) == 1


async def test_concurrent_duplicates_through_one_node_make_one_job(make_node: MakeNode, client_address):
    async with make_node(_config()) as node, node.client(client_address) as http:
        responses = await asyncio.gather(*(_post(http, "burst", _body()) for _ in range(40)))
        assert {r.status_code for r in responses} == {200}
        assert len({r.json()["id"] for r in responses}) == 1
        assert sum(r.headers.get(REPLAYED) == "true" for r in responses) == 39
        batch = msgspec.json.encode([job("echo", data={"i": i}) for i in range(5)])
        responses = await asyncio.gather(*(_post(http, "burst-b", batch, "/api/jobs/batch") for _ in range(20)))
        assert {r.status_code for r in responses} == {200}
        assert len({r.text for r in responses}) == 1
        assert await jobs_of_client(node.node.database, client_address) == 6
        # A subscription's request takes the client's quota lock first: the same holds.
        responses = await asyncio.gather(*(_post(http, "burst-s", _later()) for _ in range(20)))
        assert {r.status_code for r in responses} == {200}
        assert len({r.json()["id"] for r in responses}) == 1
        assert await _subscriptions_of(node.node.database, client_address) == 1


async def test_a_keyed_batch_item_the_database_refuses_fails_alone(make_node: MakeNode, client_address):
    """An item that passes the request checks but that the database refuses (too deep to
    encode on either database; called below the HTTP layer, which checks the depth) is
    answered alone and stored with its error; the others are stored, once."""
    deep: Any = {}
    for _ in range(5000):
        deep = {"a": deep}
    requests = [
        JobRequest(containers=["echo"], data={"n": 0}),
        JobRequest(containers=["echo"], data=deep),
        JobRequest(containers=["echo"], data={"n": 2}),
    ]
    key = IdempotencyKey("poison", "f" * 64)
    async with make_node(_config()) as node, node.client(client_address) as http:
        jobs = node.node.jobs
        submitted = await jobs.submit_keyed(client_address, requests, key, single=False)
        answers = submitted.answers
        assert not submitted.replayed
        assert answers[1]["error"] == "Invalid job request", answers
        assert answers[1]["params"]["reason"] == "data could not be stored: nested too deeply to encode"
        again = await jobs.submit_keyed(client_address, requests, key, single=False)
        assert again.replayed and again.answers == answers
        ids = [answers[0]["id"], answers[2]["id"]]
        read = await http.get("/api/jobs", params=[("id", i) for i in ids])
        assert [r["id"] for r in read.json()] == ids
        assert await jobs_of_client(node.node.database, client_address) == 2
        # A NUL in JSON (PostgreSQL refuses it; SQLite stores it): it passed the checks here.
        if node.node.database.is_postgresql:
            nul = [JobRequest(containers=["echo"], data={"a": "\x00"}), requests[0]]
            mixed = await jobs.submit_keyed(client_address, nul, IdempotencyKey("nul", "d" * 64), single=False)
            assert mixed.answers[0]["error"] == "Invalid job request", mixed.answers
            assert mixed.answers[0]["params"]["reason"].startswith("data could not be stored: "), mixed.answers
            assert set(mixed.answers[1]) == {"id"}
            assert await jobs_of_client(node.node.database, client_address) == 3
        # A single submit refused so keeps no key, as its 400 through the API does.
        alone = await jobs.submit_keyed(client_address, requests[1:2], IdempotencyKey("alone", "e" * 64), True)
        assert alone.answers[0]["error"] == "Invalid job request" and not alone.replayed
        assert await _keys_of(node.node.database, client_address) == (2 if node.node.database.is_postgresql else 1)


@pytest.mark.slow
@pytest.mark.postgres
async def test_two_node_processes_honour_a_key_at_the_same_instant(tmp_path: Path):
    """Two ``jobnode serve`` processes on one PostgreSQL database, each sent the same keyed
    submit at the same instant, round after round: exactly one job per key, one answer."""
    try:
        url = await create_pg_database()
    except Exception as exc:
        unavailable("PostgreSQL", str(exc))
    await migrated(url)
    config = {**_config(), "database": {"url": url}, "manage_containers": False}
    nodes = [
        NodeProcess(tmp_path, {**config, "scheduler": {"enabled": False, "node_id": f"n{k}"}}, f"n{k}")
        for k in range(2)
    ]
    database = Database(url)
    try:
        for node in nodes:
            node.spawn()
        for node in nodes:
            node.wait_healthy()
        async with nodes[0].client() as a, nodes[1].client() as b:
            for round_ in range(20):
                body, batch = (
                    _body(round_),
                    msgspec.json.encode([job("echo", data={"r": round_, "i": i}) for i in range(3)]),
                )
                one, two, three, four = await asyncio.gather(
                    _post(a, f"round-{round_}", body),
                    _post(b, f"round-{round_}", body),
                    _post(a, f"batch-{round_}", batch, "/api/jobs/batch"),
                    _post(b, f"batch-{round_}", batch, "/api/jobs/batch"),
                )
                assert one.status_code == two.status_code == three.status_code == four.status_code == 200
                assert one.json() == two.json() and three.json() == four.json()
                assert [one.headers.get(REPLAYED), two.headers.get(REPLAYED)].count("true") == 1
                assert [three.headers.get(REPLAYED), four.headers.get(REPLAYED)].count("true") == 1
        assert await jobs_of_client(database, "127.0.0.1") == 20 * 4
    finally:
        for node in nodes:
            node.kill()
        await database.dispose()
        await drop_pg_database(url)
