"""What an operator changes: cancel a job, re-queue a failed one, wake the schedulers.

A cancel ends the job in one transaction with its error step; the node running it loses
the right to write (every write of a running job is guarded by its lease) and abandons
the step once it checks its leases, which the cancel makes it do at once.
"""

from __future__ import annotations

from typing import Any

from app import metrics
from app.clock import utcnow
from app.db.engine import Database
from app.db.models import JobStatus
from app.db.signal import CHANNEL, LEASE_CHANNEL, JobSignal
from app.db.statements.maintenance import CANCEL, DROP_ERROR_STEPS, REQUEUE
from app.db.statements.retries import DROP_STEP_ATTEMPTS
from app.db.statements.webhooks import JOB_WEBHOOK
from app.errors import JOB_ALREADY_FINISHED, JOB_HAS_NO_WEBHOOK, JOB_NOT_ENDED, JOB_NOT_FAILED, ErrorSpec
from app.jobs.failure_step import record_failure
from app.jobs.inspection import JobInspection, JobNotFound
from app.jobs.live import LiveJobs
from app.jobs.outbox import delivery_row, insert_deliveries, notify_webhooks
from app.jobs.values import CANCELLED_ERROR


class JobConflict(Exception):
    """The job is not in a state that allows the action; ``spec`` (``app.errors``) says why."""

    def __init__(self, spec: ErrorSpec) -> None:
        super().__init__(spec.message)
        self.spec = spec
        self.message = spec.message


async def cancel_job(database: Database, job_id: str, node: str) -> bool:
    """End an unfinished job as ``cancelled``, recording "cancelled" for the container it
    had reached (``node``: the one cancelling). False when there was no such job unfinished."""
    now = utcnow()
    async with database.write() as conn:
        row = (await CANCEL.run(conn, {"job": job_id, "now": now})).first()
        if row is None:
            return False
        await record_failure(conn, job_id, row.containers, CANCELLED_ERROR, now, node)
        if row.webhook is not None:
            await insert_deliveries(conn, [delivery_row(job_id, row.webhook, now)])
            await notify_webhooks(conn)
    return True


async def requeue_job(database: Database, job_id: str) -> bool:
    """Run a failed or cancelled job again from the step that failed (its error row goes)."""
    async with database.write() as conn:
        if (await REQUEUE.run(conn, {"job": job_id, "now": utcnow()})).rowcount != 1:
            return False
        await DROP_ERROR_STEPS.run(conn, {"job": job_id})
        await DROP_STEP_ATTEMPTS.run(conn, {"job": job_id})
    return True


class JobActions:
    def __init__(
        self,
        database: Database,
        inspection: JobInspection,
        node_id: str,
        signal: JobSignal | None = None,
        live: LiveJobs | None = None,
    ) -> None:
        self.database = database
        self.inspection = inspection
        #: The node identity recorded on the error step of a cancel.
        self.node_id = node_id
        self.signal = signal
        self.live = live

    async def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel an unfinished job; the node running it checks its leases at once (woken
        here or by NOTIFY) and abandons the step."""
        if not await cancel_job(self.database, job_id, self.node_id):
            await self.inspection.job(job_id)  # JobNotFound; else it had finished
            raise JobConflict(JOB_ALREADY_FINISHED)
        if self.live is not None:
            self.live.ended(job_id)  # reads of it go to the database from now on
        if self.signal is not None:
            self.signal.webhooks_changed()  # its delivery, if it has a webhook
        await self._wake(LEASE_CHANNEL)
        detail = await self.inspection.job(job_id)
        metrics.job_cancelled(job_id, detail["container"])
        return detail

    async def retry(self, job_id: str) -> dict[str, Any]:
        """Re-queue a failed or cancelled job; it resumes at the step that failed."""
        if not await requeue_job(self.database, job_id):
            await self.inspection.job(job_id)  # JobNotFound
            raise JobConflict(JOB_NOT_FAILED)
        await self.wake_schedulers()
        detail = await self.inspection.job(job_id)
        metrics.job_retried(job_id, detail["container"])
        return detail

    async def requeue(self, job_id: str) -> bool:
        """``retry`` without its answer, its metric or its wake-up (the CLI's ``--all-failed``
        wakes the schedulers once, at the end)."""
        return await requeue_job(self.database, job_id)

    async def resend_webhook(self, job_id: str) -> dict[str, Any]:
        """A new delivery of an ended job's result to its webhook (whatever became of the
        earlier ones); the job in full, the new delivery among its deliveries."""
        async with self.database.write() as conn:
            row = (await JOB_WEBHOOK.run(conn, {"job": job_id})).first()
            if row is None:
                raise JobNotFound(job_id)
            if row.webhook is None:
                raise JobConflict(JOB_HAS_NO_WEBHOOK)
            if row.status not in JobStatus.FINISHED:
                raise JobConflict(JOB_NOT_ENDED)
            await insert_deliveries(conn, [delivery_row(job_id, row.webhook, utcnow())])
            await notify_webhooks(conn)
        if self.signal is not None:
            self.signal.webhooks_changed()
        return await self.inspection.job(job_id)

    async def wake_schedulers(self) -> None:
        await self._wake(CHANNEL)

    async def _wake(self, channel: str) -> None:
        """This node's scheduler (when it runs one) and, on PostgreSQL, every other node's."""
        if self.signal is not None:
            self.signal.wake(channel)
        if self.database.is_postgresql:
            async with self.database.direct_write() as conn:
                await (self.signal or JobSignal()).notify_other_nodes(conn, channel)
