"""Group commit: concurrent writers share one transaction instead of queueing for their own
(and concurrent reads one statement: ``JobService`` reads results this way too).

The first write to arrive starts a flush at once (no added latency on an idle node);
writes that arrive while a flush is in progress wait for the next one and go in
together. The flush runs in a task of its own, so a caller that is cancelled (a client
that went away) cannot strand the others of its batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: The flush answers each item in order: its result, or the exception for that item alone.
Flush = Callable[[list[T]], Awaitable[list[R | BaseException]]]


class GroupCommit(Generic[T, R]):
    def __init__(self, flush: Flush[T, R], max_batch: int = 1000) -> None:
        self._flush = flush
        self._max_batch = max_batch
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._drainer: asyncio.Task[None] | None = None

    async def __call__(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._drainer is None:
            self._drainer = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._waiting:
                batch = self._waiting[: self._max_batch]
                del self._waiting[: self._max_batch]
                try:
                    results: list[R | BaseException] = await self._flush([item for item, _ in batch])
                except Exception as exc:  # the whole transaction failed: every item gets the error
                    results = [exc] * len(batch)
                for (_, future), result in zip(batch, results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self._drainer = None
