"""Jobs run: chains through real container-protocol services (run as host processes and
configured by ``url``, i.e. unmanaged containers), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select

from app.clock import utcnow
from app.db.models import Job, JobStep
from app.jobs.transitions import MAX_CLAIM_POSTGRESQL
from tests.conftest import BACKENDS
from tests.helpers import assert_error, fresh_database, job, submit
from tests.support import RunningNode, free_port, node_settings, serve_node, wait_finished


def _config(*containers: dict[str, Any], **scheduler: Any) -> dict[str, Any]:
    return {"scheduler": {"poll_interval": 0.2, **scheduler}, "containers": list(containers)}


def _container(cid: str, url: str, **extra: Any) -> dict[str, Any]:
    return {"id": cid, "url": url, **extra}


@pytest.fixture(params=BACKENDS)
def make_fresh_node(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Callable[[dict[str, Any]], AbstractAsyncContextManager[RunningNode]]:
    """A node on a database of its own: no job of another test waits in it."""

    @asynccontextmanager
    async def factory(config: dict[str, Any]) -> AsyncIterator[RunningNode]:
        async with fresh_database(request.param, tmp_path) as url, serve_node(node_settings(url, config)) as node:
            yield node

    return factory


async def _run(node, http, body: dict[str, Any]) -> dict[str, Any]:
    job_id = await submit(http, body)
    return (await wait_finished(http, [job_id]))[job_id]


async def test_chain_of_one_and_three(make_node, host_service, client_address):
    echo, double, triple = (
        host_service("echo"),
        host_service("transform"),
        host_service("transform", FACTOR=3, NAME="x3"),
    )
    config = _config(
        _container("echo", echo.url), _container("double", double.url, external=False), _container("triple", triple.url)
    )
    async with make_node(config) as node, node.client(client_address) as http:
        one = await _run(node, http, job("echo", data={"value": 7}))
        assert one == {
            "id": one["id"],
            "status": "success",
            "result": {"container": "echo", "output": {"value": 7}},
            "intermediate_results": [],
        }
        three = await _run(node, http, job("echo", "double", "triple", data={"value": 2}))
        assert three["status"] == "success"
        assert three["result"] == {"container": "triple", "output": {"value": 12, "seen": ["transform", "x3"]}}
        assert three["intermediate_results"] == [
            {"container": "echo", "output": {"value": 2}},
            {"container": "double", "output": {"value": 4, "seen": ["transform"]}},
        ]
        plain = (await http.get("/api/jobs", params={"id": three["id"]})).json()
        assert plain == [{"id": three["id"], "status": "success", "result": three["result"]}]


async def test_each_kind_of_container_error(make_node, host_service, client_address):
    fail, bad, slow, exits = (
        host_service("fail"),
        host_service("badjson"),
        host_service("slow", DELAY=5),
        host_service("exit"),
    )
    nobody = f"http://127.0.0.1:{free_port()}"
    config = _config(
        _container("fail", fail.url),
        _container("bad", bad.url),
        _container("slow", slow.url, timeout=0.3),
        _container("exits", exits.url),
        _container("nobody", nobody),
    )
    expected = {
        "fail": 'HTTP 500: {"detail": "boom"}',
        "bad": "not valid JSON: not json",
        "slow": "timed out after 0.3 s",
        "exits": "connection closed by the container before it answered",
        "nobody": "connection refused",
    }
    async with make_node(config) as node, node.client(client_address) as http:
        for container, error in expected.items():
            result = await _run(node, http, job(container))
            assert result["status"] == "failed", result
            assert result["result"] == {"container": container, "error": error}
            assert result["intermediate_results"] == []


async def test_failure_mid_chain_stops_the_chain(make_node, host_service, client_address):
    first, fail, last = host_service("transform"), host_service("fail"), host_service("count")
    config = _config(_container("first", first.url), _container("fail", fail.url), _container("last", last.url))
    async with make_node(config) as node, node.client(client_address) as http:
        result = await _run(node, http, job("first", "fail", "last", data={"value": 1}))
    assert result["status"] == "failed"
    assert result["result"] == {"container": "fail", "error": 'HTTP 500: {"detail": "boom"}'}
    assert result["intermediate_results"] == [{"container": "first", "output": {"value": 2, "seen": ["transform"]}}]
    assert last.calls() == {}, "a container after the failing one was called"


async def test_progress_is_visible_while_running(make_node, host_service, client_address):
    echo, slow = host_service("echo"), host_service("slow", DELAY=2)
    config = _config(_container("echo", echo.url), _container("slow", slow.url))
    async with make_node(config) as node, node.client(client_address) as http:
        job_id = await submit(http, job("echo", "slow", data={"n": 1}))
        seen: list[Any] = []
        for _ in range(400):
            (result,) = (await http.get("/api/jobs", params={"id": job_id, "intermediate": "true"})).json()
            if result["status"] == "running" and result["intermediate_results"]:
                seen = result["intermediate_results"]
                break
            await asyncio.sleep(0.01)
        assert seen == [{"container": "echo", "output": {"n": 1}}]
        assert result["result"] is None
        final = (await wait_finished(http, [job_id]))[job_id]
        assert final["result"] == {"container": "slow", "output": {"n": 1}}


async def _max_overlap(node, job_ids: list[str]) -> int:
    async with node.node.database.read() as conn:
        rows = (
            await conn.execute(select(JobStep.started_at, JobStep.finished_at).where(JobStep.job_id.in_(job_ids)))
        ).all()
    events = sorted([(r.started_at, 1) for r in rows] + [(r.finished_at, -1) for r in rows], key=lambda e: (e[0], e[1]))
    level = peak = 0
    for _, delta in events:
        level += delta
        peak = max(peak, level)
    return peak


async def test_container_concurrency_bounds_calls_in_flight(make_node, host_service, client_address):
    slow = host_service("slow", DELAY=0.3)
    config = _config(_container("slow", slow.url, concurrency=2))
    async with make_node(config) as node, node.client(client_address) as http:
        ids = [
            a["id"]
            for a in (await http.post("/api/jobs/batch", json=[job("slow", data={"i": i}) for i in range(8)])).json()
        ]
        results = await wait_finished(http, ids)
        assert {r["status"] for r in results.values()} == {"success"}
        assert await _max_overlap(node, ids) == 2


async def test_max_concurrent_jobs_bounds_the_node(make_node, host_service, client_address):
    slow = host_service("slow", DELAY=0.3)
    config = _config(_container("slow", slow.url, concurrency=16), max_concurrent_jobs=3)
    async with make_node(config) as node, node.client(client_address) as http:
        ids = [
            a["id"]
            for a in (await http.post("/api/jobs/batch", json=[job("slow", data={"i": i}) for i in range(9)])).json()
        ]
        await wait_finished(http, ids)
        assert await _max_overlap(node, ids) == 3


async def test_many_jobs_each_run_once(make_node, host_service, client_address):
    counter = host_service("count")
    config = _config(_container("count", counter.url, concurrency=8), max_concurrent_jobs=16)
    async with make_node(config) as node, node.client(client_address) as http:
        body = [job("count", data={"job": f"{client_address}-{i}"}) for i in range(200)]
        ids = [a["id"] for a in (await http.post("/api/jobs/batch", json=body)).json()]
        results = await wait_finished(http, ids)
    assert all(r["status"] == "success" for r in results.values())
    assert counter.calls() == {f"{client_address}-{i}": 1 for i in range(200)}


async def test_delivered_failures_are_not_retried(make_node, host_service, client_address):
    fail = host_service("fail")
    nobody = f"http://127.0.0.1:{free_port()}"
    config = _config(_container("fail", fail.url, retries=3), _container("nobody", nobody, retries=2))
    async with make_node(config) as node, node.client(client_address) as http:
        assert (await _run(node, http, job("fail", data={"job": "r"})))["status"] == "failed"
        refused = await _run(node, http, job("nobody"))
    assert fail.calls() == {"r": 1}
    assert refused["result"] == {"container": "nobody", "error": "connection refused"}


async def test_a_new_job_does_not_wait_for_the_poll(make_node, host_service, client_address):
    echo = host_service("echo")
    config = _config(_container("echo", echo.url), poll_interval=60)
    async with make_node(config) as node, node.client(client_address) as http:
        job_id = await submit(http, job("echo"))
        # With a 60 s poll, only the wake-up after the commit can finish it within this bound.
        assert (await wait_finished(http, [job_id], timeout=10))[job_id]["status"] == "success"


async def test_a_node_with_room_stores_a_new_job_already_running(make_fresh_node, host_service, client_address):
    """An idle node claims the job in the INSERT that stores it: an operator sees it
    running on its first attempt, under this node's lease, from the moment the id exists."""
    slow = host_service("slow", DELAY=0.5)
    # No poll: a claim under way holds every free slot, and the job would wait for it.
    config = _config(_container("slow", slow.url), node_id=f"room-{client_address}", poll_interval=60)
    async with make_fresh_node(config) as node, node.client(client_address) as http:
        job_id = await submit(http, job("slow"))
        async with node.node.database.read() as conn:
            row = (await conn.execute(select(Job).where(Job.id == job_id))).one()
        assert (row.status, row.attempts, row.lease_owner) == ("running", 1, f"room-{client_address}")
        assert row.lease_expires_at > row.created_at and row.started_at >= row.created_at
        assert (await wait_finished(http, [job_id]))[job_id]["status"] == "success"
        async with node.node.database.read() as conn:
            row = (await conn.execute(select(Job).where(Job.id == job_id))).one()
        assert (row.status, row.attempts, row.lease_owner) == ("success", 1, None)


