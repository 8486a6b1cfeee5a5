"""The queue's numbers: unfinished jobs by state and source, runnable jobs and the oldest
one's age, jobs finished per minute, every state counted (``/metrics``, the dashboard and
``jobnode stats``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from app.clock import utcnow
from app.db.engine import Database
from app.db.errors import is_database_unavailable
from app.db.models import JobStatus
from app.db.statements.inspection import (
    COUNT_BY_STATUS,
    FINISHED_PER_MINUTE,
    FINISHED_SINCE,
    RUNNABLE,
    UNFINISHED_BY_STATE,
)
from app.db.statements.subscriptions import ACTIVE_TOTAL, ENDED_BY_STATE, NEXT_DUE
from app.jobs.backlog_counts import BacklogCount

#: The states ``QueueSnapshot.jobs`` counts, in their documented order.
UNFINISHED_STATES = JobStatus.UNFINISHED
#: A minute that ended this long ago gets no more finished jobs: a job's ``finished_at`` is
#: its node's clock when the step commit that ends it is made, committed at once.
SETTLED_SECONDS = 10.0


def _settled_before(now: datetime) -> int:
    """The first minute (since the epoch) that is not settled at ``now``."""
    return int((now.timestamp() - SETTLED_SECONDS) // 60)


def _minute_at(minute: int, tz: tzinfo | None = UTC) -> datetime:
    return datetime.fromtimestamp(minute * 60, tz)


def _no_jobs() -> dict[str, int]:
    return {"success": 0, "failed": 0}


def _jobs_in(slot: dict[str, int]) -> int:
    return slot["success"] + slot["failed"]


@dataclass
class QueueSnapshot:
    """Unfinished jobs by (state, source), runnable pending jobs, the oldest one's age."""

    jobs: dict[tuple[str, str], int]
    queue_depth: int
    oldest_pending_seconds: float
    #: Active subscriptions.
    active_subscriptions: int = 0
    #: Completed and cancelled subscriptions (from their index: the scrape reads no table rows).
    ended_subscriptions: dict[str, int] = field(default_factory=dict)

    @property
    def running(self) -> int:
        return sum(n for (status, _), n in self.jobs.items() if status == JobStatus.RUNNING)


class QueueNumbers:
    def __init__(self, database: Database) -> None:
        self.database = database
        self._queue = BacklogCount(self._read_queue, lambda snapshot: sum(snapshot.jobs.values()))
        #: Jobs finished per settled minute (``throughput``).
        self._settled: dict[int, dict[str, int]] = {}
        self._recent = BacklogCount(self._count_recent, lambda recent: sum(map(_jobs_in, recent.values())))

    async def queue(self) -> QueueSnapshot:
        """Reads unfinished jobs only, and subscriptions from indexes (partial indexes);
        with a large backlog up to a second old (``app.jobs.backlog_counts``)."""
        return await self._queue()

    async def _read_queue(self) -> QueueSnapshot:
        now = utcnow()
        async with self.database.read() as conn:
            by_state: Sequence[Any] = (await UNFINISHED_BY_STATE.run(conn)).all()
            runnable: Any = (await RUNNABLE.run(conn, {"now": now})).one()
            subscriptions: int = (await ACTIVE_TOTAL.run(conn)).scalar_one()
            ended: Sequence[Any] = (await ENDED_BY_STATE.run(conn)).all()
        jobs = {(status, source): count for status, source, count in by_state}
        depth, oldest_at = runnable
        age = max(0.0, (now - oldest_at).total_seconds()) if oldest_at is not None else 0.0
        return QueueSnapshot(jobs, depth, age, subscriptions, dict(ended))

    async def next_subscription_due(self) -> datetime | None:
        """The earliest due time of an active subscription (None when none is active)."""
        async with self.database.read() as conn:
            due: datetime | None = (await NEXT_DUE.run(conn)).scalar_one()
        return due

    async def queue_if_available(self) -> QueueSnapshot | None:
        """``queue``, or None while the database does not answer (a scrape still serves the
        rest); other errors are raised."""
        try:
            return await self.queue()
        except Exception as exc:
            if not is_database_unavailable(exc):
                raise
            return None

    async def throughput(self, minutes: int = 10) -> list[dict[str, Any]]:
        """Jobs finished per minute over the last ``minutes`` (the current minute last),
        ``[{"minute": iso, "success": n, "failed": n}]``; cancelled counts as failed.

        The dashboard asks every 2 s, and counting ten minutes of jobs read each of them
        (1.4 s of PostgreSQL's time at 6,000 jobs/s). A minute that ended more than
        ``SETTLED_SECONDS`` ago is counted once and kept; the rest is counted as a
        backlog is (``app.jobs.backlog_counts``): each time while small, shared and at
        most 1 % of the time when large."""
        now = utcnow()
        current = int(now.timestamp() // 60)
        first = current - minutes + 1
        await self._settle(first, _settled_before(now))
        recent = await self._recent()
        slots = {m: self._settled.get(m) or recent.get(m) or _no_jobs() for m in range(first, current + 1)}
        return [{"minute": _minute_at(m, now.tzinfo).isoformat(), **slot} for m, slot in slots.items()]

    async def _settle(self, first: int, settled: int) -> None:
        """Count the settled minutes from ``first`` not counted yet, and forget older ones."""
        for minute in [m for m in self._settled if m < first]:
            del self._settled[minute]
        missing = [m for m in range(first, settled) if m not in self._settled]
        if missing:
            counted = await self._count_minutes(_minute_at(missing[0]), _minute_at(settled))
            for minute in range(missing[0], settled):
                self._settled[minute] = counted.get(minute, _no_jobs())

    async def _count_recent(self) -> dict[int, dict[str, int]]:
        """The minutes not settled yet, counted, up to an hour ahead (another node's clock
        may run ahead of this one's); a minute settled since is read from ``_settled``."""
        now = utcnow()
        return await self._count_minutes(_minute_at(_settled_before(now)), now + timedelta(hours=1))

    async def _count_minutes(self, since: datetime, until: datetime) -> dict[int, dict[str, int]]:
        counts: dict[int, dict[str, int]] = {}
        statement = FINISHED_PER_MINUTE.pick(self.database)
        async with self.database.read() as conn:
            rows: Sequence[Any] = (await statement.run(conn, {"since": since, "until": until})).all()
        for minute, status, count in rows:
            slot = counts.setdefault(int(minute), _no_jobs())
            slot["success" if status == JobStatus.SUCCESS else "failed"] += count
        return counts

    async def finished_since(self, seconds: float) -> int:
        async with self.database.read() as conn:
            count: int = (await FINISHED_SINCE.run(conn, {"since": utcnow() - timedelta(seconds=seconds)})).scalar_one()
        return count

    async def stats(self) -> dict[str, Any]:
        """For the CLI: every state (a full count), the oldest pending job, last minute's throughput."""
        async with self.database.read() as conn:
            by_status: Sequence[Any] = (await COUNT_BY_STATUS.run(conn)).all()
        counts: dict[str, int] = dict(by_status)
        queue = await self.queue()
        return {
            "jobs": {status: counts.get(status, 0) for status in (*JobStatus.UNFINISHED, *JobStatus.FINISHED)},
            "queue_depth": queue.queue_depth,
            "oldest_pending_seconds": queue.oldest_pending_seconds,
            "finished_last_minute": await self.finished_since(60),
        }
