"""A step retry waits in the database, not in a process: a node killed (SIGKILL) while a
retry waits loses nothing. Restarted, it runs the retry at its due time (SQLite and
PostgreSQL); on PostgreSQL another node runs it at its due time while the first stays dead."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from app.db import migrate
from app.db.engine import Database
from app.db.models import Job, JobStep, StepAttempt
from tests.support import HostService, NodeProcess, wait_finished

pytestmark = pytest.mark.slow

KEY = "retried"
#: The retry waits 3 to 4 s: long enough for a node to be killed and restarted first.
RETRY = {"attempts": 1, "backoff": 4.0, "max_backoff": 4.0}
#: How late after its due time the retry may start (a claim loop wakes at the due time).
LATE = 0.6


async def _database(url: str) -> Database:
    database = Database(url)
    await migrate.upgrade(database)
    return database


@pytest.fixture
async def database(fresh_url: str) -> AsyncIterator[Database]:
    db = await _database(fresh_url)
    yield db
    await db.dispose()


def _config(url: str, service: HostService, node_id: str) -> dict[str, Any]:
    return {
        "database": {"url": url},
        "manage_containers": False,
        "server": {"rate_limit": None},
        "scheduler": {"lease_seconds": 2, "poll_interval": 1.0, "node_id": node_id},
        "containers": [{"id": "flaky", "url": service.url, "retry": RETRY}],
    }


async def _submit(node: NodeProcess) -> str:
    async with node.client() as http:
        r = await http.post("/api/jobs", json={"containers": ["flaky"], "data": {"job": KEY}})
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


async def _waiting_attempt(database: Database, job_id: str) -> StepAttempt:
    """The failed attempt, once its retry is committed (the job pending until then)."""
    deadline = time.monotonic() + 15
    while True:
        async with database.read() as conn:
            status = (await conn.execute(select(Job.status).where(Job.id == job_id))).scalar_one()
            attempt = (await conn.execute(select(StepAttempt).where(StepAttempt.job_id == job_id))).first()
        if status == "pending" and attempt is not None:
            return attempt  # type: ignore[return-value]
        assert time.monotonic() < deadline, "the retry was not committed"
        await asyncio.sleep(0.05)


async def _finished(node: NodeProcess, job_id: str) -> dict[str, Any]:
    async with node.client() as http:
        return (await wait_finished(http, [job_id], timeout=30))[job_id]


def _second_call_lateness(service: HostService, attempt: Any) -> float:
    times = httpx.get(f"{service.url}/call-times", timeout=5).json()[KEY]
    assert len(times) == 2, times  # the failure and its one retry: no call lost or doubled
    return times[1] - attempt.retry_at.timestamp()


async def test_a_node_killed_while_a_retry_waits_runs_it_on_time_when_restarted(
    fresh_url, database, tmp_path, host_service
):
    service = host_service("flaky", FAILS=1)
    node = NodeProcess(tmp_path, _config(fresh_url, service, "retrier"))
    try:
        node.start()
        job_id = await _submit(node)
        attempt = await _waiting_attempt(database, job_id)
        node.kill()
        node.start()
        assert time.time() < attempt.retry_at.timestamp(), "restarted after the due time: nothing shown"
        result = await _finished(node, job_id)
    finally:
        node.kill()
    assert result["status"] == "success", result
    assert -0.05 <= _second_call_lateness(service, attempt) < LATE


async def test_another_node_runs_the_retry_of_a_killed_node_on_time(pg_fresh_url, tmp_path, host_service):
    service = host_service("flaky", FAILS=1)
    nodes = {name: NodeProcess(tmp_path, _config(pg_fresh_url, service, name), name) for name in ("n1", "n2")}
    database = await _database(pg_fresh_url)
    try:
        for node in nodes.values():
            node.spawn()
        for node in nodes.values():
            node.wait_healthy()
        job_id = await _submit(nodes["n1"])
        attempt = await _waiting_attempt(database, job_id)
        failed_on = attempt.node
        nodes[failed_on].kill()  # the node that ran it stays dead
        (survivor,) = (node for name, node in nodes.items() if name != failed_on)
        result = await _finished(survivor, job_id)
        async with database.read() as conn:
            attempts = (await conn.execute(select(StepAttempt.node).where(StepAttempt.job_id == job_id))).all()
            ran_on = (await conn.execute(select(JobStep.node).where(JobStep.job_id == job_id))).scalar_one()
    finally:
        for node in nodes.values():
            node.kill()
        await database.dispose()
    assert result["status"] == "success", result
    assert attempts == [(failed_on,)]
    assert ran_on != failed_on and ran_on in nodes
    assert -0.05 <= _second_call_lateness(service, attempt) < LATE
