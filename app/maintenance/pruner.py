"""The retention: finished jobs older than ``retention.finished_jobs_days`` are deleted in
small batches (their steps go by cascade), each batch a short transaction, so pruning a
large backlog never holds the writer long. The CLI's ``jobnode db prune`` runs the same.
Expired idempotency keys (``retention.idempotency_hours``, SPEC §8) go the same way, by
``KeyPruner``: they are kept whatever the jobs' retention (a submit also takes an expired
key over, pruned or not)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from app.clock import utcnow
from app.db.engine import Database
from app.db.statements.idempotency import PRUNE_KEYS
from app.db.statements.maintenance import PRUNABLE_COUNT, PRUNE

log = logging.getLogger("jobnode.scheduler")


async def prune_batch(database: Database, older_than: datetime, batch: int = 500) -> int:
    """Delete one batch of the oldest finished jobs; how many went."""
    async with database.write() as conn:
        return (await PRUNE.pick(database).run(conn, {"older_than": older_than, "batch": batch})).rowcount


async def prunable(database: Database, older_than: datetime) -> int:
    async with database.read() as conn:
        count: int = (await PRUNABLE_COUNT.run(conn, {"older_than": older_than})).scalar_one()
    return count


async def prune(database: Database, older_than: datetime, progress: Callable[[int], None] | None = None) -> int:
    """Every finished job older than ``older_than``, batch after batch; the total."""
    total = 0
    while (deleted := await prune_batch(database, older_than)) > 0:
        total += deleted
        if progress is not None:
            progress(deleted)
    return total


class Pruner:
    name = "prune"

    def __init__(self, database: Database, retention_days: float, period: float) -> None:
        self.database = database
        self.retention_days = retention_days
        self.period = period

    async def work(self) -> None:
        cutoff = utcnow() - timedelta(days=self.retention_days)
        while (deleted := await prune_batch(self.database, cutoff)) > 0:
            log.info("pruned %d finished jobs older than %g days", deleted, self.retention_days)
            await asyncio.sleep(0)


async def prune_keys_batch(database: Database, now: datetime, batch: int = 500) -> int:
    """Delete one batch of idempotency keys expired at ``now``; how many went."""
    async with database.write() as conn:
        return (await PRUNE_KEYS.pick(database).run(conn, {"now": now, "batch": batch})).rowcount


class KeyPruner:
    """Expired idempotency keys, batch after batch, on the leader."""

    name = "prune-keys"

    def __init__(self, database: Database, period: float) -> None:
        self.database = database
        self.period = period

    async def work(self) -> None:
        while (deleted := await prune_keys_batch(self.database, utcnow())) > 0:
            log.info("pruned %d expired idempotency keys", deleted)
            await asyncio.sleep(0)
