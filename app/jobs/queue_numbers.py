"""The queue's numbers: unfinished jobs by state and source, runnable jobs and the oldest
one's age, jobs finished per minute, every state counted (``/metrics``, the dashboard and
``jobnode stats``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
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
        ``[{"minute": iso, "success": n, "failed": n}]``; cancelled counts as failed."""
        now = utcnow()
        current = int(now.timestamp() // 60)
        since = datetime.fromtimestamp((current - minutes + 1) * 60, now.tzinfo)
        counts: dict[int, dict[str, int]] = {
            m: {"success": 0, "failed": 0} for m in range(current - minutes + 1, current + 1)
        }
        statement = FINISHED_PER_MINUTE.pick(self.database)
        async with self.database.read() as conn:
            rows: Sequence[Any] = (await statement.run(conn, {"since": since})).all()
        for minute, status, count in rows:
            slot = counts.get(int(minute))
            if slot is not None:
                slot["success" if status == JobStatus.SUCCESS else "failed"] += count
        return [
            {"minute": datetime.fromtimestamp(m * 60, now.tzinfo).isoformat(), **slot} for m, slot in counts.items()
        ]

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
