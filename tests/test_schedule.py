"""The schedule of SPEC §7: interval k is due at active_at + (k-1)*period; an interval whose
successor is already due is missed, only the newest due one runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from app.jobs.schedule import MAX_PERIOD, MAX_UINT32, Schedule, Tick, out_of_range, tick

T0 = 1_800_000_000  # unix seconds
AT = datetime.fromtimestamp(T0, UTC)


def s(seconds: float) -> datetime:
    return AT + timedelta(seconds=seconds)


def test_due_times_are_one_based():
    schedule = Schedule(period=10, frequency=3, active_at=T0)
    assert [schedule.due(k) for k in (1, 2, 3)] == [s(0), s(10), s(20)]


@pytest.mark.parametrize(
    "now, reached",
    [(-0.000001, 0), (0, 1), (9.999999, 1), (10, 2), (25, 3), (10**6, 3)],
)
def test_reached_interval(now, reached):
    assert Schedule(period=10, frequency=3, active_at=T0).reached(s(now)) == reached


def test_delayed_job_period_zero_frequency_one():
    schedule = Schedule(period=0, frequency=1, active_at=T0)
    assert tick(schedule, 1, s(-1)) == Tick(None, 0, 1, s(0))
    assert tick(schedule, 1, s(0)) == Tick(1, 0, None, None)
    assert tick(schedule, 1, s(86_400)) == Tick(1, 0, None, None)  # late, but nothing skipped


def test_active_at_in_the_future_waits_for_the_first_interval():
    assert tick(Schedule(period=5, frequency=4, active_at=T0), 1, s(-3)) == Tick(None, 0, 1, s(0))


def test_each_interval_on_time_misses_nothing():
    schedule = Schedule(period=10, frequency=3, active_at=T0)
    assert tick(schedule, 1, s(0.01)) == Tick(1, 0, 2, s(10))
    assert tick(schedule, 2, s(5)) == Tick(None, 0, 2, s(10))  # not yet due
    assert tick(schedule, 2, s(10)) == Tick(2, 0, 3, s(20))
    assert tick(schedule, 3, s(20.5)) == Tick(3, 0, None, None)


def test_active_at_in_the_past_misses_the_intervals_before_the_newest():
    schedule = Schedule(period=10, frequency=100, active_at=T0)
    assert tick(schedule, 1, s(35)) == Tick(4, 3, 5, s(40))


def test_downtime_counts_missed_intervals_and_runs_only_the_newest():
    schedule = Schedule(period=1, frequency=10, active_at=T0)
    assert tick(schedule, 3, s(7.2)) == Tick(8, 5, 9, s(8))


def test_downtime_past_the_last_interval_runs_the_last_and_completes():
    schedule = Schedule(period=1, frequency=10, active_at=T0)
    assert tick(schedule, 3, s(1000)) == Tick(10, 7, None, None)


def test_huge_frequency_and_period():
    schedule = Schedule(period=MAX_PERIOD, frequency=MAX_UINT32, active_at=MAX_UINT32)
    start = datetime.fromtimestamp(MAX_UINT32, UTC)
    assert tick(schedule, 1, start) == Tick(1, 0, 2, start + timedelta(seconds=MAX_PERIOD))
    # A thousand years on: still far from the last interval, and no overflow.
    later = start + timedelta(days=365 * 1000)
    result = tick(schedule, 2, later)
    assert result.run == 1001 and result.missed == 999 and result.next_interval == 1002
    assert result.next_due == start + timedelta(seconds=1001 * MAX_PERIOD)


def test_huge_frequency_with_period_one_counts_every_missed_second():
    schedule = Schedule(period=1, frequency=MAX_UINT32, active_at=0)
    now = datetime(2026, 12, 4, tzinfo=UTC)
    k = int(now.timestamp()) + 1
    assert tick(schedule, 1, now) == Tick(k, k - 1, k + 1, now + timedelta(seconds=1))


@pytest.mark.parametrize(
    "period, frequency, active_at, problem",
    [
        (10, 1, 0, None),
        (0, 1, MAX_UINT32, None),
        (MAX_PERIOD, MAX_UINT32, 0, None),
        (-1, 1, 0, ("period", "must be between 0 and 31536000")),
        (MAX_PERIOD + 1, 1, 0, ("period", "must be between 0 and 31536000")),
        (10, 0, 0, ("frequency", "must be between 1 and 4294967295")),
        (10, MAX_UINT32 + 1, 0, ("frequency", "must be between 1 and 4294967295")),
        (10, 1, -1, ("active_at", "must be between 0 and 4294967295")),
        (10, 1, MAX_UINT32 + 1, ("active_at", "must be between 0 and 4294967295")),
        (0, 2, 0, ("period", "must be at least 1 when frequency is more than 1")),
    ],
)
def test_ranges(period, frequency, active_at, problem):
    assert out_of_range(period, frequency, active_at) == problem
