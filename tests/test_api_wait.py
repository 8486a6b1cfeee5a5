"""``GET /api/jobs?id=…&wait=<seconds>``: one request that answers when the jobs end, and
reads of running jobs served by the node that runs them; on SQLite and PostgreSQL."""

from __future__ import annotations

import time

import pytest

from app.db import listen
from app.db.listen import NodeConnection
from app.db.signal import CHANNEL, ENDED_CHANNEL, LEASE_CHANNEL, SUBSCRIPTIONS_CHANNEL, WEBHOOKS_CHANNEL
from app.jobs import service
from tests.helpers import assert_error, job, submit
from tests.operator_support import container, scheduled, wait_for


async def test_wait_answers_once_the_chain_ended(make_node, host_service, client_address):
    first, second = host_service("count", DELAY=0.3), host_service("transform")
    config = scheduled(container("first", first.url), container("second", second.url), lease_seconds=30)
    async with make_node(config) as node, node.client(client_address) as http:
        job_id = await submit(http, job("first", "second", data={"job": "w", "value": 2}))
        r = await http.get("/api/jobs", params={"id": job_id, "wait": "20", "intermediate": "true"})
        assert r.status_code == 200, r.text
        assert r.json() == [
            {
                "id": job_id,
                "status": "success",
                "result": {"container": "second", "output": {"value": 4, "seen": ["transform"]}},
                "intermediate_results": [{"container": "first", "output": {"job": "w", "value": 2}}],
            }
        ]
        assert first.calls() == {"w": 1}


async def test_wait_gives_up_at_its_time_and_answers_running(make_node, client_address):
    # No scheduler: the job stays queued.
    async with (
        make_node(scheduled(container("echo", "http://127.0.0.1:9"), enabled=False)) as node,
        node.client(client_address) as http,
    ):
        job_id = await submit(http, job("echo"))
        other = await submit(http, job("echo"))
        started = time.monotonic()
        r = await http.get("/api/jobs", params=[("id", job_id), ("id", other), ("wait", "0.4")])
        waited = time.monotonic() - started
        assert r.status_code == 200, r.text
        assert r.json() == [
            {"id": job_id, "status": "running", "result": None},
            {"id": other, "status": "running", "result": None},
        ]
        assert waited >= 0.4
        # wait=0 is an ordinary read.
        r = await http.get("/api/jobs", params={"id": job_id, "wait": "0"})
        assert r.json() == [{"id": job_id, "status": "running", "result": None}]


async def test_invalid_wait_is_a_400(node, client_address):
    async with node.client(client_address) as http:
        job_id = await submit(http, job("echo"))
        for value in ("soon", "-1", "nan", "inf", "31", ""):
            r = await http.get("/api/jobs", params={"id": job_id, "wait": value})
            assert_error(r, 400, "Invalid parameter", {"name": "wait", "value": value})


async def test_waiting_on_one_node_for_a_job_another_node_runs(
    make_node, host_service, client_address, monkeypatch: pytest.MonkeyPatch
):
    """On PostgreSQL the waiting node hears the end that the other node announces: with
    no re-read before the wait's end, the answer can come from nothing else. It hears
    such announcements only while a read waits for a job run elsewhere, and a linger
    after (``ENDED_LINGER_SECONDS``): each node's step commits announce every job they
    end, and hearing them costs a node CPU."""
    slow = host_service("count", DELAY=0.3)
    worker = scheduled(container("remote", slow.url), lease_seconds=30, node_id="worker")
    front = scheduled(container("remote", slow.url), enabled=False, node_id="front")
    async with make_node(worker) as at_worker, make_node(front) as api, api.client(client_address) as http:
        connection = api.node.connection
        if connection is not None:
            monkeypatch.setattr(service, "RECHECK_SECONDS", 60.0)
            monkeypatch.setattr(listen, "ENDED_LINGER_SECONDS", 3.0)  # the keep-alive checks it every 1 s
        async with at_worker.client(client_address) as worker_http:
            # A job of the worker's own, waited for there: nobody listens for ends.
            own = await submit(worker_http, job("remote", data={"job": "own"}))
            r = await worker_http.get("/api/jobs", params={"id": own, "wait": "20"})
            assert r.json()[0]["status"] == "success", r.text
        job_id = await submit(http, job("remote", data={"job": "r"}))
        r = await http.get("/api/jobs", params={"id": job_id, "wait": "20"})
        assert r.json() == [
            {"id": job_id, "status": "success", "result": {"container": "remote", "output": {"job": "r"}}}
        ]
        if connection is not None:
            assert not at_worker.node.connection.hearing_ended, "the worker's reads waited for its own jobs only"
            assert await _channels(connection) == {ENDED_CHANNEL} | _ALWAYS
            await wait_for(lambda: _not_hearing(connection), timeout=10)  # the linger passed
            assert await _channels(connection) == _ALWAYS


