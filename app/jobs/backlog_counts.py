"""Counts of unfinished jobs at a cost that does not grow with the backlog: ``/info``'s
pending counts, and the queue's numbers of ``/metrics`` and the dashboard.

Each such count reads every unfinished job: with 450,000 pending, ``/info``'s took 23 ms of
PostgreSQL's CPU, so that one client asking ``/info`` in a loop took 0.7 of a core from the
database while it drained, and eight of them all it had (each answer then took 200 ms); a
scrape's took 150 ms. Below ``LARGE`` unfinished jobs every request still counts (a
millisecond or two), exact as a client that submits and then reads ``/info`` expects.
Above it, a count answers for ``LARGE_SECONDS``, and the requests that come when it is
older share the next one: at most one count a second per node process, however many
clients ask.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

#: Unfinished jobs from which a count is dear enough to be shared.
LARGE = 10_000
#: How long a large count answers.
LARGE_SECONDS = 1.0

T = TypeVar("T")


class BacklogCount(Generic[T]):
    """``count`` shared while ``size`` (the unfinished jobs it found) is ``large``."""

    def __init__(
        self,
        count: Callable[[], Awaitable[T]],
        size: Callable[[T], int],
        large: int = LARGE,
        seconds: float = LARGE_SECONDS,
    ) -> None:
        self._count, self._size = count, size
        self.large, self.seconds = large, seconds
        self._last: T | None = None
        #: When the last count began (``time.monotonic``): its age is counted from there.
        self._began = 0.0
        self._counting: asyncio.Task[T] | None = None

    async def __call__(self) -> T:
        if self._last is None or self._size(self._last) < self.large:
            return await self._recount()
        if time.monotonic() - self._began < self.seconds:
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
            self._last, self._began = counted, began
        return counted

    def _counted(self, task: asyncio.Task[T]) -> None:
        self._counting = None
        if not task.cancelled():
            task.exception()  # retrieved even when every request waiting for it went away
