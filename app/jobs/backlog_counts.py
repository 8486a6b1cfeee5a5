"""Counts of unfinished jobs at a cost that does not grow with the backlog: ``/info``'s
pending counts, and the queue's numbers of ``/metrics`` and the dashboard.

Each such count reads every unfinished job: with 450,000 pending, ``/info``'s took 23 ms of
PostgreSQL's CPU, so that one client asking ``/info`` in a loop took 0.7 of a core from the
database while it drained, and eight of them all it had (each answer then took 200 ms); a
scrape's took 150 ms. Below ``LARGE`` unfinished jobs every request still counts (a
millisecond or two), exact as a client that submits and then reads ``/info`` expects.
Above it, a count answers for ``LARGE_SECONDS`` or for ``1 / SHARE`` times what it took,
whichever is longer, and the requests that come when it is older share the next one: one
count a second per node process at most, however many clients ask, and no more than
``SHARE`` of the time whatever the backlog. Without the second bound the dashboard's
depth sampler (every 5 s in every node process, whether anyone looks) took 0.28 s of
PostgreSQL's CPU per sample with 1 M pending, and the claims that ran beside it waited.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

#: Unfinished jobs from which a count is dear enough to be shared.
LARGE = 10_000
#: How long a large count answers at least.
LARGE_SECONDS = 1.0
#: At most this share of the time goes to counting a large backlog: a count answers for
#: what it took divided by it (a count of 0.25 s for 25 s).
SHARE = 0.01

T = TypeVar("T")


class BacklogCount(Generic[T]):
    """``count`` shared while ``size`` (the unfinished jobs it found) is ``large``."""

    def __init__(
        self,
        count: Callable[[], Awaitable[T]],
        size: Callable[[T], int],
        large: int = LARGE,
        seconds: float = LARGE_SECONDS,
        share: float = SHARE,
    ) -> None:
        self._count, self._size = count, size
        self.large, self.seconds, self.share = large, seconds, share
        self._last: T | None = None
        #: When the last count began (``time.monotonic``): its age is counted from there.
        self._began = 0.0
        #: What the last count took, in seconds.
        self._took = 0.0
        self._counting: asyncio.Task[T] | None = None

    async def __call__(self) -> T:
        if self._last is None or self._size(self._last) < self.large:
            return await self._recount()
        if time.monotonic() - self._began < max(self.seconds, self._took / self.share):
            return self._last
        if self._counting is None:
            self._counting = asyncio.create_task(self._recount())
            self._counting.add_done_callback(self._counted)
        # Shielded: a request that goes away does not cancel the others' count.
        return await asyncio.shield(self._counting)

    async def _recount(self) -> T:
        began = time.monotonic()
        counted = await self._count()
        if began >= self._began:  # an older count that ended later does not replace a newer one
            self._last, self._began, self._took = counted, began, time.monotonic() - began
        return counted

    def _counted(self, task: asyncio.Task[T]) -> None:
        self._counting = None
        if not task.cancelled():
            task.exception()  # retrieved even when every request waiting for it went away
