"""Group commit: concurrent writers share one transaction instead of queueing for their own
(and concurrent reads one statement: ``JobService`` reads results this way too).

The first write to arrive starts a flush at once (no added latency on an idle node);
writes that arrive while a flush is in progress wait for the next one and go in
together. The flush runs in a task of its own, so a caller that is cancelled (a client
that went away) cannot strand the others of its batch.

A busy process waits a little before a flush (``Linger``; the hot writes on PostgreSQL): a
flush has a fixed cost besides its items (the driver's round trip and wake-ups, the commit),
so the fewer items each carries the more each job pays. A process that serves half the load
(two workers, two nodes) carried half as many per flush and spent 0.1 ms more of its CPU
per job, and PostgreSQL 0.03–0.05 ms more. Only after a flush of several items, and only between flushes closer
together than the interval: a lone client's writes, or an idle node's, never wait.

Sharing a statement must not mean sharing its fate (SPEC §10): when a flush of several
items fails as a whole, each item is flushed again alone, so that only the item the
database refused gets the error and the others go through as if nothing had happened.
What is known to be refused (a NUL, deep nesting: ``app.storable``) is turned away before
it joins a group; this is the net under that, for whatever slips through. Not when the
database is unavailable (``app.db.errors``): every item alone would fail the same way,
one wait or timeout after the other. Then the items queued behind the failed flush get
its error too, at once: on a database that hangs, each flush waits out the deadline
(``database.statement_timeout``), and a request queued behind one must not wait out a
second before its 503.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from app.db.errors import is_database_unavailable

if TYPE_CHECKING:
    from app.db.engine import Database

T = TypeVar("T")
R = TypeVar("R")

#: The flush answers each item in order: its result, or the exception for that item alone.
Flush = Callable[[list[T]], Awaitable[Sequence[R | BaseException]]]


@dataclass(frozen=True, slots=True)
class Linger:
    """After a flush that carried ``together`` items or more (writers come together), the
    next starts no sooner than ``seconds`` after it began, and carries what arrived
    meanwhile. A writer alone (each flush one item) never waits."""

    seconds: float
    together: int = 2


#: The hot writes' (submits, step commits). Measured alternately (``tests.bench.twonodes``,
#: README "Two processes, two nodes"): 5 ms cut a worker's commits per job from 0.72 to
#: 0.52-0.56 when its flushes were 2-3 ms apart; flushes already 5 ms apart are unchanged.
WRITE_LINGER = Linger(0.005)


def write_linger(database: Database) -> Linger | None:
    """The hot writes' linger: on PostgreSQL, where it was measured. SQLite's one writer
    queues every flush behind the others already (and its burst and drain were not
    measured with it)."""
    return WRITE_LINGER if database.is_postgresql else None


class GroupCommit(Generic[T, R]):
    def __init__(self, flush: Flush[T, R], max_batch: int = 1000, linger: Linger | None = None) -> None:
        self._flush = flush
        self._max_batch = max_batch
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._drainer: asyncio.Task[None] | None = None
        self._linger = linger
        self._last_start = -math.inf
        self._last_size = 0

    async def __call__(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._drainer is None:
            self._drainer = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._waiting:
                await self._lingered()
                batch = self._waiting[: self._max_batch]
                del self._waiting[: self._max_batch]
                self._last_size = len(batch)
                items = [item for item, _ in batch]
                try:
                    results: Sequence[R | BaseException] = await self._flush(items)
                except Exception as exc:  # the whole transaction failed
                    if is_database_unavailable(exc):
                        batch += self._waiting  # they would meet the same outage, a deadline later
                        del self._waiting[:]
                        results = [exc] * len(batch)
                    else:
                        results = await self._alone(items) if len(items) > 1 else [exc]
                for (_, future), result in zip(batch, results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self._drainer = None

    async def _lingered(self) -> None:
        loop = asyncio.get_running_loop()
        if self._linger is not None and self._last_size >= self._linger.together:
            early = self._last_start + self._linger.seconds - loop.time()
            if early > 0:
                await asyncio.sleep(early)
        self._last_start = loop.time()

    async def _alone(self, items: list[T]) -> list[R | BaseException]:
        """Each item in a flush of its own (one after the other: this is the rare path, and
        the database is not asked for the group's worth of connections at once). Should the
        database become unavailable meanwhile, the items left get that error at once."""
        results: list[R | BaseException] = []
        for item in items:
            try:
                (result,) = await self._flush([item])
            except Exception as exc:
                result = exc
                if is_database_unavailable(exc):
                    return results + [exc] * (len(items) - len(results))
            results.append(result)
        return results
