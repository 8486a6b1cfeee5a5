"""How long a failed step waits for its next attempt (``retry`` of a container, SPEC §8).

Pure arithmetic, apart from the random draw that the caller may pass in: exponential
backoff with jitter, so that many jobs failing together against one container do not
come back together; a ``Retry-After`` the container asked for, when longer, instead.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from app.config.settings import RetrySettings

#: The jitter: each wait is drawn within ±25 % of its exponential value.
JITTER = (0.75, 1.25)


def retry_delay(
    retry: RetrySettings,
    retries_made: int,
    retry_after: float | None = None,
    uniform: Callable[[float, float], float] = random.uniform,
) -> float:
    """Seconds before the next attempt of a step already retried ``retries_made`` times
    (0 for its first failure); never more than ``retry.max_backoff``."""
    exponent = min(retries_made, 64)  # 2**64 seconds is long past any max_backoff
    base = min(retry.backoff * 2.0**exponent, retry.max_backoff)
    delay = min(base * uniform(*JITTER), retry.max_backoff)
    if retry_after is not None and retry_after > delay:
        delay = min(retry_after, retry.max_backoff)
    return delay
