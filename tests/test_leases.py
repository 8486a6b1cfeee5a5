"""Lease renewal on PostgreSQL next to a step commit of the same node, and the step commit
in one statement writing only for the claims still held, a step the database refuses
failing alone in its group.

A renewal that waited for rows a step commit holds locked could deadlock with it (the
two lock the same rows in different orders; PostgreSQL then aborts one of them). The
renewal leaves those rows to the commit, and still reports them held.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from sqlalchemy import insert, select

from app.clock import utcnow
from app.db.batching import GroupCommit
from app.db.engine import Database
from app.db.models import Job, JobStatus, JobStep, WebhookDelivery
from app.db.signal import ENDED_CHANNEL, JobSignal
from app.jobs.transitions import JobStore
from app.jobs.values import ClaimedJob, LeaseLost, StepResult


def _running(
    job_id: str,
    client: str,
    owner: str,
    lease: datetime,
    now: datetime,
    attempts: int = 1,
    containers: tuple[str, ...] | list[str] = ("c",),
    webhook: str | None = None,
) -> dict[str, Any]:
    """A job row running under ``owner``'s lease, claimed ``attempts`` times."""
    return {
        "id": job_id,
        "client": client,
        "source": "offchain",
        "containers": list(containers),
        "input": {},
        "requires_proof": False,
        "status": JobStatus.RUNNING,
        "attempts": attempts,
        "stream": False,
        "lease_owner": owner,
        "lease_expires_at": lease,
        "run_after": now,
        "created_at": now,
        "webhook": webhook,
    }


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
                    _running(job_id, client_address, owner, old_lease, now)
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


