"""Durable step retries (a container's ``retry``, ``app.scheduler.chain``): a failed step
puts its job back to ``pending`` with the time its next attempt is due, and keeps the
failed attempt in ``step_attempts``.

The wait costs nothing until it is due: the job is an ordinary pending job whose
``run_after`` is later, which ``CLAIM`` skips through ``ix_jobs_claim``; ``NEXT_DUE`` tells
the claim loop when to look again. Only a job with ``retries`` > 0 reads its attempts.
"""

from __future__ import annotations

from sqlalchemy import bindparam, delete, func, select, update

from app.db.direct import RowsInsert, Statement
from app.db.models import Job, JobStatus, StepAttempt, UtcDateTime
from app.db.statements.claims import owned_claims
from app.db.statements.status import status_is

#: The owned claims back to pending until ``retry_at``: not a lease attempt (the claim is
#: given back, as ``RELEASE`` does), one more retry. Returns the claims still held.
RETRY_OWNED = Statement(
    update(Job)
    .where(*owned_claims())
    .values(
        status=JobStatus.PENDING,
        run_after=bindparam("retry_at", type_=UtcDateTime()),
        attempts=Job.attempts - 1,
        retries=Job.retries + 1,
        lease_owner=None,
        lease_expires_at=None,
    )
    .returning(Job.id)
)
#: The failed attempts of a retry commit, written only for the claims still held.
INSERT_STEP_ATTEMPTS = RowsInsert(
    StepAttempt.__table__,  # type: ignore[arg-type]
    ("job_id", "position", "container", "attempt", "error", "reason", "node", "started_at", "finished_at", "retry_at"),
)
#: How many failed attempts each step of retried jobs has. Parameter: ``ids``.
STEP_ATTEMPT_COUNTS = Statement(
    select(StepAttempt.job_id, StepAttempt.position, func.count())
    .where(StepAttempt.job_id.in_(bindparam("ids", expanding=True)))
    .group_by(StepAttempt.job_id, StepAttempt.position)
)
#: One job's failed attempts, step by step (the operator's view). Parameter: ``job``.
JOB_STEP_ATTEMPTS = Statement(
    select(
        StepAttempt.position,
        StepAttempt.container,
        StepAttempt.attempt,
        StepAttempt.error,
        StepAttempt.reason,
        StepAttempt.node,
        StepAttempt.started_at,
        StepAttempt.finished_at,
        StepAttempt.retry_at,
    )
    .where(StepAttempt.job_id == bindparam("job"))
    .order_by(StepAttempt.position, StepAttempt.attempt)
)
#: When the earliest pending job is due (a waiting retry, or any delayed job): the claim
#: loop sleeps until then, not a poll interval more. The first entry of ``ix_jobs_claim``.
NEXT_DUE = Statement(select(func.min(Job.run_after)).where(status_is(JobStatus.PENDING)))
#: A re-queued job's failed attempts go: its steps get their retries anew. Parameter: ``job``.
DROP_STEP_ATTEMPTS = Statement(delete(StepAttempt).where(StepAttempt.job_id == bindparam("job")))
