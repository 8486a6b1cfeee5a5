"""The subscription ticker against a real database (both): interval jobs at their due
time, missed intervals counted and not run, and exactly one job per interval however
many tickers race on one PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from app.clock import utcnow
from app.db.direct import wrap
from app.db.engine import Database
from app.db.models import Job, JobStatus, Subscription, SubscriptionStatus
from app.db.signal import JobSignal
from app.db.statements.subscriptions import INSERT_SUBSCRIPTIONS
from app.jobs.requests import JobRequest
from app.jobs.schedule import Schedule
from app.jobs.subscriptions import new_subscription_row
from app.maintenance.leader import Leadership
from app.maintenance.pruner import prune
from app.maintenance.ticker import Ticker, tick_due
from tests.conftest import BACKENDS
from tests.helpers import fresh_database
from tests.support import migrated

REQUEST = JobRequest(containers=["echo"], data={"x": 1})


@pytest.fixture(params=BACKENDS)
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    async with fresh_database(request.param, tmp_path) as url:
        await migrated(url)
        database = Database(url)
        try:
            yield database
        finally:
            await database.dispose()


async def subscribe(database: Database, period: int, frequency: int, active_at: int, count: int = 1) -> list[str]:
    rows = [
        new_subscription_row(REQUEST, Schedule(period, frequency, active_at), "127.0.0.1", utcnow())
        for _ in range(count)
    ]
    async with database.write() as conn:
        await wrap(conn).insert_many(INSERT_SUBSCRIPTIONS, rows)
    return [row["id"] for row in rows]


async def interval_jobs(database: Database, subscription: str) -> list[tuple[int, object]]:
    """(interval, created_at) of a subscription's jobs, in interval order."""
    async with database.read() as conn:
        rows = await conn.execute(
            select(Job.interval, Job.created_at).where(Job.subscription_id == subscription).order_by(Job.interval)
        )
        return [tuple(row) for row in rows]


async def state(database: Database, subscription: str) -> tuple[str, int, int]:
    async with database.read() as conn:
        row = (
            await conn.execute(
                select(Subscription.status, Subscription.next_interval, Subscription.missed).where(
                    Subscription.id == subscription
                )
            )
        ).one()
        return tuple(row)  # type: ignore[return-value]


def now_seconds() -> int:
    return int(time.time())


async def test_past_start_runs_only_the_newest_interval_and_counts_the_missed(database):
    (sub,) = await subscribe(database, period=1, frequency=100, active_at=now_seconds() - 10)
    done = await tick_due(database, JobSignal())
    assert (done.started, done.seen) == (1, 1)
    [(interval, _)] = await interval_jobs(database, sub)
    status, next_interval, missed = await state(database, sub)
    assert interval in (11, 12)  # the second may turn between the two reads
    assert (status, next_interval, missed) == (SubscriptionStatus.ACTIVE, interval + 1, interval - 1)
    # Nothing more is due until the next second: a second tick does nothing.
    assert (await tick_due(database, JobSignal())).started in (0, 1)


async def test_past_the_last_interval_runs_the_last_and_completes(database):
    (sub,) = await subscribe(database, period=1, frequency=5, active_at=now_seconds() - 100)
    await tick_due(database, JobSignal())
    assert [i for i, _ in await interval_jobs(database, sub)] == [5]
    assert await state(database, sub) == (SubscriptionStatus.COMPLETED, 6, 4)
    assert (await tick_due(database, JobSignal())).seen == 0


async def test_the_ticker_runs_each_interval_on_time(database):
    """period 1 s, frequency 3, and a delayed job (frequency 1, 2 s ahead): each interval's
    job is created within a fraction of a second of its due time, by the ticker sleeping
    until it (the delayed one is added while it sleeps, and wakes it)."""
    signal = JobSignal()
    leadership = Leadership()
    leadership.register_on_every_node(Ticker(database, signal))
    start = now_seconds() + 1
    (recurring,) = await subscribe(database, period=1, frequency=3, active_at=start)
    await leadership.start()
    try:
        await asyncio.sleep(0.3)
        (delayed,) = await subscribe(database, period=0, frequency=1, active_at=start + 2)
        signal.subscriptions_changed()
        deadline = time.monotonic() + 10
        while (await state(database, recurring))[0] == SubscriptionStatus.ACTIVE or (await state(database, delayed))[
            0
        ] == SubscriptionStatus.ACTIVE:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
    finally:
        await leadership.stop()
    jobs = await interval_jobs(database, recurring)
    assert [i for i, _ in jobs] == [1, 2, 3]
    assert await state(database, recurring) == (SubscriptionStatus.COMPLETED, 4, 0)
    assert await state(database, delayed) == (SubscriptionStatus.COMPLETED, 2, 0)
    epoch = Schedule(1, 3, start).due(1)
    lags = [created - (epoch + timedelta(seconds=i - 1)) for i, created in jobs]
    lags += [created - Schedule(0, 1, start + 2).due(1) for _, created in await interval_jobs(database, delayed)]
    assert all(timedelta(0) <= lag < timedelta(seconds=0.5) for lag in lags), lags


