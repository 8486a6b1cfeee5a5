"""Subscriptions with real node processes: two nodes racing on one PostgreSQL, and a node
killed (SIGKILL) while it ticks. Every interval is started once or counted missed: never
twice (the unique (subscription, interval)), never lost (started + missed = frequency)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import func, select

from app.db import migrate
from app.db.engine import Database
from app.db.models import Job, Subscription
from tests.support import NodeProcess, create_pg_database, drop_pg_database, unavailable

pytestmark = pytest.mark.slow


@pytest.fixture
async def database(fresh_url: str) -> AsyncIterator[Database]:
    db = Database(fresh_url)
    await migrate.upgrade(db)
    yield db
    await db.dispose()


def _config(url: str, service: Any, node_id: str) -> dict[str, Any]:
    return {
        "database": {"url": url},
        "manage_containers": False,
        "server": {"rate_limit": None},
        "scheduler": {"max_concurrent_jobs": 64, "lease_seconds": 3, "poll_interval": 0.2, "node_id": node_id},
        "containers": [{"id": "s0", "url": service.url, "concurrency": 64}],
    }


async def _subscribe(node: NodeProcess, count: int, period: int, frequency: int, active_at: int) -> list[str]:
    schedule = {"period": period, "frequency": frequency, "active_at": active_at}
    body = [{"containers": ["s0"], "data": {"job": str(i)}, "subscription": schedule} for i in range(count)]
    async with node.client() as http:
        response = await http.post("/api/jobs/batch", json=body)
    assert response.status_code == 200, response.text
    return [answer["id"] for answer in response.json()]


async def _accounts(database: Database) -> dict[str, tuple[str, int, int]]:
    """Per subscription: (status, interval jobs, missed)."""
    async with database.read() as conn:
        jobs = dict((await conn.execute(select(Job.subscription_id, func.count()).group_by(Job.subscription_id))).all())
        rows = (await conn.execute(select(Subscription.id, Subscription.status, Subscription.missed))).all()
    return {str(sub): (status, jobs.get(sub, 0), missed) for sub, status, missed in rows}


async def _until_completed(database: Database, count: int, timeout: float) -> dict[str, tuple[str, int, int]]:
    deadline = time.monotonic() + timeout
    while True:
        accounts = await _accounts(database)
        if len(accounts) == count and all(status == "completed" for status, _, _ in accounts.values()):
            async with database.read() as conn:
                unfinished = select(func.count()).select_from(Job).where(Job.finished_at.is_(None))
                if (await conn.execute(unfinished)).scalar_one() == 0:
                    return accounts
        assert time.monotonic() < deadline, "subscriptions not completed in time"
        await asyncio.sleep(0.2)


async def test_two_nodes_start_each_interval_once(tmp_path, host_service):
    try:
        url = await create_pg_database()
    except Exception as exc:
        unavailable("PostgreSQL", str(exc))
    service = host_service("count", DELAY=0.001)
    nodes = [NodeProcess(tmp_path, _config(url, service, f"n{k}"), f"n{k}") for k in range(2)]
    database = Database(url)
    try:
        for node in nodes:
            node.spawn()
        for node in nodes:
            node.wait_healthy()
        await migrate.upgrade(database)
        frequency = 4
        ids = await _subscribe(nodes[0], 300, 1, frequency, int(time.time()) + 2)
        accounts = await _until_completed(database, len(ids), timeout=60)
    finally:
        for node in nodes:
            node.kill()
        await database.dispose()
        await drop_pg_database(url)
    assert {jobs + missed for _, jobs, missed in accounts.values()} == {frequency}
    assert sum(jobs for _, jobs, _ in accounts.values()) > 300  # on time, mostly
    # Each interval's job called the service once: every subscription's data is its own.
    calls = service.calls()
    assert all(calls.get(str(i), 0) == accounts[sub][1] for i, sub in enumerate(ids)), calls


async def test_sigkill_while_ticking_then_restart(fresh_url, database, tmp_path, host_service):
    service = host_service("count", DELAY=0.001)
    node = NodeProcess(tmp_path, _config(fresh_url, service, "ticker"))
    frequency = 8
    try:
        node.start()
        ids = await _subscribe(node, 200, 1, frequency, int(time.time()) + 1)
        await asyncio.sleep(3.3)
        node.kill()
        before = await _accounts(database)
        assert any(jobs for _, jobs, _ in before.values()), "the kill must land while intervals run"
        await asyncio.sleep(2.5)  # down for more than two intervals
        node.start()
        accounts = await _until_completed(database, len(ids), timeout=60)
    finally:
        node.kill()
    # None lost, none twice: each interval was started once or counted missed.
    assert {jobs + missed for _, jobs, missed in accounts.values()} == {frequency}
    # The downtime shows as missed intervals, not as intervals run late.
    assert all(missed >= 1 for _, _, missed in accounts.values())
    # A job the kill interrupted runs again (its lease expires): only those.
    calls = service.calls()
    assert all(calls.get(str(i), 0) - accounts[sub][1] in (0, 1) for i, sub in enumerate(ids)), calls
