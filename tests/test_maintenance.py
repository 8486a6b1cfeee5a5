"""The maintenance services: only the leading node reaps and prunes, a leader that goes
away is replaced, and on SQLite the only node leads.

Each node here is what ``app.node`` builds for maintenance: its ``NodeConnection`` (the
advisory lock on PostgreSQL), a ``Leadership`` over it, a reaper and a pruner. Who did
the work is read from the table: a job the reaper fails ends on an error step that
names the node that failed it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select

from app.clock import utcnow
from app.db.engine import Database
from app.db.listen import NodeConnection
from app.db.models import Job, JobStatus, JobStep
from app.db.signal import JobSignal
from app.maintenance.leader import Leadership
from app.maintenance.pruner import Pruner
from app.maintenance.reaper import Reaper
from tests.helpers import fresh_database
from tests.support import migrated

PERIOD = 0.1
#: One attempt: an expired lease fails its job, on an error step naming the reaping node.
MAX_ATTEMPTS = 1
REASON = "gave up after 1 attempts: the lease expired each time (the node running the job stopped or lost the database)"


async def _until(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "not within the deadline"
        await asyncio.sleep(0.05)


def _row(status: str, *, lease_expires_at=None, finished_at=None, lease_owner=None) -> dict:
    now = utcnow()
    return {
        "id": str(uuid.uuid4()),
        "client": "127.0.0.1",
        "source": "offchain",
        "containers": ["c"],
        "input": {},
        "requires_proof": False,
        "status": status,
        "attempts": 1,
        "stream": False,
        "lease_owner": lease_owner,
        "lease_expires_at": lease_expires_at,
        "run_after": now,
        "created_at": now - timedelta(days=3),
        "finished_at": finished_at,
    }


async def _add_work(database: Database) -> tuple[list[str], list[str]]:
    """Running jobs whose lease expired an hour ago, and jobs finished two days ago."""
    long_ago = utcnow() - timedelta(hours=1)
    expired = [_row(JobStatus.RUNNING, lease_expires_at=long_ago, lease_owner="gone") for _ in range(3)]
    old = [_row(JobStatus.SUCCESS, finished_at=utcnow() - timedelta(days=2)) for _ in range(2)]
    async with database.write() as conn:
        await conn.execute(insert(Job), [*expired, *old])
    return [r["id"] for r in expired], [r["id"] for r in old]


async def _failed_by(database: Database, ids: list[str]) -> dict[str, str | None]:
    """The node named on each job's error step (None: not failed yet)."""
    async with database.read() as conn:
        rows = (
            await conn.execute(select(JobStep.job_id, JobStep.node, JobStep.error).where(JobStep.job_id.in_(ids)))
        ).all()
        assert all(error == REASON for _, _, error in rows)
        found = {str(job_id): node for job_id, node, _ in rows}
    return {job_id: found.get(job_id) for job_id in ids}


async def _remaining(database: Database, ids: list[str]) -> int:
    async with database.read() as conn:
        return (await conn.execute(select(func.count()).where(Job.id.in_(ids)))).scalar_one()


def _maintenance(database: Database, node: str, elect: Callable[[], Awaitable[bool]] | None) -> Leadership:
    leadership = Leadership(elect)
    leadership.register(Reaper(database, node, MAX_ATTEMPTS, PERIOD, JobSignal(node)))
    leadership.register(Pruner(database, 1, PERIOD))
    return leadership


async def _done(database: Database, expired: list[str], old: list[str]) -> bool:
    """Every expired job failed and every old job pruned."""
    failed = await _failed_by(database, expired)
    return None not in failed.values() and await _remaining(database, old) == 0


@asynccontextmanager
async def _connected(database: Database, node: str) -> AsyncIterator[NodeConnection]:
    """A node's dedicated connection, connected."""
    connection = NodeConnection(database, JobSignal(node), retry_seconds=0.1)
    await connection.start()

    async def up() -> bool:
        return connection._conn is not None

    try:
        await _until(up)
        yield connection
    finally:
        await connection.stop()


@pytest.mark.postgres
async def test_only_the_leader_reaps_and_prunes_and_a_leader_that_goes_away_is_replaced(tmp_path: Path) -> None:
    async with fresh_database("postgresql", tmp_path) as url:
        await migrated(url)
        database = Database(url)
        try:
            async with _connected(database, "node-a") as a, _connected(database, "node-b") as b:
                await _until(a.is_leader)
                assert not await b.is_leader()  # connected, but the lock is a's
                follower = _maintenance(database, "node-b", b.is_leader)
                await follower.start()
                try:
                    # The follower's services stay idle: nothing is reaped or pruned.
                    expired, old = await _add_work(database)
                    await asyncio.sleep(10 * PERIOD)
                    assert await _failed_by(database, expired) == dict.fromkeys(expired)
                    assert await _remaining(database, old) == len(old)

                    # The leader's do the work, all of it.
                    leader = _maintenance(database, "node-a", a.is_leader)
                    await leader.start()
                    await _until(lambda: _done(database, expired, old))
                    assert await _failed_by(database, expired) == dict.fromkeys(expired, "node-a")

                    # The leader goes away (its connection closes, the lock with it): the
                    # follower takes the lead at its next try and does the work.
                    await leader.stop()
                    await a.stop()
                    expired, old = await _add_work(database)
                    await _until(lambda: _done(database, expired, old))
                    assert await _failed_by(database, expired) == dict.fromkeys(expired, "node-b")
                    assert await b.is_leader()
                finally:
                    await follower.stop()
        finally:
            await database.dispose()


async def test_on_sqlite_the_only_node_leads(tmp_path: Path) -> None:
    async with fresh_database("sqlite", tmp_path) as url:
        await migrated(url)
        database = Database(url)
        try:
            only = _maintenance(database, "node-a", None)
            assert await only.is_leader()
            await only.start()
            try:
                expired, old = await _add_work(database)
                await _until(lambda: _done(database, expired, old))
                assert await _failed_by(database, expired) == dict.fromkeys(expired, "node-a")
            finally:
                await only.stop()
        finally:
            await database.dispose()
