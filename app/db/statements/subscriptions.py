"""Subscriptions (SPEC §7): the ticker's statements (``app.maintenance.ticker``) and what
the API writes and reads of them (``app.jobs.subscriptions``).

Due times are compared with a ``now`` the caller reads from the database
(``DATABASE_NOW`` on PostgreSQL): two nodes whose clocks differ agree on what is due.
"""

from __future__ import annotations

import itertools
from typing import Any

from sqlalchemy import BigInteger, Boolean, Integer, String, bindparam, func, literal, null, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.sql.elements import ColumnElement

from app.db.direct import PerDialect, RowsInsert, Statement, shapes
from app.db.models import Job, JobIdType, JobStatus, Subscription, SubscriptionStatus, UtcDateTime
from app.db.statements import submits

_NOW = bindparam("now", type_=UtcDateTime())


def _active() -> ColumnElement[bool]:
    """A literal, so that PostgreSQL matches the partial indexes in generic plans."""
    return Subscription.status == bindparam(None, SubscriptionStatus.ACTIVE, literal_execute=True)


#: The database's clock (PostgreSQL; SQLite serves one node, whose clock it is).
DATABASE_NOW = Statement(select(func.now()))

# -- the ticker -------------------------------------------------------------------------

_DUE_COLUMNS = (
    Subscription.id,
    Subscription.period,
    Subscription.frequency,
    Subscription.active_at,
    Subscription.next_interval,
)
#: Active subscriptions due at ``now``, earliest first, locked; those another node is
#: ticking are skipped. Parameters: ``now``, ``batch``.
DUE = Statement(
    select(*_DUE_COLUMNS)
    .where(_active(), Subscription.next_due_at <= _NOW)
    .order_by(Subscription.next_due_at)
    .limit(bindparam("batch", type_=Integer))
    .with_for_update(skip_locked=True)
)
#: ``DUE`` of one subscription (the ticker's one-by-one fallback after a failed batch).
#: Parameters: ``subscription``, ``now``.
DUE_ONE = Statement(
    select(*_DUE_COLUMNS)
    .where(Subscription.id == bindparam("subscription"), _active(), Subscription.next_due_at <= _NOW)
    .with_for_update(skip_locked=True)
)
#: An active subscription whose tick failed, looked at again at ``due`` instead of at once.
#: Parameters: ``subscription``, ``due``.
POSTPONE = Statement(
    update(Subscription)
    .where(Subscription.id == bindparam("subscription"), _active())
    .values(next_due_at=bindparam("due", type_=UtcDateTime()))
)
#: Active subscriptions of every client (``/metrics``, the dashboard), from the due index.
ACTIVE_TOTAL = Statement(select(func.count()).select_from(Subscription).where(_active()))
#: Ended subscriptions of every client by state (``/metrics``), from the ended index:
#: ``(status, count)``.
ENDED_BY_STATE = Statement(
    select(Subscription.status, func.count())
    .where(Subscription.status != bindparam(None, SubscriptionStatus.ACTIVE, literal_execute=True))
    .group_by(Subscription.status)
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
    "webhook": Subscription.webhook,
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

_CLIENT = Subscription.client == bindparam("client")
#: One subscription of one client; ``owner``, not ``client``: an UPDATE reserves its columns' names.
_ONE = (Subscription.id == bindparam("subscription"), Subscription.client == bindparam("owner"))

#: The key space of ``LOCK_CLIENT``'s advisory locks (two-key locks never meet the
#: leader's one-key lock).
_QUOTA_LOCKS = 0x6A6E7162
#: PostgreSQL: a client's new subscriptions are counted and inserted one request at a time,
#: so that concurrent requests cannot pass ``server.max_subscriptions`` together (SQLite's
#: one writer does that already). Held until the transaction ends. Parameter: ``client``.
LOCK_CLIENT = Statement(
    select(func.pg_advisory_xact_lock(literal(_QUOTA_LOCKS, Integer()), func.hashtext(bindparam("client"))))
)
#: How many subscriptions the client has active (``server.max_subscriptions``). Parameter:
#: ``client``.
ACTIVE_COUNT = Statement(select(func.count()).select_from(Subscription).where(_CLIENT, _active()))
#: One subscription of the client (none for another client's). Parameters:
#: ``subscription``, ``owner``.
CLIENT_SUBSCRIPTION = Statement(
    select(
        Subscription.seq,
        Subscription.id,
        Subscription.containers,
        Subscription.period,
        Subscription.frequency,
        Subscription.active_at,
        Subscription.status,
        Subscription.next_interval,
        Subscription.next_due_at,
        Subscription.missed,
    ).where(*_ONE)
)


@shapes(itertools.product((None, True, False), (False, True), (False, True)))
def client_subscription_ids(active: bool | None, after: bool, limit: bool) -> Statement:
    """A client's subscription ids, oldest first. Parameters: ``client``, and ``after_seq``
    and ``limit`` when asked for."""
    stmt = select(Subscription.id).where(_CLIENT)
    if active is True:
        stmt = stmt.where(_active())
    elif active is False:
        stmt = stmt.where(Subscription.status != bindparam(None, SubscriptionStatus.ACTIVE, literal_execute=True))
    if after:
        stmt = stmt.where(Subscription.seq > bindparam("after_seq"))
    stmt = stmt.order_by(Subscription.seq)
    return Statement(stmt.limit(bindparam("limit", type_=Integer)) if limit else stmt)


#: A subscription's interval jobs by state. Parameter: ``subscription``.
JOB_COUNTS = Statement(
    select(Job.status, func.count().label("jobs"))
    .where(Job.subscription_id == bindparam("subscription"))
    .group_by(Job.status)
)


@shapes([(False,), (True,)])
def subscription_jobs(newest: bool) -> Statement:
    """A subscription's jobs, ``(interval, id, status)``: the newest ``limit`` (newest first),
    or a page in interval order after ``after_interval``. Parameters: ``subscription``,
    ``limit``, and ``after_interval`` for a page."""
    stmt = select(Job.interval, Job.id, Job.status).where(Job.subscription_id == bindparam("subscription"))
    if newest:
        stmt = stmt.order_by(Job.interval.desc())
    else:
        stmt = stmt.where(Job.interval > bindparam("after_interval", type_=BigInteger)).order_by(Job.interval)
    return Statement(stmt.limit(bindparam("limit", type_=Integer)))


#: The interval of one of the subscription's jobs (a page's cursor). Parameters:
#: ``subscription``, ``job``.
JOB_INTERVAL = Statement(
    select(Job.interval).where(Job.id == bindparam("job"), Job.subscription_id == bindparam("subscription"))
)
#: ``GET /api/jobs?id=<subscription>``: the subscriptions among ``ids`` with the job of
#: their latest interval (NULL before the first). The caller drops other clients'.
_latest = (
    select(Job.id)
    .where(Job.subscription_id == Subscription.id)
    .order_by(Job.interval.desc())
    .limit(1)
    .scalar_subquery()
    .label("latest")
)
LATEST_JOBS = Statement(
    select(Subscription.id, Subscription.client, Subscription.status, Subscription.containers, _latest).where(
        Subscription.id.in_(bindparam("ids", expanding=True))
    )
)
#: Cancel an active subscription: no interval starts after it. Parameters:
#: ``subscription``, ``owner``, ``now``; returns its id when it was active.
CANCEL = Statement(
    update(Subscription)
    .where(*_ONE, _active())
    .values(status=SubscriptionStatus.CANCELLED, cancelled_at=_NOW, next_due_at=None)
    .returning(Subscription.id)
)

# -- the operator (``jobnode subscriptions``) --------------------------------------------

#: Whose a subscription is: the operator acts as its client. Parameter: ``subscription``.
SUBSCRIPTION_OWNER = Statement(select(Subscription.client).where(Subscription.id == bindparam("subscription")))


@shapes([(False,), (True,)])
def newest_subscriptions(active: bool) -> Statement:
    """Every client's subscriptions, newest first (only the active ones with ``active``).
    Parameter: ``limit``."""
    stmt = select(
        Subscription.id,
        Subscription.client,
        Subscription.status,
        Subscription.period,
        Subscription.frequency,
        Subscription.next_interval,
        Subscription.next_due_at,
        Subscription.missed,
    )
    if active:
        stmt = stmt.where(_active())
    return Statement(stmt.order_by(Subscription.seq.desc()).limit(bindparam("limit", type_=Integer)))
