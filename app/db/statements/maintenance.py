"""The maintenance services' statements (``app.maintenance``) and the operator's job
actions (``app.jobs.actions``): reaping expired leases, taking back a restarted node's
orphans, pruning old finished jobs, cancelling and re-queueing, the error step a job ends
on when no container failed it, and whether PostgreSQL vacuums the jobs table by itself.

None of them is on the hot path; they run through SQLAlchemy (``Statement.run``).
Parameters are named after what they hold, never after a column: SQLAlchemy reserves
column names for the SET and VALUES clauses of the statement's own table.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BindParameter,
    Integer,
    any_,
    bindparam,
    column,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    table,
    update,
)
from sqlalchemy.orm import aliased

from app.db.direct import PerDialect, Statement
from app.db.models import Job, JobStatus, JobStep, Subscription, SubscriptionStatus, UtcDateTime
from app.db.statements.status import status_in, status_is

_NOW = bindparam("now", type_=UtcDateTime())
_JOB: BindParameter[Any] = bindparam("job")
_UNLEASED = {"lease_owner": None, "lease_expires_at": None}

# -- ending a job -----------------------------------------------------------------------

#: End one job as failed. Parameters: ``job``, ``now``.
FAIL = Statement(update(Job).where(Job.id == _JOB).values(status=JobStatus.FAILED, finished_at=_NOW, **_UNLEASED))
#: How many steps a job has: the position of the step it had reached. Parameter: ``job``.
STEP_COUNT = Statement(select(func.count()).select_from(JobStep).where(JobStep.job_id == _JOB))
#: The error step of a job that ends without a container error. Parameters: ``job``,
#: ``step`` (its position), ``container_id``, ``reason``, ``by_node``, ``now``.
FAILURE_STEP = Statement(
    insert(JobStep).values(
        job_id=_JOB,
        position=bindparam("step"),
        container=bindparam("container_id"),
        error=bindparam("reason"),
        attempt=0,
        node=bindparam("by_node"),
        started_at=_NOW,
        finished_at=_NOW,
    )
)

# -- reaper: expired leases -------------------------------------------------------------

#: Running jobs whose lease expired, oldest lease first, locked (others skipped: another
#: reaper has them). Parameters: ``now``, ``batch``.
EXPIRED = Statement(
    select(Job.id, Job.attempts, Job.containers, Job.stream, Job.webhook)
    .where(status_is(JobStatus.RUNNING), Job.lease_expires_at < _NOW)
    .order_by(Job.lease_expires_at)
    .limit(bindparam("batch", type_=Integer))
    .with_for_update(skip_locked=True)
)
#: Back to pending, the claim counted. Parameter: ``job``.
REQUEUE_EXPIRED = Statement(update(Job).where(Job.id == _JOB).values(status=JobStatus.PENDING, **_UNLEASED))

# -- orphans: what a node's previous life was running -----------------------------------

_ORPHANS = (status_is(JobStatus.RUNNING), Job.lease_owner == bindparam("node"), Job.stream.is_(False))
#: Orphans that used every attempt. Parameters: ``node``, ``max_attempts``.
EXHAUSTED_ORPHANS = Statement(
    select(Job.id, Job.attempts, Job.containers, Job.webhook).where(
        *_ORPHANS, Job.attempts >= bindparam("max_attempts")
    )
)
#: Every orphan back to pending. Parameter: ``node``.
REQUEUE_ORPHANS = Statement(update(Job).where(*_ORPHANS).values(status=JobStatus.PENDING, **_UNLEASED))

# -- pruner: retention ------------------------------------------------------------------

_newer = aliased(Job)
#: The latest job of an active subscription is kept (SPEC §7: ``GET /api/jobs?id=<it>``
#: answers its result): one lookup of the subscription and one of a newer interval.
_NOT_LATEST_OF_ACTIVE = or_(
    Job.subscription_id.is_(None),
    ~exists().where(
        Subscription.id == Job.subscription_id,
        Subscription.status == bindparam(None, SubscriptionStatus.ACTIVE, literal_execute=True),
    ),
    exists().where(_newer.subscription_id == Job.subscription_id, _newer.interval > Job.interval),
)
_PRUNABLE = (Job.finished_at.is_not(None), Job.finished_at < bindparam("older_than"), _NOT_LATEST_OF_ACTIVE)
#: One batch of the oldest finished jobs, read through ``ix_jobs_finished_at``: pruning
#: never scans. Parameters: ``older_than``, ``batch``.
_prune_batch = select(Job.seq).where(*_PRUNABLE).order_by(Job.finished_at).limit(bindparam("batch", type_=Integer))
PRUNE_BATCH = Statement(_prune_batch)
#: Delete that batch; their steps go with them by cascade. Parameters: as ``PRUNE_BATCH``.
PRUNE = PerDialect(
    #: ``seq = ANY(ARRAY(batch))``: each row found by its primary key. PostgreSQL's generic
    #: plan of ``seq IN (batch)`` hash-joins the batch with the whole table instead.
    postgresql=Statement(delete(Job).where(Job.seq == any_(func.array(_prune_batch.scalar_subquery())))),
    sqlite=Statement(delete(Job).where(Job.seq.in_(_prune_batch.scalar_subquery()))),
)
#: How many finished jobs a prune would delete (the CLI's progress). Parameter: ``older_than``.
PRUNABLE_COUNT = Statement(select(func.count()).where(*_PRUNABLE))

# -- the operator's actions -------------------------------------------------------------

#: End an unfinished job as cancelled; answers its containers and its webhook.
#: Parameters: ``job``, ``now``.
CANCEL = Statement(
    update(Job)
    .where(Job.id == _JOB, status_in(JobStatus.UNFINISHED))
    .values(status=JobStatus.CANCELLED, finished_at=_NOW, **_UNLEASED)
    .returning(Job.containers, Job.webhook)
)
#: A failed or cancelled job back to pending, its attempts and step retries reset. Parameters: ``job``, ``now``.
REQUEUE = Statement(
    update(Job)
    .where(Job.id == _JOB, status_in((JobStatus.FAILED, JobStatus.CANCELLED)))
    .values(status=JobStatus.PENDING, attempts=0, retries=0, finished_at=None, run_after=_NOW)
)
#: A re-queued job's error step goes: it resumes at the step that failed. Parameter: ``job``.
DROP_ERROR_STEPS = Statement(delete(JobStep).where(JobStep.job_id == _JOB, JobStep.error.is_not(None)))

# -- the server's upkeep of the jobs table ---------------------------------------------------

_PG_CLASS = table("pg_class", column("oid"), column("reloptions"))
#: Whether PostgreSQL vacuums ``jobs`` by itself (``app.db.upkeep``): the server's
#: ``autovacuum`` setting and the table's storage parameters (``autovacuum_enabled=…``
#: among them when an operator set it). PostgreSQL only.
AUTOVACUUM_OF_JOBS = Statement(
    select(func.current_setting("autovacuum").label("server_setting"), _PG_CLASS.c.reloptions).where(
        _PG_CLASS.c.oid == func.to_regclass(Job.__tablename__)
    )
)
