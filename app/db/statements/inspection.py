"""What the operator reads (``app.jobs.inspection``, ``app.jobs.queue_numbers``): one job in
full, lists of jobs, the queue's numbers.

Cost: one job and its steps use the ``id`` and ``(job_id, position)`` unique indexes; the
queue gauges read only unfinished jobs (partial indexes); throughput reads the last
minutes of ``ix_jobs_finished_at``. Counting jobs by state walks the whole table, so only
the CLI's ``stats`` runs ``COUNT_BY_STATUS``, never a scrape.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Integer, bindparam, cast, desc, func, literal_column, select

from app.db.direct import PerDialect, Statement, shapes
from app.db.models import Job, JobStatus, JobStep
from app.db.statements.status import status_in, status_is

#: Failed and cancelled jobs: those an operator may re-queue.
RETRYABLE = (JobStatus.FAILED, JobStatus.CANCELLED)

# -- one job ----------------------------------------------------------------------------

_jobs, _steps = Job.__table__, JobStep.__table__
#: The whole ``jobs`` row. Parameter: ``job``.
JOB = Statement(select(_jobs).where(_jobs.c.id == bindparam("job")))
#: Its ``job_steps`` rows in order. Parameter: ``job``.
JOB_STEPS = Statement(select(_steps).where(_steps.c.job_id == bindparam("job")).order_by(_steps.c.position))

# -- lists ------------------------------------------------------------------------------

_SUMMARY = (Job.id, Job.status, Job.client, Job.containers, Job.attempts, Job.created_at, Job.finished_at)


@shapes((status, client) for status in (None, *JobStatus.UNFINISHED, *JobStatus.FINISHED) for client in (False, True))
def newest_jobs(status: str | None, client: bool) -> Statement:
    """The newest jobs, in one state when ``status`` is given (a literal, like every status
    filter: see ``status_in``). Parameters: ``limit``, and ``client`` when asked for."""
    stmt = select(*_SUMMARY).order_by(desc(Job.seq)).limit(bindparam("limit", type_=Integer))
    if status is not None:
        stmt = stmt.where(status_is(status))
    if client:
        stmt = stmt.where(Job.client == bindparam("client"))
    return Statement(stmt)


#: The most recently finished failed or cancelled jobs. Parameter: ``limit``.
RECENTLY_FAILED = Statement(
    select(*_SUMMARY)
    .where(Job.finished_at.is_not(None), status_in(RETRYABLE))
    .order_by(desc(Job.finished_at))
    .limit(bindparam("limit", type_=Integer))
)
#: The error steps of some jobs. Parameter: ``ids``.
ERRORS = Statement(
    select(JobStep.job_id, JobStep.container, JobStep.error).where(
        JobStep.job_id.in_(bindparam("ids", expanding=True)), JobStep.error.is_not(None)
    )
)
#: Every failed or cancelled job, oldest first.
RETRYABLE_IDS = Statement(select(Job.id).where(status_in(RETRYABLE)).order_by(Job.seq))

# -- numbers ----------------------------------------------------------------------------

#: Unfinished jobs by (state, source).
UNFINISHED_BY_STATE = Statement(
    select(Job.status, Job.source, func.count()).where(status_in(JobStatus.UNFINISHED)).group_by(Job.status, Job.source)
)
#: Runnable pending jobs and the oldest one's ``run_after``. Parameter: ``now``.
RUNNABLE = Statement(
    select(func.count(), func.min(Job.run_after)).where(status_is(JobStatus.PENDING), Job.run_after <= bindparam("now"))
)
#: Jobs finished since a moment. Parameter: ``since``.
FINISHED_SINCE = Statement(
    select(func.count()).where(Job.finished_at.is_not(None), Job.finished_at >= bindparam("since"))
)
#: Every job by state (a full count: the CLI only).
COUNT_BY_STATUS = Statement(select(Job.status, func.count()).group_by(Job.status))


def _finished_per_minute(minute: ColumnElement[Any]) -> Statement:
    return Statement(
        select(minute.label("minute"), Job.status, func.count())
        .where(
            Job.finished_at.is_not(None), Job.finished_at >= bindparam("since"), Job.finished_at < bindparam("until")
        )
        .group_by(literal_column("minute"), Job.status)
    )


#: Jobs finished from ``since`` until before ``until``, by minute (minutes since the epoch)
#: and state. Each database computes the minute its own way.
FINISHED_PER_MINUTE = PerDialect(
    postgresql=_finished_per_minute(cast(func.floor(func.extract("epoch", Job.finished_at) / 60), Integer)),
    sqlite=_finished_per_minute(cast(func.strftime("%s", Job.finished_at), Integer) / 60),
)
