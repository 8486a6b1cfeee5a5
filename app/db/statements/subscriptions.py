"""Subscriptions (SPEC §7): the ticker's statements (``app.maintenance.ticker``) and what
the API writes and reads of them (``app.jobs.subscriptions``).

Due times are compared with a ``now`` the caller reads from the database
(``DATABASE_NOW`` on PostgreSQL): two nodes whose clocks differ agree on what is due.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, Boolean, Integer, String, bindparam, func, literal, null, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.sql.elements import ColumnElement

from app.db.direct import PerDialect, RowsInsert, Statement
from app.db.models import Job, JobIdType, JobStatus, Subscription, SubscriptionStatus, UtcDateTime
from app.db.statements import submits

_NOW = bindparam("now", type_=UtcDateTime())


def _active() -> ColumnElement[bool]:
    """A literal, so that PostgreSQL matches the partial indexes in generic plans."""
    return Subscription.status == bindparam(None, SubscriptionStatus.ACTIVE, literal_execute=True)


#: The database's clock (PostgreSQL; SQLite serves one node, whose clock it is).
DATABASE_NOW = Statement(select(func.now()))

# -- the ticker -------------------------------------------------------------------------

#: Active subscriptions due at ``now``, earliest first, locked; those another node is
#: ticking are skipped. Parameters: ``now``, ``batch``.
DUE = Statement(
    select(
        Subscription.id,
        Subscription.period,
        Subscription.frequency,
        Subscription.active_at,
        Subscription.next_interval,
    )
    .where(_active(), Subscription.next_due_at <= _NOW)
    .order_by(Subscription.next_due_at)
    .limit(bindparam("batch", type_=Integer))
    .with_for_update(skip_locked=True)
)
#: The earliest due time of an active subscription: how long the ticker may sleep.
NEXT_DUE = Statement(select(func.min(Subscription.next_due_at)).where(_active()))

#: An interval's job: a new job (``INSERT_JOBS``' columns) with its subscription's request,
#: and its (subscription, interval).
_INTERVAL_JOB = {
    "id": bindparam("job", type_=JobIdType),
    "client": Subscription.client,
    "source": literal("offchain", String()),
    "containers": Subscription.containers,
    "input": Subscription.input,
    "requires_proof": Subscription.requires_proof,
    "status": literal(JobStatus.PENDING, String()),
    "attempts": literal(0, Integer()),
    "stream": literal(False, Boolean()),
    "lease_owner": null(),
    "lease_expires_at": null(),
    "run_after": _NOW,
    "created_at": _NOW,
    "started_at": null(),
    "subscription_id": Subscription.id,
    "interval": bindparam("interval", type_=BigInteger),
}
assert tuple(_INTERVAL_JOB)[: len(submits.INSERT_JOBS.columns)] == submits.INSERT_JOBS.columns


def _interval_job(dialect_insert: Any) -> Statement:
    """The job, unless the interval has one already (then nothing: no row returned)."""
    return Statement(
        dialect_insert(Job)
        .from_select(
            list(_INTERVAL_JOB),
            select(*_INTERVAL_JOB.values()).where(Subscription.id == bindparam("subscription")),
        )
        .on_conflict_do_nothing(index_elements=["subscription_id", "interval"])
        .returning(Job.id)
    )


#: Parameters: ``job`` (its id), ``subscription``, ``interval``, ``now``; returns the job
#: id when it was inserted.
INSERT_INTERVAL_JOB = PerDialect(postgresql=_interval_job(pg_insert), sqlite=_interval_job(sqlite_insert))

#: The subscription after a tick. Parameters: ``subscription``, ``following`` (the next
#: interval), ``due`` (its time; NULL once not active), ``state``, ``skipped`` (missed).
ADVANCE = Statement(
    update(Subscription)
    .where(Subscription.id == bindparam("subscription"))
    .values(
        next_interval=bindparam("following"),
        next_due_at=bindparam("due", type_=UtcDateTime()),
        status=bindparam("state"),
        missed=Subscription.missed + bindparam("skipped", type_=BigInteger),
    )
)

# -- the API ----------------------------------------------------------------------------

#: New subscriptions: every column but ``seq`` (on PostgreSQL the NOTIFY that wakes every
#: node's ticker in the same statement).
INSERT_SUBSCRIPTIONS = RowsInsert(
    Subscription.__table__,  # type: ignore[arg-type]
    (column.name for column in Subscription.__table__.columns if column.name != "seq"),
)
