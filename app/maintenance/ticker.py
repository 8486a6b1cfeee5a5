"""The subscription ticker: at each interval's due time, that interval's job (SPEC §7).

It runs on every node (``Leadership.register_on_every_node``): ``SKIP LOCKED`` shares the
due subscriptions among the nodes, and the unique (subscription, interval) of ``jobs``
makes each interval's job exactly once, whichever node gets there and however often (a
node killed after its INSERT and before its COMMIT wrote nothing; the next tick does it).
Creating the job and advancing the subscription are one transaction.

Between ticks it sleeps until the earliest due time (one indexed query), woken at once
when a subscription is added or cancelled on any node. Due times are the database's
clock on PostgreSQL (``DATABASE_NOW``), so nodes with different clocks agree.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from app import metrics
from app.clock import utcnow
from app.db.direct import wrap
from app.db.engine import Database
from app.db.models import SubscriptionStatus
from app.db.signal import JobSignal
from app.db.statements.subscriptions import ADVANCE, DATABASE_NOW, DUE, INSERT_INTERVAL_JOB, NEXT_DUE
from app.jobs.rows import new_job_id
from app.jobs.schedule import Schedule, tick

log = logging.getLogger("jobnode.scheduler")

#: How soon to look again at a due subscription that another node is ticking.
LOCKED_ELSEWHERE_SECONDS = 0.05


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


async def tick_due(database: Database, signal: JobSignal, batch: int = 100) -> Ticked:
    """One transaction: up to ``batch`` due subscriptions, each with its interval's job
    (unless it has one) and its next interval, or completed."""
    done = Ticked()
    async with database.write() as conn:
        now = await database_now(database, conn)
        insert_job = INSERT_INTERVAL_JOB.pick(database)
        for row in (await DUE.run(conn, {"now": now, "batch": batch})).all():
            done.seen += 1
            subscription = str(row.id)
            schedule = Schedule(row.period, row.frequency, row.active_at)
            step = tick(schedule, row.next_interval, now)
            if step.run is not None:
                job = {"job": new_job_id(), "subscription": subscription, "interval": step.run, "now": now}
                if (await insert_job.run(conn, job)).first() is not None:
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
        if done.started:
            await wrap(conn).notify(*signal.notification)  # other nodes' claim loops
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
