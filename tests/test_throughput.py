"""The dashboard's jobs finished per minute (``QueueNumbers.throughput``), asked every 2 s
while the dashboard is open: right in every minute, and a minute that has settled is read
from the database once, not at each refresh (ten minutes of jobs at 6,000 jobs/s took
1.4 s of PostgreSQL's time a refresh)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest

from app.db.engine import Database
from app.db.models import JobStatus
from app.jobs import queue_numbers
from app.jobs.queue_numbers import SETTLED_SECONDS, QueueNumbers
from tests.operator_support import add_job
from tests.support import migrated

#: 30 s into a minute: the one before it has settled, the current one has not.
NOW = datetime.fromisoformat("2026-12-05T12:00:30+00:00")
MINUTE = NOW.replace(second=0)


def _by_minute(throughput: list[dict[str, Any]]) -> dict[str, tuple[int, int]]:
    return {slot["minute"]: (slot["success"], slot["failed"]) for slot in throughput}


async def _finished(database: Database, at: datetime, status: str) -> None:
    await add_job(database, str(uuid.uuid4()), status=status, created_at=at, finished_at=at)


async def test_each_minute_counts_its_jobs_and_a_settled_one_is_read_once(
    fresh_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await migrated(fresh_url)
    database = Database(fresh_url)
    try:
        for at, status in [
            (NOW - timedelta(minutes=5), JobStatus.SUCCESS),
            (NOW - timedelta(minutes=5), JobStatus.CANCELLED),
            (NOW - timedelta(minutes=1), JobStatus.FAILED),
            (NOW - timedelta(minutes=11), JobStatus.SUCCESS),  # before the ten minutes shown
            (NOW, JobStatus.SUCCESS),
        ]:
            await _finished(database, at, status)
        now = NOW
        monkeypatch.setattr(queue_numbers, "utcnow", lambda: now)
        numbers = QueueNumbers(database)
        read: list[tuple[datetime, datetime]] = []
        count = numbers._count_minutes

        async def counting(since: datetime, until: datetime) -> dict[int, dict[str, int]]:
            read.append((since, until))
            return await count(since, until)

        numbers._count_minutes = counting  # type: ignore[method-assign]
        shown = await numbers.throughput(10)
        assert [slot["minute"] for slot in shown] == [
            (MINUTE - timedelta(minutes=m)).isoformat() for m in range(9, -1, -1)
        ]
        expected = {slot["minute"]: (0, 0) for slot in shown}
        expected[(MINUTE - timedelta(minutes=5)).isoformat()] = (1, 1)
        expected[(MINUTE - timedelta(minutes=1)).isoformat()] = (0, 1)
        expected[MINUTE.isoformat()] = (1, 0)
        assert _by_minute(shown) == expected
        assert [since for since, _ in read] == [MINUTE - timedelta(minutes=9), MINUTE]

        # The next refresh reads the current minute only; its new job shows at once.
        read.clear()
        now = NOW + timedelta(seconds=2)
        await _finished(database, now, JobStatus.FAILED)
        assert _by_minute(await numbers.throughput(10)) == {**expected, MINUTE.isoformat(): (1, 1)}
        assert [since for since, _ in read] == [MINUTE]

        # Once the current minute has settled it is read once more, whole, and kept.
        read.clear()
        now = MINUTE + timedelta(minutes=1, seconds=SETTLED_SECONDS + 1)
        later = _by_minute(await numbers.throughput(10))
        assert later[MINUTE.isoformat()] == (1, 1)
        assert len(later) == 10 and (MINUTE - timedelta(minutes=9)).isoformat() not in later
        assert [since for since, _ in read] == [MINUTE, MINUTE + timedelta(minutes=1)]
        read.clear()
        await numbers.throughput(10)
        assert [since for since, _ in read] == [MINUTE + timedelta(minutes=1)]
    finally:
        await database.dispose()
