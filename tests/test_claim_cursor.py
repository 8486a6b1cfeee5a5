"""The claim after a cursor (PostgreSQL): while a backlog drains, each claim starts after
the last job taken, so that it does not walk past the claim index's entries of every job
claimed since the last VACUUM; a job left behind the cursor is still taken, oldest first,
by the next claim from the index's start."""

from __future__ import annotations

import uuid
from datetime import timedelta

import asyncpg
import pytest

from app.clock import utcnow
from app.db.engine import Database
from app.db.statements.submits import INSERT_JOBS
from app.jobs.requests import JobRequest
from app.jobs.rows import pending_row
from app.jobs.transitions import JobStore
from tests.support import migrated

pytestmark = pytest.mark.postgres


async def _store_pending(database: Database, queued: list[timedelta]) -> list[str]:
    """A pending job queued at each of ``queued`` (before now); their ids."""
    now = utcnow()
    rows = [
        pending_row(JobRequest(containers=["c"], data={"n": n}), "10.9.9.9", now - ago) for n, ago in enumerate(queued)
    ]
    await database.write_transaction(lambda conn: conn.insert_many(INSERT_JOBS, rows), one_statement=True)
    return [row["id"] for row in rows]


async def test_a_draining_claim_goes_on_after_the_last_job_taken_and_comes_back_for_one_left_behind(pg_fresh_url):
    await migrated(pg_fresh_url)
    database = Database(pg_fresh_url)
    try:
        jobs = await _store_pending(database, [timedelta(seconds=60 - n) for n in range(7)])
        store, other = (JobStore(database, node, lease_seconds=60) for node in ("cursor-node", "other-node"))
        store.full_claim_seconds = 3600.0

        async def claim(limit: int, by: JobStore = store) -> list[str]:
            return [job.id for job in await by.claim(limit)]

        assert await claim(2) == jobs[0:2]  # all it asked for: the next claim starts after jobs[1]
        assert await store.release([jobs[0]]) == 1  # pending again, in its old place: behind the cursor
        # Another node claims it and the next one, and hands both back: one behind the
        # cursor, one after it.
        assert await claim(1, other) == [jobs[0]] and await claim(1, other) == [jobs[2]]
        assert await other.release([jobs[0], jobs[2]]) == 2
        assert await claim(3) == [jobs[0], jobs[2], jobs[3]]  # oldest first, each once
        assert await store.release([jobs[3]]) == 1  # the cursor's own job
        assert await claim(2) == [jobs[3], jobs[4]]
        # A job never claimed, queued before the cursor (stored by a node whose clock is
        # behind): only a claim from the index's start finds it.
        (late,) = await _store_pending(database, [timedelta(minutes=5)])
        assert await claim(2) == jobs[5:7]
        store.full_claim_seconds = 0.0  # the periodic claim from the index's start is due
        assert await claim(1) == [late]
        store.full_claim_seconds = 3600.0
        assert await claim(2) == []  # fewer than asked: the cursor is dropped
        (later,) = await _store_pending(database, [timedelta(minutes=10)])
        assert await claim(2) == [later]  # and the next claim reads from the start again
    finally:
        await database.dispose()


async def test_a_claim_after_the_cursor_takes_the_next_free_jobs_when_another_node_holds_those_after_it(
    pg_fresh_url,
):
    """The claim after the cursor locks as it reads: when another node's claim under way
    holds the jobs right after the cursor, it passes over them to the next free ones, as a
    claim from the index's start does — and takes them after the cursor, not by reading the
    index from its start (where a job never claimed lies behind the cursor, left to the
    periodic claim from the start)."""
    await migrated(pg_fresh_url)
    database = Database(pg_fresh_url)
    locker = await asyncpg.connect(pg_fresh_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        jobs = await _store_pending(database, [timedelta(seconds=60 - n) for n in range(6)])
        store = JobStore(database, "cursor-node", lease_seconds=60)
        store.full_claim_seconds = 3600.0
        assert [job.id for job in await store.claim(2)] == jobs[0:2]
        (late,) = await _store_pending(database, [timedelta(minutes=5)])  # behind the cursor
        async with locker.transaction():  # another node's claim of the next two, under way
            locked = await locker.fetch(
                "SELECT id FROM jobs WHERE id = ANY($1::uuid[]) FOR UPDATE", [uuid.UUID(j) for j in jobs[2:4]]
            )
            assert len(locked) == 2
            assert [job.id for job in await store.claim(2)] == jobs[4:6]
        store.full_claim_seconds = 0.0
        assert [job.id for job in await store.claim(2)] == [late, jobs[2]]
    finally:
        await locker.close()
        await database.dispose()


async def test_the_claim_runs_its_generic_plan_and_is_not_planned_again_at_each_claim(pg_fresh_url):
    """PostgreSQL plans a prepared statement anew at each execution while its generic plan
    looks dearer than the custom ones, as the claim's does: the hot pool forces the generic
    plan (``app.db.direct._SESSION``), the one ``tests/test_statements.py`` checks, and a
    claim costs no planning."""
    await migrated(pg_fresh_url)
    database = Database(pg_fresh_url)
    try:
        await _store_pending(database, [timedelta(seconds=60 - n) for n in range(12)])
        store = JobStore(database, "plan-node", lease_seconds=60)
        for _ in range(10):
            assert len(await store.claim(1)) == 1
        plans = {"generic_plans": 0, "custom_plans": 0}
        async with database.direct_read(store._claim_lane) as direct:  # the claims' connection
            for row in await direct.connection.fetch(  # type: ignore[attr-defined]
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement LIKE '%claimable%'"
            ):
                for key in plans:
                    plans[key] += row[key]
        assert plans["custom_plans"] == 0 and plans["generic_plans"] >= 10, plans
    finally:
        await database.dispose()
