"""Jobs whose lease expired: the node running them stopped or lost the database. Each
goes back to pending, or fails once it used every attempt (a streamed job fails at once:
its client's connection went with the node)."""

from __future__ import annotations

import logging

from app import metrics
from app.clock import utcnow
from app.db.engine import Database
from app.db.signal import JobSignal
from app.db.statements.maintenance import EXPIRED, FAIL, REQUEUE_EXPIRED
from app.jobs.failure_step import record_failure
from app.jobs.outbox import delivery_row, insert_deliveries, notify_webhooks

log = logging.getLogger("jobnode.scheduler")


async def reap(database: Database, node_id: str, max_attempts: int, batch: int = 100) -> tuple[int, int]:
    """One batch of expired leases, oldest first; (requeued, failed). ``node_id``: the
    reaping node, recorded on the error step of a job it fails."""
    now = utcnow()
    requeued = failed = 0
    deliveries = []
    async with database.write() as conn:
        for row in (await EXPIRED.run(conn, {"now": now, "batch": batch})).all():
            job_id = str(row.id)
            if row.stream or row.attempts >= max_attempts:
                reason = (
                    "the node streaming this job stopped before it finished"
                    if row.stream
                    else f"gave up after {row.attempts} attempts: the lease expired each time "
                    f"(the node running the job stopped or lost the database)"
                )
                await FAIL.run(conn, {"job": job_id, "now": now})
                await record_failure(conn, job_id, row.containers, reason, now, node_id)
                if row.webhook is not None:
                    deliveries.append(delivery_row(job_id, row.webhook, now))
                failed += 1
            else:
                await REQUEUE_EXPIRED.run(conn, {"job": job_id})
                requeued += 1
        await insert_deliveries(conn, deliveries)
        if deliveries:
            await notify_webhooks(conn)
    return requeued, failed


class Reaper:
    name = "reap"

    def __init__(self, database: Database, node_id: str, max_attempts: int, period: float, signal: JobSignal) -> None:
        self.database = database
        self.node_id = node_id
        self.max_attempts = max_attempts
        self.period = period
        #: Wakes this node's claim loop for the jobs put back.
        self.signal = signal

    async def work(self) -> None:
        requeued, failed = await reap(self.database, self.node_id, self.max_attempts)
        metrics.jobs_rescued(requeued=requeued, failed=failed)
        if requeued or failed:
            log.info(
                "expired leases: %d jobs re-queued, %d failed after %d attempts",
                requeued,
                failed,
                self.max_attempts,
            )
            self.signal.notify()
        if failed:
            self.signal.webhooks_changed()  # their deliveries, if they have webhooks
