"""A subscription's schedule (SPEC §7), the Infernet Coordinator's model: interval k
(1 … frequency) is due at ``active_at + (k-1) * period``.

Pure arithmetic, so that every node, and every test, agrees on it: the ticker
(``app.maintenance.ticker``) passes the database's clock in, never the node's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

#: The ranges of SPEC §7, as ``(field, lowest, highest)``.
MAX_PERIOD = 31_536_000
MAX_UINT32 = 4_294_967_295
RANGES = (("period", 0, MAX_PERIOD), ("frequency", 1, MAX_UINT32), ("active_at", 0, MAX_UINT32))
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def out_of_range(period: int, frequency: int, active_at: int) -> tuple[str, str] | None:
    """The first field of the schedule out of its range, and why; None when it is valid."""
    for field, value, (_, lowest, highest) in zip(
        ("period", "frequency", "active_at"), (period, frequency, active_at), RANGES, strict=True
    ):
        if not lowest <= value <= highest:
            return field, f"must be between {lowest} and {highest}"
    if period == 0 and frequency != 1:
        return "period", "must be at least 1 when frequency is more than 1"
    return None


@dataclass(frozen=True, slots=True)
class Schedule:
    period: int
    frequency: int
    #: Unix seconds of the first interval.
    active_at: int

    def due(self, interval: int) -> datetime:
        """When ``interval`` (1-based) is due."""
        return _EPOCH + timedelta(seconds=self.active_at + (interval - 1) * self.period)

    def reached(self, now: datetime) -> int:
        """The newest interval due at ``now`` (0 before the first, never past the last)."""
        elapsed = now - _EPOCH - timedelta(seconds=self.active_at)
        if elapsed < timedelta(0):
            return 0
        if self.period == 0:
            return self.frequency
        return min(self.frequency, elapsed // timedelta(seconds=self.period) + 1)


@dataclass(frozen=True, slots=True)
class Tick:
    """What a subscription does at a tick: run ``run`` (None: nothing due), count
    ``missed`` intervals skipped over, and next look at ``next_interval`` at ``next_due``
    (both None once the last interval is reached: the subscription is completed)."""

    run: int | None
    missed: int
    next_interval: int | None
    next_due: datetime | None


def tick(schedule: Schedule, next_interval: int, now: datetime) -> Tick:
    """The tick of a subscription whose next interval is ``next_interval``, at ``now``. An
    interval whose successor is already due is missed: only the newest due one runs, and
    intervals never wait for the previous one's job."""
    reached = schedule.reached(now)
    if reached < next_interval:
        return Tick(None, 0, next_interval, schedule.due(next_interval))
    if reached >= schedule.frequency:
        return Tick(reached, reached - next_interval, None, None)
    return Tick(reached, reached - next_interval, reached + 1, schedule.due(reached + 1))