async def test_new_jobs_queue_behind_waiting_ones(make_fresh_node, host_service, client_address):
    """A node at capacity stores new jobs pending, and a job submitted after them does not
    jump the queue even once a slot is free: jobs start in the order they were submitted."""
    slow = host_service("slow", DELAY=0.3)
    # No poll: a claim under way holds every free slot, and the batch would wait for it.
    # Finishing jobs wake the claim loop of a full node.
    config = _config(_container("slow", slow.url, concurrency=16), max_concurrent_jobs=2, poll_interval=60)
    async with make_fresh_node(config) as node, node.client(client_address) as http:
        batch = [
            a["id"]
            for a in (await http.post("/api/jobs/batch", json=[job("slow", data={"i": i}) for i in range(5)])).json()
        ]
        async with node.node.database.read() as conn:
            stored = dict((await conn.execute(select(Job.id, Job.status).where(Job.id.in_(batch)))).all())
        assert [stored[job_id] for job_id in batch] == ["running"] * 2 + ["pending"] * 3
        await wait_finished(http, batch[:2])  # two slots free: the waiting ones take them
        late = await submit(http, job("slow", data={"i": 5}))
        ids = [*batch, late]
        await wait_finished(http, ids)
        async with node.node.database.read() as conn:
            started = dict((await conn.execute(select(Job.id, Job.started_at).where(Job.id.in_(ids)))).all())
    assert sorted(ids, key=lambda job_id: started[job_id]) == ids


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_backlog_is_claimed_16_jobs_at_a_time_on_postgresql_all_at_once_on_sqlite(
    backend, tmp_path, host_service, client_address
):
    """A node with 40 slots free and 40 jobs waiting takes them in claims of at most 16 on
    PostgreSQL (``MAX_CLAIM_POSTGRESQL``), one after the other, and runs them all; on SQLite
    in one. The jobs of one claim share its time as their ``started_at``."""
    echo = host_service("echo")
    runs = _config(_container("echo", echo.url, concurrency=64), max_concurrent_jobs=40, poll_interval=60)
    stores = {**runs, "scheduler": {**runs["scheduler"], "enabled": False}}
    async with fresh_database(backend, tmp_path) as url:
        async with serve_node(node_settings(url, stores)) as front, front.client(client_address) as http:
            batch = [job("echo", data={"i": i}) for i in range(40)]
            ids = [answer["id"] for answer in (await http.post("/api/jobs/batch", json=batch)).json()]
        async with serve_node(node_settings(url, runs)) as node, node.client(client_address) as http:
            results = await wait_finished(http, ids, timeout=20)
            async with node.node.database.read() as conn:
                started = (await conn.execute(select(Job.started_at).where(Job.id.in_(ids)))).scalars().all()
    assert {result["status"] for result in results.values()} == {"success"}
    claims = sorted(Counter(started).values(), reverse=True)
    assert sum(claims) == 40
    if backend == "postgresql":
        assert claims[0] == MAX_CLAIM_POSTGRESQL and max(claims) <= MAX_CLAIM_POSTGRESQL and len(claims) >= 3, claims
    else:
        assert claims == [40], claims


