"""Lease renewal on PostgreSQL next to a step commit of the same node.

A renewal that waited for rows a step commit holds locked could deadlock with it (the
two lock the same rows in different orders; PostgreSQL then aborts one of them). The
renewal leaves those rows to the commit, and still reports them held.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import asyncpg
from sqlalchemy import insert, select

from app.clock import utcnow
from app.db.engine import Database
from app.db.models import Job, JobStatus
from app.jobs.transitions import JobStore


async def test_renewal_leaves_rows_locked_by_a_commit_to_it(postgresql_url, client_address):
    node = f"leases-{client_address}"
    database = Database(postgresql_url)
    now = utcnow()
    old_lease = now + timedelta(seconds=5)
    locked, free, lost = (str(uuid.uuid4()) for _ in range(3))
    try:
        async with database.write() as conn:
            await conn.execute(
                insert(Job),
                [
                    {
                        "id": job_id,
                        "client": client_address,
                        "source": "offchain",
                        "containers": ["c"],
                        "input": {},
                        "requires_proof": False,
                        "status": JobStatus.RUNNING,
                        "attempts": 1,
                        "stream": False,
                        "lease_owner": owner,
                        "lease_expires_at": old_lease,
                        "run_after": now,
                        "created_at": now,
                    }
                    for job_id, owner in ((locked, node), (free, node), (lost, "another-node"))
                ],
            )
        commit = await asyncpg.connect(postgresql_url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            async with commit.transaction():  # a step commit of this node, under way
                await commit.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", uuid.UUID(locked))
                store = JobStore(database, node, lease_seconds=30)
                held = await asyncio.wait_for(store.renew([locked, free, lost]), timeout=5)
        finally:
            await commit.close()
        assert held == {locked, free}
        async with database.read() as conn:
            leases = dict(
                (await conn.execute(select(Job.id, Job.lease_expires_at).where(Job.id.in_([locked, free, lost])))).all()
            )
        assert leases[free] > old_lease + timedelta(seconds=20)  # renewed
        assert leases[locked] == old_lease  # left to the commit that holds it
        assert leases[lost] == old_lease  # not this node's
    finally:
        await database.dispose()
