"""The subscription ticker: at each interval's due time, that interval's job (SPEC §7).

It runs on every node (``Leadership.register_on_every_node``): ``SKIP LOCKED`` shares the
due subscriptions among the nodes, and the unique (subscription, interval) of ``jobs``
makes each interval's job exactly once, whichever node gets there and however often (a
node killed after its INSERT and before its COMMIT wrote nothing; the next tick does it).
Creating the job and advancing the subscription are one transaction; a batch of them
that fails is done again one subscription at a time, so that a faulty one fails alone.

Between ticks it sleeps until the earliest due time (one indexed query), woken at once
when a subscription is added or cancelled on any node. Due times are the database's
clock on PostgreSQL (``DATABASE_NOW``), so nodes with different clocks agree.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from app import metrics
from app.clock import utcnow
from app.db.direct import wrap
from app.db.engine import Database
from app.db.errors import is_database_unavailable
from app.db.models import SubscriptionStatus
from app.db.signal import JobSignal
from app.db.statements.subscriptions import (
    ADVANCE,
    DATABASE_NOW,
    DUE,
    DUE_ONE,
    INSERT_INTERVAL_JOB,
    NEXT_DUE,
    POSTPONE,
)
from app.jobs.rows import new_job_id
from app.jobs.schedule import Schedule, tick
from app.logging import rate_limited

log = logging.getLogger("jobnode.scheduler")
#: A faulty subscription's tick, every ``FAULTY_RETRY``: once a minute at most per message.
faults = rate_limited(logging.getLogger("jobnode.subscriptions"))

#: How soon to look again at a due subscription that another node is ticking.
LOCKED_ELSEWHERE_SECONDS = 0.05
#: How long a subscription whose tick failed waits before it is tried again.
FAULTY_RETRY = timedelta(minutes=1)


async def database_now(database: Database, conn: AsyncConnection) -> datetime:
    """The one clock due times are compared with: the database's on PostgreSQL, where
    several nodes share it; on SQLite, the one node's."""
    if database.is_postgresql:
        now: datetime = (await DATABASE_NOW.run(conn)).scalar_one()
        return now
    return utcnow()


class Ticked:
    """What one batch did: interval jobs started, intervals missed, subscriptions seen."""

    def __init__(self) -> None:
        self.started = 0
        self.missed = 0
        self.seen = 0
        #: Seconds from each started interval's due time to its job.
        self.lags: list[float] = []


async def _tick(conn: AsyncConnection, database: Database, row: Row[Any], now: datetime, done: Ticked) -> None:
    """One due subscription: its interval's job (unless it has one) and its next interval,
    or completed."""
    done.seen += 1
    subscription = str(row.id)
    schedule = Schedule(row.period, row.frequency, row.active_at)
    step = tick(schedule, row.next_interval, now)
    if step.run is not None:
        job = {"job": new_job_id(), "subscription": subscription, "interval": step.run, "now": now}
        if (await INSERT_INTERVAL_JOB.pick(database).run(conn, job)).first() is not None:
            done.started += 1
            done.lags.append((now - schedule.due(step.run)) / timedelta(seconds=1))
    done.missed += step.missed
    await ADVANCE.run(
        conn,
        {
            "subscription": subscription,
            "following": step.next_interval or row.frequency + 1,
            "due": step.next_due,
            "state": SubscriptionStatus.ACTIVE if step.next_due else SubscriptionStatus.COMPLETED,
            "skipped": step.missed,
        },
    )


async def _notify(conn: AsyncConnection, signal: JobSignal, done: Ticked) -> None:
    if done.started:
        await wrap(conn).notify(*signal.notification)  # other nodes' claim loops


async def _tick_batch(database: Database, signal: JobSignal, batch: int) -> Ticked:
    done = Ticked()
    async with database.write() as conn:
        now = await database_now(database, conn)
        for row in (await DUE.run(conn, {"now": now, "batch": batch})).all():
            await _tick(conn, database, row, now, done)
        await _notify(conn, signal, done)
    return done