#: The channels a node listens on whatever its clients do.
_ALWAYS = {CHANNEL, LEASE_CHANNEL, SUBSCRIPTIONS_CHANNEL, WEBHOOKS_CHANNEL}


async def _channels(connection: NodeConnection) -> set[str]:
    """What the server has the node's connection listening to."""
    async with connection._querying:
        assert connection._conn is not None
        return {row[0] for row in await connection._conn.fetch("SELECT pg_listening_channels()")}


async def _not_hearing(connection: NodeConnection) -> bool:
    return not connection.hearing_ended


async def test_a_running_job_reads_the_same_from_memory_and_from_the_database(make_node, host_service, client_address):
    """The node running a job answers its reads itself; another node reads the database.
    Both see the committed steps, and a cancel on either is seen by both at once."""
    fast, slow = host_service("transform"), host_service("slow", DELAY=30)
    config = scheduled(
        container("fast", fast.url), container("slow", slow.url), lease_seconds=30, shutdown_grace=1, node_id="worker"
    )
    front_config = scheduled(container("fast", fast.url), container("slow", slow.url), enabled=False, node_id="front")
    async with (
        make_node(config) as worker,
        make_node(front_config) as front,
        worker.client(client_address) as at_worker,
        front.client(client_address) as at_front,
    ):
        job_id = await submit(at_worker, job("fast", "slow", data={"job": "m", "value": 1}))
        params = {"id": job_id, "intermediate": "true"}
        expected = [
            {
                "id": job_id,
                "status": "running",
                "result": None,
                "intermediate_results": [{"container": "fast", "output": {"value": 2, "seen": ["transform"]}}],
            }
        ]

        async def second_step_running() -> bool:
            return (await at_front.get("/api/jobs", params=params)).json() == expected

        await wait_for(second_step_running)
        assert worker.node.jobs.live.get(job_id, client_address) is not None  # served from memory
        assert (await at_worker.get("/api/jobs", params=params)).json() == expected

        # Cancelled through the other node: the worker hears it (NOTIFY on PostgreSQL, its
        # lease check otherwise) long before its 10 s heartbeat, and drops the step.
        r = await at_front.post(f"/api/jobs/{job_id}/cancel")
        assert r.status_code == 200, r.text
        cancelled = [{"id": job_id, "status": "failed", "result": {"container": "slow", "error": "cancelled"}}]
        assert (await at_front.get("/api/jobs", params={"id": job_id})).json() == cancelled

        async def worker_sees_the_cancel() -> bool:
            return (await at_worker.get("/api/jobs", params={"id": job_id})).json() == cancelled

        if worker.node.database.is_postgresql:
            await wait_for(worker_sees_the_cancel, timeout=5)
            assert not worker.node.scheduler.running


async def test_a_plain_read_of_a_job_running_here_is_held_until_it_ends(make_node, host_service, client_address):
    """Without ``wait``, a read of jobs that all run on this node waits up to
    ``server.poll_hold`` for them: a tight polling loop gets the result as it is committed."""
    slow = host_service("count", DELAY=0.5)
    for hold, expected in ((10, "success"), (0, "running")):
        config = scheduled(container("slow", slow.url), lease_seconds=30, server={"poll_hold": hold})
        async with make_node(config) as node, node.client(client_address) as http:
            job_id = await submit(http, job("slow", data={"job": f"hold{hold}"}))

            async def running_here(job_id: str = job_id) -> bool:
                return node.node.jobs.live.get(job_id, client_address) is not None

            await wait_for(running_here)
            r = await http.get("/api/jobs", params={"id": job_id})
            assert r.json()[0]["status"] == expected, (hold, r.text)
            await wait_for(lambda job_id=job_id: _finished(http, job_id))


async def test_a_plain_read_of_a_queued_job_is_not_held(make_node, client_address):
    config = scheduled(container("echo", "http://127.0.0.1:9"), enabled=False, server={"poll_hold": 10})
    async with make_node(config) as node, node.client(client_address) as http:
        job_id = await submit(http, job("echo"))
        started = time.monotonic()
        r = await http.get("/api/jobs", params={"id": job_id})
        assert r.json() == [{"id": job_id, "status": "running", "result": None}]
        assert time.monotonic() - started < 5, "a queued job's read waited for the hold"


async def _finished(http, job_id: str) -> bool:
    r = await http.get("/api/jobs", params={"id": job_id, "wait": "0"})
    return r.json()[0]["status"] != "running"
