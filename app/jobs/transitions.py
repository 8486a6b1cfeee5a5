"""Every change of a job's state, in one place (SPEC §5).

pending → running (claim) → success | failed, and back to pending when a lease expires
or a node hands its jobs back. Each write that a running job makes is guarded by
``status = 'running' AND lease_owner = <this node>`` and checks its row count, so a node
that lost its lease can no longer write anything for that job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Integer, bindparam, func, select, tuple_, update
from sqlalchemy.sql.elements import ColumnElement

from app.clock import utcnow
from app.db.direct import Statement
from app.db.engine import Database
from app.db.models import Job, JobStatus, JobStep, UtcDateTime
from app.db.signal import JobSignal
from app.jobs.queries import status_is

CANCELLED_ERROR = "cancelled"


class LeaseLost(Exception):
    """This node no longer owns the job (its lease expired, or it was cancelled)."""


@dataclass(frozen=True, slots=True)
class CommittedStep:
    position: int
    output: Any
    error: str | None


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    id: str
    containers: list[str]
    input: dict[str, Any]
    requires_proof: bool
    attempts: int
    #: When the job was (re)queued (its ``run_after``): part of the claim's identity,
    #: and the start of its queued-to-started time.
    queued_at: datetime
    #: Steps committed before this claim (a resumed job continues after them).
    steps: tuple[CommittedStep, ...] = ()
    client: str = ""

    @classmethod
    def inserted(cls, row: dict[str, Any]) -> ClaimedJob:
        """A job claimed by the INSERT that stored it (``app.jobs.handoff``), from that row."""
        return cls(
            row["id"],
            row["containers"],
            row["input"],
            row["requires_proof"],
            row["attempts"],
            row["run_after"],
            client=row["client"],
        )


@dataclass(frozen=True, slots=True)
class StepResult:
    """One finished container call, to be committed."""

    job: ClaimedJob
    position: int
    started_at: datetime
    output: Any = None
    error: str | None = None
    #: When the call ended (the commit may come a little later, with others).
    finished_at: datetime = field(default_factory=utcnow)

    @property
    def claim(self) -> tuple[str, int, datetime]:
        return self.job.id, self.job.attempts, self.job.queued_at

    @property
    def ends_job_as(self) -> str | None:
        """The status the job ends in with this step, or None when the chain goes on."""
        if self.error is not None:
            return JobStatus.FAILED
        return JobStatus.SUCCESS if self.position == len(self.job.containers) - 1 else None


def _owned_claims() -> tuple[ColumnElement[bool], ...]:
    """The very claims of the jobs (``claims``: id, attempts, run_after) held by ``node``: a
    node that lost a job and claimed it again must not write for its old claim. Every later
    claim has more attempts, except after an operator's re-queue (attempts back to 0),
    which moves ``run_after`` (a claim's ``queued_at``)."""
    return (
        tuple_(Job.id, Job.attempts, Job.run_after).in_(bindparam("claims", expanding=True)),
        status_is(JobStatus.RUNNING),
        Job.lease_owner == bindparam("node"),
    )


_NOW = bindparam("now", type_=UtcDateTime())
_CLAIMABLE = (
    select(Job.seq)
    .where(status_is(JobStatus.PENDING), Job.run_after <= _NOW)
    .order_by(Job.run_after, Job.seq)
    .limit(bindparam("limit", type_=Integer))
    .with_for_update(skip_locked=True)
    .cte("claimable")
)
CLAIM = Statement(
    update(Job)
    .where(Job.seq == _CLAIMABLE.c.seq)
    .values(
        status=JobStatus.RUNNING,
        attempts=Job.attempts + 1,
        lease_owner=bindparam("node"),
        lease_expires_at=bindparam("lease_until"),
        started_at=func.coalesce(Job.started_at, _NOW),
    )
    .returning(
        Job.id,
        Job.containers,
        Job.input,
        Job.requires_proof,
        Job.attempts,
        Job.run_after,
        Job.client,
        select(JobStep.job_id).where(JobStep.job_id == Job.id).exists(),
    )
)
_COMMITTED_STEPS = Statement(
    select(JobStep.job_id, JobStep.position, JobStep.output, JobStep.error)
    .where(JobStep.job_id.in_(bindparam("ids", expanding=True)))
    .order_by(JobStep.position)
)
_EXTEND_OWNED = Statement(
    update(Job)
    .where(*_owned_claims())
    .values(lease_expires_at=bindparam("lease_until"))
    .returning(Job.id, Job.attempts, Job.run_after)
)
_FINISH_OWNED = Statement(
    update(Job)
    .where(*_owned_claims())
    .values(status=bindparam("outcome"), finished_at=_NOW, lease_owner=None, lease_expires_at=None)
    .returning(Job.id, Job.attempts, Job.run_after)
)
_HELD = (
    Job.id.in_(bindparam("ids", expanding=True)),
    status_is(JobStatus.RUNNING),
    Job.lease_owner == bindparam("node"),
)
#: SQLite, whose one writer serialises the renewal with every step commit.
_RENEW = Statement(update(Job).where(*_HELD).values(lease_expires_at=bindparam("lease_until")).returning(Job.id))
#: PostgreSQL: rows a step commit of this node holds locked at that moment are left to it
#: (it extends or ends their leases itself) instead of waited for: a renewal that waited
#: could deadlock with it, the two locking the same rows in different orders. What the
#: node holds is read from the statement's snapshot, those rows included.
_LOCKABLE = select(Job.id).where(*_HELD).with_for_update(skip_locked=True).cte("lockable")
_RENEW_SKIPPING_LOCKED = Statement(
    select(Job.id)
    .where(*_HELD)
    .add_cte(
        update(Job).where(Job.id == _LOCKABLE.c.id).values(lease_expires_at=bindparam("lease_until")).cte("renewed")
    )
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
            rows = await conn.fetch(CLAIM, self.claim_params(limit, utcnow()))
        resumed = [row[0] for row in rows if row[-1]]
        steps: dict[str, list[CommittedStep]] = {}
        if resumed:
            async with self.database.direct_read() as conn:
                for job_id, position, output, error in await conn.fetch(_COMMITTED_STEPS, {"ids": resumed}):
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
                    rows = await conn.fetch(_EXTEND_OWNED, {**params, "lease_until": now + self.lease})
                else:
                    rows = await conn.fetch(_FINISH_OWNED, {**params, "outcome": outcome, "now": now})
                held.update((str(job_id), attempts, run_after) for job_id, attempts, run_after in rows)
            rows = [
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
            if rows:  # the first notification rides in the INSERT statement
                await conn.insert_many(JobStep.__table__, rows, notify=notifications.pop(0) if notifications else None)
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
        statement = _RENEW_SKIPPING_LOCKED if self.database.is_postgresql else _RENEW
        async with self.database.direct_write(one_statement=True) as conn:
            return {str(job_id) for (job_id,) in await conn.fetch(statement, params)}

    async def release(self, job_ids: list[str]) -> int:
        """Graceful hand-back: the jobs go back to pending, the claim not counted."""
        if not job_ids:
            return 0
        stmt = (
            update(Job)
            .where(Job.id.in_(job_ids), status_is(JobStatus.RUNNING), Job.lease_owner == self.node_id)
            .values(status=JobStatus.PENDING, attempts=Job.attempts - 1, lease_owner=None, lease_expires_at=None)
        )
        async with self.database.write() as conn:
            return (await conn.execute(stmt)).rowcount