async def test_a_one_statement_step_commit_writes_only_for_the_claims_held(postgresql_url, client_address):
    """The step commit in one statement (PostgreSQL, ``claims.FINISH_STEPS``/``EXTEND_STEPS``):
    a job whose claim is held ends with its step, its webhook delivery and its end
    announced; a job another node holds, or this node's stale claim of a job it claimed
    again, gets ``LeaseLost`` and writes nothing at all."""
    node = f"one-statement-{client_address}"
    database = Database(postgresql_url)
    now = utcnow()
    lease = now + timedelta(seconds=30)
    held, hooked, going_on, theirs, reclaimed = (str(uuid.uuid4()) for _ in range(5))
    rows = {  # id: (owner, attempts, webhook, containers)
        held: (node, 1, None, ["c"]),
        hooked: (node, 1, "https://hooks.example.com/x", ["c"]),
        going_on: (node, 1, None, ["c", "d"]),
        theirs: ("another-node", 1, "https://hooks.example.com/y", ["c"]),
        reclaimed: (node, 2, None, ["c"]),  # claimed again: the attempt-1 claim is stale
    }
    received: list[str] = []
    listener = await asyncpg.connect(postgresql_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await listener.add_listener(ENDED_CHANNEL, lambda *args: received.append(args[-1]))
        async with database.write() as conn:
            await conn.execute(
                insert(Job),
                [
                    _running(job_id, client_address, owner, lease, now, attempts, containers, webhook=webhook)
                    for job_id, (owner, attempts, webhook, containers) in rows.items()
                ],
            )
        signal = JobSignal(node)
        store = JobStore(database, node, lease_seconds=60, signal=signal)

        def claimed(job_id: str, attempts: int = 1) -> ClaimedJob:
            return ClaimedJob(job_id, rows[job_id][3], {}, False, attempts, now)

        ending = [
            StepResult(claimed(job_id), 0, now, output={"n": i}) for i, job_id in enumerate((held, hooked, theirs))
        ] + [StepResult(claimed(reclaimed), 0, now, output={"stale": True})]
        answers = await store.record_steps(ending)
        assert [type(a).__name__ if a else None for a in answers] == [None, None, "LeaseLost", "LeaseLost"]
        assert await store.record_steps([StepResult(claimed(going_on), 0, now, output=[1])]) == [None]
        assert isinstance((await store.record_steps([StepResult(claimed(theirs), 0, now, output=1)]))[0], LeaseLost)

        async with database.read() as conn:
            jobs = {
                str(r[0]): tuple(r[1:])
                for r in await conn.execute(
                    select(Job.id, Job.status, Job.lease_owner, Job.lease_expires_at).where(Job.id.in_(list(rows)))
                )
            }
            steps = {
                (str(r[0]), r[1]): r[2]
                for r in await conn.execute(select(JobStep.job_id, JobStep.position, JobStep.output))
                if str(r[0]) in rows
            }
            deliveries = [
                (str(r[0]), r[1])
                for r in await conn.execute(select(WebhookDelivery.job_id, WebhookDelivery.url))
                if str(r[0]) in rows
            ]
        assert jobs[held] == (JobStatus.SUCCESS, None, None)
        assert jobs[hooked] == (JobStatus.SUCCESS, None, None)
        assert jobs[going_on][:2] == (JobStatus.RUNNING, node) and jobs[going_on][2] > lease  # extended
        assert jobs[theirs] == (JobStatus.RUNNING, "another-node", lease)  # untouched
        assert jobs[reclaimed] == (JobStatus.RUNNING, node, lease)  # untouched by the stale claim
        assert steps == {(held, 0): {"n": 0}, (hooked, 0): {"n": 1}, (going_on, 0): [1]}
        assert deliveries == [(hooked, "https://hooks.example.com/x")]
        for _ in range(100):
            if received:
                break
            await asyncio.sleep(0.02)
        assert len(received) == 1
        assert sorted(signal.ended_ids(received[0].replace(node, "elsewhere", 1))) == sorted([held, hooked])
        assert signal.ended_ids(received[0]) == []  # its own: ignored by the node that sent it
    finally:
        await listener.close()
        await database.dispose()


async def test_a_step_the_database_refuses_fails_alone_in_its_group(postgresql_url, client_address):
    """Four jobs' steps share one step commit (the scheduler's ``GroupCommit`` over
    ``record_steps``); the database refuses one output (a NUL, which JSONB cannot hold, let
    through below the checks that normally turn it away). Only that step fails: the group is
    flushed again item by item, and the three others end their jobs with their outputs."""
    node = f"poison-{client_address}"
    database = Database(postgresql_url)
    now = utcnow()
    lease = now + timedelta(seconds=30)
    ids = [str(uuid.uuid4()) for _ in range(4)]
    poisoned = ids[2]
    try:
        async with database.write() as conn:
            await conn.execute(insert(Job), [_running(job_id, client_address, node, lease, now) for job_id in ids])
        store = JobStore(database, node, lease_seconds=60, signal=JobSignal(node))
        flushes: list[int] = []

        async def record(results: list[StepResult]) -> list[LeaseLost | None]:
            flushes.append(len(results))
            return await store.record_steps(results)

        group: GroupCommit[StepResult, LeaseLost | None] = GroupCommit(record)
        outputs = {job_id: {"a": "\x00"} if job_id == poisoned else {"job": job_id} for job_id in ids}
        answers = await asyncio.gather(
            *(
                group(StepResult(ClaimedJob(job_id, ["c"], {}, False, 1, now), 0, now, output=outputs[job_id]))
                for job_id in ids
            ),
            return_exceptions=True,
        )
        assert flushes == [4, 1, 1, 1, 1]
        assert [isinstance(a, Exception) for a in answers] == [job_id == poisoned for job_id in ids]
        assert [a for a in answers if not isinstance(a, Exception)] == [None, None, None]
        async with database.read() as conn:
            jobs = dict((await conn.execute(select(Job.id, Job.status).where(Job.id.in_(ids)))).all())
            steps = dict(
                (await conn.execute(select(JobStep.job_id, JobStep.output).where(JobStep.job_id.in_(ids)))).all()
            )
        assert {str(k): v for k, v in jobs.items()} == {
            job_id: JobStatus.RUNNING if job_id == poisoned else JobStatus.SUCCESS for job_id in ids
        }
        assert {str(k): v for k, v in steps.items()} == {
            job_id: outputs[job_id] for job_id in ids if job_id != poisoned
        }
    finally:
        await database.dispose()
