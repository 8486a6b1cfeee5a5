"""A running job's statements: the claim, its committed steps, the step commit (extend or
end the owned leases, insert the steps), the lease renewal and the graceful release.

Each write that a running job makes is guarded by ``status = 'running' AND lease_owner =
<this node>`` (and the claim itself, see ``owned_claims``) and returns what it wrote, so a
node that lost its lease can no longer write anything for that job.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Integer,
    String,
    Text,
    and_,
    any_,
    bindparam,
    case,
    cast,
    column,
    false,
    func,
    insert,
    null,
    select,
    true,
    tuple_,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.sql.elements import ColumnClause, ColumnElement
from sqlalchemy.sql.selectable import CTE

from app.db.direct import PerDialect, RowsInsert, RowsStatement, Statement
from app.db.models import DeliveryStatus, Job, JobIdType, JobStatus, JobStep, SeqType, UtcDateTime, WebhookDelivery
from app.db.statements.status import status_checked, status_is


def owned_claims(by_id: bool = False) -> tuple[ColumnElement[bool], ...]:
    """The very claims of the jobs (``claims``: id, attempts, run_after) held by ``node``: a
    node that lost a job and claimed it again must not write for its old claim. Every later
    claim has more attempts, except after an operator's re-queue (attempts back to 0),
    which moves ``run_after`` (a claim's ``queued_at``).

    ``by_id`` adds ``id IN (ids)`` (the claims' ids): SQLite plans a row-value IN of several
    claims as a read of every running job (the partial lease index), per step commit; the
    plain ``IN`` looks each id up in ``uq_jobs_id`` and the row value is checked per row."""
    ids = (Job.id.in_(bindparam("ids", expanding=True)),) if by_id else ()
    return (
        *ids,
        tuple_(Job.id, Job.attempts, Job.run_after).in_(bindparam("claims", expanding=True)),
        status_checked(JobStatus.RUNNING),
        Job.lease_owner == bindparam("node"),
    )


_NOW = bindparam("now", type_=UtcDateTime())


def _claimable(after: bool) -> CTE:
    """Up to ``limit`` runnable jobs, oldest first, locked (``started_at`` is the row's
    before the claim: a job never claimed has no steps).

    ``after``: the candidates are those after the cursor ``(after_run_after, after_seq)``
    in the claim index's order, an index condition, so that the scan starts there instead
    of walking, from the index's start, the entries of every job claimed since the last
    VACUUM (``JobStore.claim``); and, behind it, the jobs claimed before and pending again
    (``ix_jobs_claim_again``), the only ones that can lie there. Each read locks as it goes
    and stops at ``limit`` jobs it could lock (those another claim under way holds are
    passed over, as from the index's start); the oldest ``limit`` of the two are taken (a
    job the other read locked and that is not taken is free again at the statement's end:
    each claim is a transaction of its own)."""
    ordered, limit = (Job.run_after, Job.seq), bindparam("limit", type_=Integer)
    runnable = (status_is(JobStatus.PENDING), Job.run_after <= _NOW)
    if not after:
        claimable = select(Job.seq, Job.started_at).where(*runnable).order_by(*ordered).limit(limit)
        return claimable.with_for_update(skip_locked=True).cte("claimable")
    cursor = tuple_(bindparam("after_run_after", type_=UtcDateTime()), bindparam("after_seq", type_=SeqType))
    behind = (Job.started_at.is_not(None), tuple_(*ordered) <= cursor)  # each job in one read only
    reads = [
        select(*ordered, Job.started_at)
        .where(*runnable, *where)
        .order_by(*ordered)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .cte(name)
        for name, where in (("onward", (tuple_(*ordered) > cursor,)), ("again", behind))
    ]
    candidates = union_all(*(select(read.c.run_after, read.c.seq, read.c.started_at) for read in reads)).subquery()
    oldest = select(candidates.c.seq, candidates.c.started_at).order_by(candidates.c.run_after, candidates.c.seq)
    return oldest.limit(limit).cte("claimable")


#: A condition that, in a statement PostgreSQL runs as a transaction of its own, commits
#: that transaction without waiting for its WAL to reach the disk (``set_config``'s local
#: setting lasts until that transaction's commit; an uncorrelated subquery, evaluated
#: once): ``SET LOCAL synchronous_commit`` in one round trip instead of three (``BEGIN``
#: and the setting, the statement, ``COMMIT``).
UNFLUSHED = select(func.set_config("synchronous_commit", "off", true())).scalar_subquery() == "off"


def _claim(claimable: CTE, has_steps: ColumnElement[bool], *unflushed: ColumnElement[bool]) -> Statement:
    return Statement(
        update(Job)
        .where(Job.seq == claimable.c.seq, *unflushed)
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
            Job.seq,
            Job.retries,
            has_steps,
        )
    )


def _postgresql_claim(after: bool) -> Statement:
    """Only a job claimed before (``started_at`` set by its first claim, kept by a release,
    a reaper's re-queue and an operator's) can have committed steps: a fresh job costs no
    lookup in ``job_steps``' index (``CASE`` evaluates the ``EXISTS`` only when needed).
    A job cancelled while pending has an error step, but it is dropped with its re-queue.
    Measured alternately (``claimplan``'s claim, 64 jobs, 1 M stored, 100 k pending): mean
    5.2 -> 4.2 ms, 192 of ~2,200 buffer hits gone."""
    claimable = _claimable(after)
    has_steps = case(
        (claimable.c.started_at.is_(None), false()),
        else_=select(JobStep.job_id).where(JobStep.job_id == Job.id).exists(),
    )
    return _claim(claimable, has_steps, UNFLUSHED)


#: Up to ``limit`` runnable jobs, oldest first, taken by ``node`` until ``lease_until``;
#: the last columns tell the job's ``seq`` (with ``run_after``, its place in the claim
#: index), how often its steps were retried (``retries``) and whether it has committed
#: steps (a resumed job).
CLAIM = PerDialect(
    postgresql=_postgresql_claim(after=False),
    #: SQLite (3.40) plans ``job_steps.job_id = jobs.id`` in a RETURNING clause's
    #: subquery as a read of all of ``job_steps``' index per claimed job, so that every
    #: claim cost more than the last as steps were committed (a 40,000-job backlog drained
    #: at a sixth of its first rate). The one-item ``IN`` is looked up in the index.
    #: (SQLite's RETURNING cannot read the CTE's ``started_at``: the lookup stays.)
    sqlite=_claim(_claimable(after=False), select(JobStep.job_id).where(JobStep.job_id.in_([Job.id])).exists()),
)
#: ``CLAIM`` after a cursor ``(after_run_after, after_seq)`` in the claim index's order,
#: with the jobs pending again behind it (``_claimable``). PostgreSQL only, whose index
#: keeps a claimed job's entry until a VACUUM; SQLite's drops it at once.
CLAIM_AFTER = _postgresql_claim(after=True)
#: The steps resumed jobs committed before. Parameter: ``ids``.
COMMITTED_STEPS = Statement(
    select(JobStep.job_id, JobStep.position, JobStep.output, JobStep.error)
    .where(JobStep.job_id.in_(bindparam("ids", expanding=True)))
    .order_by(JobStep.position)
)


def _extend_owned(by_id: bool) -> Statement:
    return Statement(
        update(Job)
        .where(*owned_claims(by_id))
        .values(lease_expires_at=bindparam("lease_until"))
        .returning(Job.id, Job.attempts, Job.run_after)
    )


def _finish_owned(by_id: bool) -> Statement:
    return Statement(
        update(Job)
        .where(*owned_claims(by_id))
        .values(status=bindparam("outcome"), finished_at=_NOW, lease_owner=None, lease_expires_at=None)
        .returning(Job.id, Job.attempts, Job.run_after, Job.webhook)
    )


#: A step commit whose jobs go on: their leases extended; returns the claims still held.
#: Parameters: ``claims``, ``ids`` (their ids, read on SQLite), ``node``, ``lease_until``.
EXTEND_OWNED = PerDialect(postgresql=_extend_owned(by_id=False), sqlite=_extend_owned(by_id=True))
#: A step commit that ends its jobs as ``outcome``; returns the claims still held, and
#: each job's webhook (only a job that has one costs its delivery's INSERT).
FINISH_OWNED = PerDialect(postgresql=_finish_owned(by_id=False), sqlite=_finish_owned(by_id=True))
#: The steps of a step commit, written only for the claims still held.
INSERT_STEPS = RowsInsert(
    JobStep.__table__,  # type: ignore[arg-type]
    ("job_id", "position", "container", "output", "error", "attempt", "node", "started_at", "finished_at"),
)


def _step_commit(ends: bool) -> RowsStatement:
    """The whole step commit in one statement (PostgreSQL): the guarded UPDATE of the jobs
    whose claims are still held, the INSERT of the steps of those claims alone, and when it
    ends them, their webhook deliveries and the ``pg_notify`` that wakes reads waiting for
    them. Run alone, it is its own transaction: one round trip instead of a BEGIN, two or
    three statements and a COMMIT. The claims are the steps' own (``job_id``, ``attempt``,
    ``run_after``: ``owned_claims`` as a join). The steps travel as one JSON document
    (``json_to_recordset``, each column typed as its table's), not an array per column:
    asyncpg's array encoder costs the node more CPU than the document (``RowsInsert``)."""
    timestamp = DateTime(timezone=True)
    typed: list[ColumnClause[Any]] = [
        column("job_id", JobIdType),
        column("position", Integer),
        column("container", String),
        column("output", JSONB),
        column("error", Text),
        column("attempt", Integer),
        column("started_at", timestamp),
        column("finished_at", timestamp),
        column("run_after", timestamp),
    ]
    if ends:
        typed.append(column("delivery_id", JobIdType))
    rows = (
        func.json_to_recordset(bindparam("steps", type_=JSON))
        .table_valued(*typed)
        .render_derived(name="step_rows", with_types=True)
    )
    steps = select(*rows.c).cte("steps")
    # ``ids`` (an array: the steps' job ids) leads the plan to ``uq_jobs_id``: the planner
    # expects 100 rows of any ``json_to_recordset`` (10 of an ``unnest``) and would rather
    # read every running job of this node through ``ix_jobs_lease`` and hash-join them.
    guarded = update(Job).where(
        Job.id == any_(bindparam("ids", type_=ARRAY(JobIdType))),
        Job.id == steps.c.job_id,
        Job.attempts == steps.c.attempt,
        Job.run_after == steps.c.run_after,
        status_checked(JobStatus.RUNNING),
        Job.lease_owner == bindparam("node"),
    )
    if ends:
        written = guarded.values(
            status=bindparam("outcome", type_=String), finished_at=_NOW, lease_owner=null(), lease_expires_at=null()
        ).returning(Job.id, Job.attempts, Job.run_after, Job.webhook, steps.c.delivery_id)
    else:
        written = guarded.values(lease_expires_at=bindparam("lease_until", type_=UtcDateTime())).returning(
            Job.id, Job.attempts, Job.run_after
        )
    held = written.cte("held")
    inserted = insert(JobStep).from_select(
        [*INSERT_STEPS.columns],
        select(
            steps.c.job_id,
            steps.c.position,
            steps.c.container,
            steps.c.output,
            steps.c.error,
            steps.c.attempt,
            bindparam("node"),
            steps.c.started_at,
            steps.c.finished_at,
        ).select_from(
            steps.join(
                held,
                and_(
                    held.c.id == steps.c.job_id,
                    held.c.attempts == steps.c.attempt,
                    held.c.run_after == steps.c.run_after,
                ),
            )
        ),
    )
    answer = [held.c.id, held.c.attempts, held.c.run_after]
    ctes = [inserted.cte("inserted")]
    if ends:
        delivered = insert(WebhookDelivery).from_select(
            ["id", "job_id", "url", "status", "attempts", "next_attempt_at", "created_at"],
            select(
                held.c.delivery_id,
                held.c.id,
                held.c.webhook,
                bindparam(None, DeliveryStatus.PENDING, literal_execute=True),
                bindparam(None, 0, literal_execute=True),
                _NOW,
                _NOW,
            ).where(held.c.webhook.is_not(None)),
        )
        ctes.append(delivered.cte("delivered"))
        # Evaluated once (uncorrelated), and only when some job ended: with no row to
        # answer, nothing reads it. The payload is ``JobSignal.ended_notifications``'.
        ended = select(
            func.pg_notify(
                bindparam("channel", type_=Text),
                cast(func.json_build_array(bindparam("sender", type_=Text), func.json_agg(held.c.id)), Text),
            )
        ).scalar_subquery()
        answer += [held.c.webhook, ended.correlate(None).label("notified")]
    return RowsStatement(select(*answer).add_cte(*ctes))


#: A step commit in one statement on PostgreSQL (``_step_commit``): ``steps``, one dict per
#: step of ``INSERT_STEPS``' columns but ``node``, with its claim's ``run_after`` (and a
#: ``delivery_id`` when it ends its job), ``ids`` (their job ids), ``node``, and ``lease_until`` (jobs that go on) or
#: ``outcome``, ``now``, ``channel`` and ``sender`` (jobs it ends). Returns the claims still held (and webhooks).
EXTEND_STEPS = _step_commit(ends=False)
FINISH_STEPS = _step_commit(ends=True)

_HELD = (
    Job.id.in_(bindparam("ids", expanding=True)),
    status_checked(JobStatus.RUNNING),
    Job.lease_owner == bindparam("node"),
)
_LOCKABLE = select(Job.id).where(*_HELD).with_for_update(skip_locked=True).cte("lockable")
#: Heartbeat: the leases of ``ids`` that ``node`` still holds, extended; returns their ids.
RENEW = PerDialect(
    #: Rows a step commit of this node holds locked at that moment are left to it (it
    #: extends or ends their leases itself) instead of waited for: a renewal that waited
    #: could deadlock with it, the two locking the same rows in different orders. What
    #: the node holds is read from the statement's snapshot, those rows included.
    postgresql=Statement(
        select(Job.id)
        .where(*_HELD)
        .add_cte(
            update(Job).where(Job.id == _LOCKABLE.c.id).values(lease_expires_at=bindparam("lease_until")).cte("renewed")
        )
    ),
    #: SQLite's one writer serialises the renewal with every step commit.
    sqlite=Statement(update(Job).where(*_HELD).values(lease_expires_at=bindparam("lease_until")).returning(Job.id)),
)
#: Graceful hand-back of ``ids`` held by ``node``: pending again, the claim not counted.
RELEASE = Statement(
    update(Job)
    .where(*_HELD)
    .values(status=JobStatus.PENDING, attempts=Job.attempts - 1, lease_owner=None, lease_expires_at=None)
)