async def _tick_one_by_one(database: Database, signal: JobSignal, batch: int) -> Ticked:
    """The batch's subscriptions, each in its own transaction: a faulty one fails alone
    (``_set_aside``), the others of every client get their intervals."""
    done = Ticked()
    async with database.write() as conn:  # the due ones; their locks end with this transaction
        now = await database_now(database, conn)
        due = [str(row.id) for row in await DUE.run(conn, {"now": now, "batch": batch})]
    for subscription in due:
        try:
            async with database.write() as conn:
                now = await database_now(database, conn)
                one = Ticked()
                row = (await DUE_ONE.run(conn, {"subscription": subscription, "now": now})).first()
                if row is not None:  # not ticked meanwhile by another node
                    await _tick(conn, database, row, now, one)
                    await _notify(conn, signal, one)
        except Exception as exc:
            if is_database_unavailable(exc):
                raise
            await _set_aside(database, subscription, exc)
            done.seen += 1
        else:
            done.seen += one.seen
            done.started += one.started
            done.missed += one.missed
            done.lags += one.lags
    return done


async def _set_aside(database: Database, subscription: str, exc: Exception) -> None:
    """A subscription whose tick fails is looked at again in ``FAULTY_RETRY`` instead of at
    once: the ticker does not spin on it, and it stays active and visible as it is (its
    ``next_due_at`` in ``GET /api/subscriptions/{id}`` shows when it is tried next). A fixed
    delay rather than a period: its schedule may be what fails, and a fault that clears by
    itself (the row fixed by hand, a transient statement error) resumes it within the
    delay. Nothing is lost to the delay that the schedule would not count as missed."""
    faults.warning(
        "subscription tick failed, retried in %ds: %s: %s",
        FAULTY_RETRY // timedelta(seconds=1),
        type(exc).__name__,
        exc,
        extra={"subscription": subscription},
    )
    async with database.write() as conn:
        due = await database_now(database, conn) + FAULTY_RETRY
        await POSTPONE.run(conn, {"subscription": subscription, "due": due})


async def tick_due(database: Database, signal: JobSignal, batch: int = 100) -> Ticked:
    """Up to ``batch`` due subscriptions, in one transaction. When it fails for another
    reason than the database being out of reach, the batch again, one subscription per
    transaction: one faulty subscription (say, a row written outside the API whose schedule
    overflows) would otherwise roll back, and stall, every other one of its batch, forever."""
    try:
        done = await _tick_batch(database, signal, batch)
    except Exception as exc:
        if is_database_unavailable(exc):
            raise
        done = await _tick_one_by_one(database, signal, batch)
    if done.started:
        signal.notify()  # this node's claim loop, once committed
    metrics.intervals_ticked(done.lags, done.missed)
    return done


class Ticker:
    name = "tick"

    def __init__(self, database: Database, signal: JobSignal, period: float = 5.0, batch: int = 100) -> None:
        self.database = database
        self.signal = signal
        #: The longest sleep: a wake-up lost while the listen connection was down costs
        #: at most this much.
        self.period = period
        self.batch = batch
        #: Seconds from the last run to the earliest due time (None: nothing scheduled).
        self._delay: float | None = 0.0

    async def work(self) -> None:
        while True:
            done = await tick_due(self.database, self.signal, self.batch)
            if done.started or done.missed:
                log.debug("subscriptions: %d interval jobs started, %d intervals missed", done.started, done.missed)
            if done.seen < self.batch:
                break
        async with self.database.read() as conn:
            now = await database_now(self.database, conn)
            due: datetime | None = (await NEXT_DUE.run(conn)).scalar_one()
        if due is None:
            self._delay = None
        else:  # one already due is another node's (locked): it is done in a moment
            self._delay = (due - now) / timedelta(seconds=1)
            if self._delay <= 0:
                self._delay = LOCKED_ELSEWHERE_SECONDS

    async def wait(self, period: float) -> bool:
        """Until the earliest due time, or a subscription added or cancelled anywhere."""
        timeout = period if self._delay is None else min(period, self._delay)
        self._delay = None
        return await self.signal.wait_subscriptions(timeout)
