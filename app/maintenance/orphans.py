"""At start: what this node identity was running before it restarted. Those leases are
its own, so it takes them back at once instead of waiting for them to expire (every node
does this for itself, leader or not), before its first claim."""

from __future__ import annotations

import logging

from app import metrics
from app.clock import utcnow
from app.db.engine import Database
from app.db.statements.maintenance import EXHAUSTED_ORPHANS, FAIL, REQUEUE_ORPHANS
from app.jobs.failure_step import record_failure
from app.jobs.outbox import delivery_row, insert_deliveries

log = logging.getLogger("jobnode.scheduler")


async def take_back(database: Database, node_id: str, max_attempts: int | None = None) -> int:
    """Re-queue the jobs ``node_id`` holds (streamed ones are the reaper's: their client
    went with the node). The claim it lost still counts: with ``max_attempts``, a job that
    used every attempt fails, as the reaper would fail it. How many were taken back."""
    now = utcnow()
    failed = 0
    deliveries = []
    async with database.write() as conn:
        if max_attempts is not None:
            exhausted = await EXHAUSTED_ORPHANS.run(conn, {"node": node_id, "max_attempts": max_attempts})
            for row in exhausted.all():
                job_id = str(row.id)
                await FAIL.run(conn, {"job": job_id, "now": now})
                reason = f"gave up after {row.attempts} attempts: the node running the job stopped each time"
                await record_failure(conn, job_id, row.containers, reason, now, node_id)
                if row.webhook is not None:
                    deliveries.append(delivery_row(job_id, row.webhook, now))
                failed += 1
        await insert_deliveries(conn, deliveries)
        return failed + (await REQUEUE_ORPHANS.run(conn, {"node": node_id})).rowcount


class OrphanTakeBack:
    def __init__(self, database: Database, node_id: str, max_attempts: int) -> None:
        self.database = database
        self.node_id = node_id
        self.max_attempts = max_attempts

    async def run(self) -> None:
        taken = await take_back(self.database, self.node_id, self.max_attempts)
        if taken:
            log.info("took back %d jobs this node was running before it restarted", taken)
            metrics.jobs_rescued(taken_back=taken)