@pytest.mark.postgres
async def test_racing_tickers_start_each_interval_once(postgresql_url):
    """Four tickers (each with its own pool, as separate nodes) race on 200 subscriptions
    for three seconds: every interval reached is either started once or missed, never
    twice, never lost."""
    url = postgresql_url
    setup = Database(url)
    subs = await subscribe(setup, period=1, frequency=1000, active_at=now_seconds() - 2, count=200)
    nodes = [Database(url) for _ in range(4)]
    started = missed = 0

    async def race(database: Database) -> None:
        nonlocal started, missed
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            done = await tick_due(database, JobSignal(), batch=20)
            started += done.started
            missed += done.missed
            await asyncio.sleep(0)

    try:
        await asyncio.gather(*(race(node) for node in nodes))
        async with setup.read() as conn:
            reached = (
                await conn.execute(select(func.sum(Subscription.next_interval - 1)).where(Subscription.id.in_(subs)))
            ).scalar_one()
            jobs = (
                await conn.execute(select(func.count()).select_from(Job).where(Job.subscription_id.in_(subs)))
            ).scalar_one()
            missed_stored = (
                await conn.execute(select(func.sum(Subscription.missed)).where(Subscription.id.in_(subs)))
            ).scalar_one()
    finally:
        for node in nodes:
            await node.dispose()
        await setup.dispose()
    assert jobs == started and missed_stored == missed
    assert started + missed == reached
    assert started >= 200 * 3  # each subscription reached at least three intervals


async def test_retention_keeps_the_latest_job_of_an_active_subscription(database):
    (sub,) = await subscribe(database, period=1, frequency=100, active_at=now_seconds() - 10)
    await tick_due(database, JobSignal())
    await asyncio.sleep(1.1)
    await tick_due(database, JobSignal())
    async with database.write() as conn:
        await conn.execute(update(Job).values(status=JobStatus.SUCCESS, finished_at=utcnow()))
    older, latest = [i for i, _ in await interval_jobs(database, sub)]
    assert latest > older
    await prune(database, utcnow() + timedelta(days=1))
    assert [i for i, _ in await interval_jobs(database, sub)] == [latest]
    async with database.write() as conn:
        await conn.execute(update(Subscription).values(status=SubscriptionStatus.CANCELLED, next_due_at=None))
    await prune(database, utcnow() + timedelta(days=1))
    assert await interval_jobs(database, sub) == []


async def test_a_faulty_subscription_fails_alone(database, caplog):
    """A row written outside the API (a period no schedule can reach: its arithmetic
    overflows), due first among 20 good ones of other clients: each good one gets its
    interval's job on time; the faulty one is logged and set aside for a minute, still
    active, not retried at each tick."""
    now = utcnow()
    good = [new_subscription_row(REQUEST, Schedule(60, 2, now_seconds()), f"client-{n}", now) for n in range(20)]
    (poison,) = await subscribe(database, period=1, frequency=5, active_at=now_seconds() - 5)
    async with database.write() as conn:
        await wrap(conn).insert_many(INSERT_SUBSCRIPTIONS, good)
        await conn.execute(update(Subscription).where(Subscription.id == poison).values(period=10**15))
    done = await tick_due(database, JobSignal())
    assert done.started == 20
    for row in good:
        [(interval, created_at)] = await interval_jobs(database, row["id"])
        assert interval == 1
        assert created_at - Schedule(60, 2, row["active_at"]).due(1) < timedelta(seconds=5)
    assert await interval_jobs(database, poison) == []
    assert "subscription tick failed, retried in 60s: OverflowError" in caplog.text
    async with database.read() as conn:
        status, due = (
            await conn.execute(select(Subscription.status, Subscription.next_due_at).where(Subscription.id == poison))
        ).one()
    assert status == SubscriptionStatus.ACTIVE
    assert timedelta(seconds=50) < due - utcnow() <= timedelta(seconds=60)
    # Set aside: the next tick has nothing due, and does not fail.
    assert (await tick_due(database, JobSignal())).seen == 0
