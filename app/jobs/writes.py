"""A node's two hot writes, new jobs (a submit's INSERT) and step commits, group-committed
(``app.db.batching``); on PostgreSQL in one group, so that a flush that has both stores
them in one statement: one round trip and one commit instead of two.

Every flush costs the node and the database a fixed amount besides its rows (the driver's
Bind and send, a wake-up for the answer, the commit); a process that serves half the load
(``server.workers: 2``, two nodes) flushes half as much each time, so per job it paid about
twice those costs (README, "Two processes, two nodes"). Each job costs one of each write,
and in a busy process submits and step commits arrive side by side: shared, they fill one
flush together where they filled two apart.

Together only where one statement does both (``JobStore.at_once``: PostgreSQL, steps that
all end their jobs alike or all go on) and every new job is claimed by its INSERT (jobs
left ``pending`` are announced by a NOTIFY of their own statement). Otherwise, and when the
shared statement fails, each kind is flushed on its own, each item alone after that when
its group fails: one bad item still fails alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from app.clock import utcnow
from app.db.batching import Flush, GroupCommit, R, T, flush_shared
from app.db.engine import Database
from app.db.errors import is_database_unavailable
from app.db.signal import JobSignal
from app.db.statements.submits import INSERT_JOBS
from app.jobs.handoff import NoClaims, SubmitClaims
from app.jobs.transitions import JobStore
from app.jobs.values import ClaimedJob, LeaseLost, StepResult

#: A submit's rows (one request's jobs), or one step to commit.
Write = list[dict[str, Any]] | StepResult
Answer = LeaseLost | None


class HotWrites:
    def __init__(self, database: Database, signal: JobSignal, store: JobStore | None = None) -> None:
        self.database = database
        self.signal = signal
        self.store = store
        #: This process's scheduler, which takes new jobs in their INSERT when it can
        #: (``app.jobs.handoff``); set by the composition root once it exists.
        self.claims: SubmitClaims = NoClaims()
        shared = database.is_postgresql and store is not None and store.signal is not None
        self._shared: GroupCommit[Write, Answer] | None = GroupCommit(self._flush) if shared else None
        self._jobs: GroupCommit[list[dict[str, Any]], None] = GroupCommit(self._insert_jobs)
        self._steps: GroupCommit[StepResult, Answer] | None = (
            GroupCommit(store.record_steps) if store is not None else None
        )

    async def insert(self, rows: list[dict[str, Any]]) -> None:
        """Store a submit's new jobs (the first claimed by this node when it has room)."""
        if self._shared is not None:
            await self._shared(rows)
        else:
            await self._jobs(rows)

    async def step(self, result: StepResult) -> LeaseLost | None:
        """Commit a step: ``LeaseLost`` when the job is no longer this node's."""
        if self._shared is not None:
            return await self._shared(result)
        assert self._steps is not None, "a node without a store commits no steps"
        return await self._steps(result)

    async def _flush(self, items: list[Write]) -> Sequence[Answer | BaseException]:
        batches = [item for item in items if isinstance(item, list)]
        steps = [item for item in items if isinstance(item, StepResult)]
        assert self.store is not None
        if batches and steps and self.store.at_once(steps):
            try:
                together = await self._store(batches, steps)
            except Exception as exc:
                if is_database_unavailable(exc):
                    raise
            else:  # the jobs are stored; the steps too, unless some jobs were left pending
                stepped = together if together is not None else await self._each(self.store.record_steps, steps)
                return self._in_order(items, [None] * len(batches), stepped)
        jobs, stepped = await asyncio.gather(
            self._each(self._insert_jobs, batches), self._each(self.store.record_steps, steps)
        )
        return self._in_order(items, jobs, stepped)

    @staticmethod
    async def _each(flush: Flush[T, R], items: list[T]) -> Sequence[R | BaseException]:
        """One kind's flush (``flush_shared``); every item gets the error of an outage."""
        if not items:
            return []
        try:
            return await flush_shared(flush, items)
        except Exception as exc:
            return [exc] * len(items)

    @staticmethod
    def _in_order(
        items: list[Write], jobs: Sequence[BaseException | None], steps: Sequence[Answer | BaseException]
    ) -> list[Answer | BaseException]:
        """The answers of each kind, back in the items' order."""
        kinds = {True: iter(jobs), False: iter(steps)}
        return [next(kinds[isinstance(item, list)]) for item in items]

    async def _insert_jobs(self, batches: list[list[dict[str, Any]]]) -> list[BaseException | None]:
        """The submits of one flush (``_store``)."""
        await self._store(batches)
        return [None] * len(batches)

    async def _store(
        self, batches: list[list[dict[str, Any]]], steps: list[StepResult] | None = None
    ) -> list[Answer] | None:
        """Concurrent submits commit together: one INSERT, one commit. The first jobs are
        claimed in it when this node's scheduler can run them now (``app.jobs.handoff``);
        the others are left ``pending`` and announced (NOTIFY in the same statement).
        With ``steps`` (``JobStore.at_once``), the steps are committed in the same
        statement and their answers returned, if every job is claimed; else the jobs are
        stored alone and the answer is None (the steps are not committed).

        The claimed ones start here, in the flush's own task, whichever submits went away."""
        rows = [row for rows in batches for row in rows]
        claimed = self.claims.reserve(len(rows))
        left = claimed < len(rows)
        together = bool(steps) and not left
        unclaimed: dict[str, Any] = {}
        if claimed:
            columns = self.claims.claimed_columns(utcnow())
            unclaimed = {key: rows[0][key] for key in columns}  # the same in every new row
            for row in rows[:claimed]:
                row.update(columns)
        answers: list[Answer] | None = None
        try:
            if together:
                assert self.store is not None and steps is not None
                answers = await self.store.record_steps_with_jobs(steps, rows)
            else:
                async with self.database.direct_write(one_statement=True) as conn:
                    await conn.insert_many(INSERT_JOBS, rows, notify=self.signal.notification if left else None)
        except BaseException:
            self.claims.unreserve(claimed)
            # The rows go back as they came: they may be flushed again, each on its own,
            # and a row must not be stored claimed without a reservation (its job would
            # sit ``running`` here, run by nobody, until its lease expired).
            for row in rows[:claimed]:
                row.update(unclaimed)
            raise
        if claimed:
            self.claims.start_claimed([ClaimedJob.inserted(row) for row in rows[:claimed]], claimed)
        if left:
            self.signal.notify()
        return answers
