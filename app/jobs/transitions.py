"""Every change of a job's state, in one place (SPEC §5).

pending → running (claim) → success | failed, and back to pending when a lease expires
or a node hands its jobs back. Each write that a running job makes is guarded by
``status = 'running' AND lease_owner = <this node>`` and checks its row count, so a node
that lost its lease can no longer write anything for that job. The statements are named in
``app.db.statements.claims``; the values passed around are in ``app.jobs.values``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, delete, func, insert, select, update

from app.clock import utcnow
from app.db.engine import Database
from app.db.models import Job, JobStatus, JobStep
from app.db.signal import JobSignal
from app.db.statements import claims
from app.db.statements.status import status_in, status_is
from app.db.statements.submits import INSERT_JOBS
from app.jobs.requests import JobRequest
from app.jobs.rows import pending_row
from app.jobs.values import CANCELLED_ERROR, ClaimedJob, CommittedStep, LeaseLost, StepResult


def prunable(older_than: datetime, batch: int) -> Select[Any]:
    """The oldest finished jobs, read through ``ix_jobs_finished_at``: pruning never scans."""
    return (
        select(Job.seq)
        .where(Job.finished_at.is_not(None), Job.finished_at < older_than)
        .order_by(Job.finished_at)
        .limit(batch)
    )


class JobStore:
    """The scheduler's side of the database, for one node identity."""

    def __init__(self, database: Database, node_id: str, lease_seconds: float, signal: JobSignal | None = None) -> None:
        self.database = database
        self.node_id = node_id
        self.lease = timedelta(seconds=lease_seconds)
        #: Announces ended jobs to reads waiting in other processes (PostgreSQL).
        self.signal = signal

    def claimed_columns(self, now: datetime) -> dict[str, Any]:
        """A new job's columns when its INSERT is its first claim (``app.jobs.handoff``),
        as ``CLAIM`` would have set them."""
        return {
            "status": JobStatus.RUNNING,
            "attempts": 1,
            "lease_owner": self.node_id,
            "lease_expires_at": now + self.lease,
            "started_at": now,
        }

    async def open_stream(self, client: str, request: JobRequest) -> ClaimedJob:
        """Store a job that this node runs at once, streaming its body (``app.jobs.stream``):
        running and leased here from its INSERT, marked ``stream`` (never run again)."""
        now = utcnow()
        row = {**pending_row(request, client, now), **self.claimed_columns(now), "stream": True}
        async with self.database.direct_write(one_statement=True) as conn:
            await conn.insert_many(INSERT_JOBS, [row])
        return ClaimedJob(row["id"], request.containers, request.data, request.requires_proof, 1, now)

    def claim_params(self, limit: int, now: datetime) -> dict[str, Any]:
        return {"now": now, "limit": limit, "node": self.node_id, "lease_until": now + self.lease}

    async def claim(self, limit: int) -> list[ClaimedJob]:
        """Take up to ``limit`` runnable jobs in one statement, with their committed steps.

        The candidates are locked in a CTE (``FOR UPDATE SKIP LOCKED`` on PostgreSQL) so
        that the LIMIT is applied once; on SQLite the writer's ``BEGIN IMMEDIATE``
        serialises claims instead. The claim is one statement (one round trip on
        PostgreSQL); it also tells which jobs have committed steps, and only those (resumed
        jobs) cost a second read, so that they continue where they stopped.
        """
        async with self.database.direct_write(one_statement=True) as conn:
            rows = await conn.fetch(claims.CLAIM, self.claim_params(limit, utcnow()))
        resumed = [row[0] for row in rows if row[-1]]
        steps: dict[str, list[CommittedStep]] = {}
        if resumed:
            async with self.database.direct_read() as conn:
                for job_id, position, output, error in await conn.fetch(claims.COMMITTED_STEPS, {"ids": resumed}):
                    steps.setdefault(str(job_id), []).append(CommittedStep(position, output, error))
        return [
            ClaimedJob(
                str(job_id),
                containers,
                data,
                requires_proof,
                attempts,
                run_after,
                tuple(steps.get(str(job_id), ())),
                client,
            )
            for job_id, containers, data, requires_proof, attempts, run_after, client, _ in rows
        ]

    async def record_steps(self, results: list[StepResult]) -> list[LeaseLost | None]:
        """Commit the steps of several jobs in one transaction (group commit).

        Each job finishes in the same transaction when its chain ends with that step. A step
        of a job this node no longer holds writes nothing and answers ``LeaseLost``.
        """
        now = utcnow()
        #: The claims written for, not only the jobs: a node holding a stale and a current
        #: claim of one job (it lost the job and claimed it again) writes for the current one.
        held: set[tuple[str, int, datetime]] = set()
        async with self.database.direct_write() as conn:
            for outcome in {result.ends_job_as for result in results}:
                params = {
                    "claims": [result.claim for result in results if result.ends_job_as == outcome],
                    "node": self.node_id,
                }
                if outcome is None:
                    rows = await conn.fetch(claims.EXTEND_OWNED, {**params, "lease_until": now + self.lease})
                else:
                    rows = await conn.fetch(claims.FINISH_OWNED, {**params, "outcome": outcome, "now": now})
                held.update((str(job_id), attempts, run_after) for job_id, attempts, run_after in rows)
            steps = [
                {
                    "job_id": r.job.id,
                    "position": r.position,
                    "container": r.job.containers[r.position],
                    "output": r.output,
                    "error": r.error,
                    "attempt": r.job.attempts,
                    "node": self.node_id,
                    "started_at": r.started_at,
                    "finished_at": r.finished_at,
                }
                for r in results
                if r.claim in held
            ]
            ended = [r.job.id for r in results if r.ends_job_as is not None and r.claim in held]
            notifications = self.signal.ended_notifications(ended) if self.signal else []
            if steps:  # the first notification rides in the INSERT statement
                notify = notifications.pop(0) if notifications else None
                await conn.insert_many(claims.INSERT_STEPS, steps, notify=notify)
            for notification in notifications:
                await conn.notify(*notification)
        return [None if r.claim in held else LeaseLost(r.job.id) for r in results]

    async def record_step(self, result: StepResult) -> None:
        (lost,) = await self.record_steps([result])
        if lost is not None:
            raise lost

    async def renew(self, job_ids: list[str]) -> set[str]:
        """Heartbeat: extend the leases of the jobs this node is still running.

        Returns the ids still held; a job missing from it was cancelled or taken over,
        and its running step should be abandoned.
        """
        if not job_ids:
            return set()
        params = {"ids": job_ids, "node": self.node_id, "lease_until": utcnow() + self.lease}
        async with self.database.direct_write(one_statement=True) as conn:
            return {str(job_id) for (job_id,) in await conn.fetch(claims.RENEW.pick(self.database), params)}

    async def release(self, job_ids: list[str]) -> int:
        """Graceful hand-back: the jobs go back to pending, the claim not counted."""
        if not job_ids:
            return 0
        async with self.database.write() as conn:
            return (await claims.RELEASE.run(conn, {"ids": job_ids, "node": self.node_id})).rowcount

    async def take_back_orphans(self, max_attempts: int | None = None) -> int:
        """A node restarted under the same identity re-queues what its previous life was running,
        without waiting for those leases to expire (the claim it lost still counts: with
        ``max_attempts``, a job that used every attempt fails, as the reaper would fail it)."""
        now = utcnow()
        orphans = (status_is(JobStatus.RUNNING), Job.lease_owner == self.node_id, Job.stream.is_(False))
        failed = 0
        async with self.database.write() as conn:
            if max_attempts is not None:
                exhausted = select(Job.id, Job.attempts, Job.containers).where(*orphans, Job.attempts >= max_attempts)
                for row in (await conn.execute(exhausted)).all():
                    await conn.execute(
                        update(Job)
                        .where(Job.id == row.id)
                        .values(status=JobStatus.FAILED, finished_at=now, lease_owner=None, lease_expires_at=None)
                    )
                    reason = f"gave up after {row.attempts} attempts: the node running the job stopped each time"
                    await self._record_failure(conn, str(row.id), row.containers, reason, now)
                    failed += 1
            requeue = (
                update(Job).where(*orphans).values(status=JobStatus.PENDING, lease_owner=None, lease_expires_at=None)
            )
            return failed + (await conn.execute(requeue)).rowcount

    async def reap(self, max_attempts: int, batch: int = 100) -> tuple[int, int]:
        """Jobs whose lease expired go back to pending, or fail once they used every attempt.

        Returns (requeued, failed).
        """
        now = utcnow()
        expired = (
            select(Job.id, Job.attempts, Job.containers, Job.stream)
            .where(status_is(JobStatus.RUNNING), Job.lease_expires_at < now)
            .order_by(Job.lease_expires_at)
            .limit(batch)
            .with_for_update(skip_locked=True)
        )
        requeued = failed = 0
        async with self.database.write() as conn:
            for row in (await conn.execute(expired)).all():
                if row.stream or row.attempts >= max_attempts:
                    reason = (
                        "the node streaming this job stopped before it finished"
                        if row.stream
                        else f"gave up after {row.attempts} attempts: the lease expired each time "
                        f"(the node running the job stopped or lost the database)"
                    )
                    await conn.execute(
                        update(Job)
                        .where(Job.id == row.id)
                        .values(status=JobStatus.FAILED, finished_at=now, lease_owner=None, lease_expires_at=None)
                    )
                    await self._record_failure(conn, str(row.id), row.containers, reason, now)
                    failed += 1
                else:
                    await conn.execute(
                        update(Job)
                        .where(Job.id == row.id)
                        .values(status=JobStatus.PENDING, lease_owner=None, lease_expires_at=None)
                    )
                    requeued += 1
        return requeued, failed

    async def _record_failure(self, conn: Any, job_id: str, containers: list[str], reason: str, now: datetime) -> None:
        """A job that ends without a container error still ends on an error step: the one
        for the container it had reached, so its result reads like any other failure."""
        position = (
            await conn.execute(select(func.count()).select_from(JobStep).where(JobStep.job_id == job_id))
        ).scalar_one()
        position = min(position, len(containers) - 1)
        await conn.execute(
            insert(JobStep).values(
                job_id=job_id,
                position=position,
                container=containers[position],
                error=reason,
                attempt=0,
                node=self.node_id,
                started_at=now,
                finished_at=now,
            )
        )

    async def cancel(self, job_id: str) -> bool:
        """End an unfinished job as ``cancelled``, recording "cancelled" for the container it
        had reached. A node running it loses the right to write and abandons the step."""
        now = utcnow()
        async with self.database.write() as conn:
            row = (
                await conn.execute(
                    update(Job)
                    .where(Job.id == job_id, status_in(JobStatus.UNFINISHED))
                    .values(status=JobStatus.CANCELLED, finished_at=now, lease_owner=None, lease_expires_at=None)
                    .returning(Job.containers)
                )
            ).first()
            if row is None:
                return False
            await self._record_failure(conn, job_id, row.containers, CANCELLED_ERROR, now)
        return True

    async def requeue(self, job_id: str) -> bool:
        """Run a failed or cancelled job again from the step that failed (its error row goes)."""
        now = utcnow()
        async with self.database.write() as conn:
            result = await conn.execute(
                update(Job)
                .where(Job.id == job_id, status_in((JobStatus.FAILED, JobStatus.CANCELLED)))
                .values(status=JobStatus.PENDING, attempts=0, finished_at=None, run_after=now)
            )
            if result.rowcount != 1:
                return False
            await conn.execute(delete(JobStep).where(JobStep.job_id == job_id, JobStep.error.is_not(None)))
        return True

    async def prune(self, older_than: datetime, batch: int = 500) -> int:
        """Delete one small batch of finished jobs (steps go with them by cascade)."""
        victims = prunable(older_than, batch).scalar_subquery()
        async with self.database.write() as conn:
            return (await conn.execute(delete(Job).where(Job.seq.in_(victims)))).rowcount