async def test_jobs_stored_by_another_node_wake_this_one(postgresql_url, host_service, client_address):
    """Only the NOTIFY of the node that stored the job can start it within the bound: that
    node runs no scheduler, and this one polls once a minute."""
    echo = host_service("echo")
    runs = _config(_container("echo", echo.url), poll_interval=60, node_id=f"runs-{client_address}")
    stores = {**runs, "scheduler": {**runs["scheduler"], "enabled": False, "node_id": f"stores-{client_address}"}}
    async with (
        serve_node(node_settings(postgresql_url, stores)) as front,
        serve_node(node_settings(postgresql_url, runs)),
        front.client(client_address) as http,
    ):
        job_ids = [await submit(http, job("echo", data={"n": n})) for n in range(5)]
        results = await wait_finished(http, job_ids, timeout=10)
    assert {r["status"] for r in results.values()} == {"success"}


async def test_resume_skips_committed_steps(make_node, host_service, client_address):
    """A job that already committed step 0 (as after a crash) runs only the steps after it."""
    first, second = host_service("count"), host_service("transform")
    config = _config(_container("first", first.url), _container("second", second.url))
    async with make_node({**config, "scheduler": {"enabled": False}}) as node:
        job_id = "5f0a3c1e-8a4b-4c6d-9e2f-" + client_address.replace(".", "")[-12:].rjust(12, "0")
        now = utcnow()
        async with node.node.database.write() as conn:
            await conn.execute(
                insert(Job).values(
                    id=job_id,
                    client=client_address,
                    source="offchain",
                    containers=["first", "second"],
                    input={"value": 1},
                    requires_proof=False,
                    status="pending",
                    attempts=1,
                    stream=False,
                    run_after=now,
                    created_at=now,
                    # Set by its first claim: only a job claimed before is looked up for steps.
                    started_at=now,
                )
            )
            await conn.execute(
                insert(JobStep).values(
                    job_id=job_id,
                    position=0,
                    container="first",
                    output={"value": 5},
                    attempt=1,
                    started_at=now,
                    finished_at=now,
                )
            )
    async with make_node(config) as node, node.client(client_address) as http:
        result = (await wait_finished(http, [job_id]))[job_id]
        async with node.node.database.read() as conn:
            attempts = (await conn.execute(select(Job.attempts).where(Job.id == job_id))).scalar_one()
    assert first.calls() == {}
    assert result["result"] == {"container": "second", "output": {"value": 10, "seen": ["transform"]}}
    assert result["intermediate_results"] == [{"container": "first", "output": {"value": 5}}]
    assert attempts == 2


