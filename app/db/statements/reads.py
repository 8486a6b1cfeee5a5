"""What the API reads, each statement shaped to use one of the indexes in ``models``."""

from __future__ import annotations

import itertools

from sqlalchemy import Integer, bindparam, func, select

from app.db.direct import Statement, shapes
from app.db.models import Job, JobStatus, JobStep
from app.db.statements.status import status_in


@shapes(itertools.product((None, True, False), (False, True), (False, True)))
def client_job_ids(pending: bool | None, after: bool, limit: bool) -> Statement:
    """A client's job ids, oldest first. Parameters: ``client``, and ``after_seq`` and
    ``limit`` when asked for."""
    stmt = select(Job.id).where(Job.client == bindparam("client"))
    if pending is True:
        stmt = stmt.where(status_in(JobStatus.UNFINISHED))
    elif pending is False:
        stmt = stmt.where(status_in(JobStatus.FINISHED))
    if after:
        stmt = stmt.where(Job.seq > bindparam("after_seq"))
    stmt = stmt.order_by(Job.seq)
    return Statement(stmt.limit(bindparam("limit", type_=Integer)) if limit else stmt)


#: The cursor of a keyset page. Parameters: ``client``, ``id``.
CLIENT_JOB_SEQ = Statement(select(Job.seq).where(Job.id == bindparam("id"), Job.client == bindparam("client")))


#: Jobs with their steps, in one statement: one snapshot, so a job's status and its steps
#: always agree. Parameter: ``ids``. The caller drops other clients' jobs: with the client
#: in the WHERE clause, a generic plan made while the table was small reads the client's
#: index (every job of the client) instead of the id's.
RESULTS = Statement(
    select(Job.id, Job.client, Job.status, JobStep.container, JobStep.output, JobStep.error)
    .select_from(Job)
    .outerjoin(JobStep, JobStep.job_id == Job.id)
    .where(Job.id.in_(bindparam("ids", expanding=True)))
    .order_by(JobStep.position)
)


#: Pending and running jobs by source (``/info``), read from ``ix_jobs_unfinished_source``.
UNFINISHED_COUNTS = Statement(
    select(Job.source, func.count()).where(status_in(JobStatus.UNFINISHED)).group_by(Job.source)
)
