"""The wait before a step's next attempt (``app.scheduler.backoff``)."""

from __future__ import annotations

import pytest

from app.config.settings import RetrySettings
from app.scheduler.backoff import retry_delay

RETRY = RetrySettings(attempts=5, backoff=1.0, max_backoff=10.0)


def _low(a: float, b: float) -> float:
    return a


def _high(a: float, b: float) -> float:
    return b


@pytest.mark.parametrize(("made", "expected"), [(0, 1.0), (1, 2.0), (2, 4.0), (3, 8.0), (4, 10.0), (100, 10.0)])
def test_doubles_up_to_max_backoff_without_jitter(made: int, expected: float) -> None:
    assert retry_delay(RETRY, made, uniform=lambda a, b: 1.0) == expected


def test_jitter_stays_within_a_quarter_and_under_max_backoff() -> None:
    assert retry_delay(RETRY, 1, uniform=_low) == 1.5
    assert retry_delay(RETRY, 1, uniform=_high) == 2.5
    assert retry_delay(RETRY, 3, uniform=_high) == 10.0  # 8 * 1.25 capped
    draws = [retry_delay(RETRY, 2) for _ in range(500)]
    assert all(3.0 <= d <= 5.0 for d in draws)
    assert len(set(draws)) > 100  # drawn, not fixed


def test_a_longer_retry_after_replaces_the_backoff_up_to_max_backoff() -> None:
    assert retry_delay(RETRY, 0, retry_after=3.0, uniform=_low) == 3.0
    assert retry_delay(RETRY, 0, retry_after=0.1, uniform=_low) == 0.75  # shorter: the backoff stays
    assert retry_delay(RETRY, 0, retry_after=3600.0, uniform=_low) == 10.0