async def test_stream(make_node, host_service, client_address):
    transform = host_service("transform")
    config = _config(_container("t", transform.url), _container("u", transform.url))
    async with make_node(config) as node, node.client(client_address) as http:
        async with http.stream("POST", "/api/jobs/stream", json=job("t", data={"value": 4})) as response:
            assert response.status_code == 200
            chunks = [chunk async for chunk in response.aiter_bytes()]
        text = b"".join(chunks).decode()
        job_id, body = text.split("\n", 1)
        assert chunks[0] == f"{job_id}\n".encode(), "the id must come first, as its own chunk"
        assert body == '{"value": 8, "seen": ["transform"]}'
        result = (await wait_finished(http, [job_id]))[job_id]
        assert result["result"] == {"container": "t", "output": {"output": body}}
        assert_error(await http.post("/api/jobs/stream", json=job("t", "u")), 400, "Streaming supports one container")
        assert_error(
            await http.post("/api/jobs/stream", json=job("zzz")), 400, "Container not supported", {"container": "zzz"}
        )


async def test_resources_fan_out(make_node, host_service, client_address):
    echo = host_service("echo", NAME="e")
    nobody = f"http://127.0.0.1:{free_port()}"
    config = _config(_container("echo", echo.url), _container("nobody", nobody))
    async with make_node(config) as node, node.client(client_address) as http:
        assert (await http.get("/resources")).json() == {"echo": {"mode": "echo", "name": "e"}}
        with_model = (await http.get("/resources", params={"model_id": "m1"})).json()
        assert with_model == {"echo": {"mode": "echo", "name": "e", "model_id": "m1"}}


async def test_unmanaged_container_with_health_path_is_probed(make_node, host_service, client_address):
    echo = host_service("echo")
    nobody = f"http://127.0.0.1:{free_port()}"
    config = _config(
        _container("up", echo.url, health_path="/health"),
        _container("down", nobody, health_path="/health", startup_timeout=0.5),
    )
    async with make_node(config) as node, node.client(client_address) as http:
        for _ in range(200):
            ids = [c["id"] for c in (await http.get("/info")).json()["containers"]]
            if ids == ["up"]:
                break
            await asyncio.sleep(0.02)
        assert ids == ["up"]
        health = (await http.get("/health")).json()
        assert health["status"] == "healthy" and "down" in health["containers"]
