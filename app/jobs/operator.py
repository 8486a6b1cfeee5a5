"""What operators see and steer: one job in full, cancel, re-queue, the queue's numbers.

Used by the operator endpoints, the dashboard, ``/metrics`` and the ``jobnode jobs``
CLI (which runs it against the database straight, without a node). State changes go
through ``JobStore`` (``app.jobs.transitions``), like the scheduler's.

Query cost: one job and its steps use the ``id`` and ``(job_id, position)`` unique
indexes; the queue gauges read only unfinished jobs (partial indexes); throughput reads
the last minutes of ``ix_jobs_finished_at``. Counting finished jobs by state walks the
whole table, so only the CLI's ``stats`` does it, never a scrape.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Integer, cast, desc, func, literal_column, select
from sqlalchemy.ext.asyncio import AsyncConnection

from app import __version__, metrics
from app.clock import utcnow
from app.db.engine import Database
from app.db.models import Job, JobStatus, JobStep
from app.db.signal import CHANNEL, LEASE_CHANNEL, JobSignal
from app.db.statements.status import status_in, status_is
from app.jobs.live import LiveJobs
from app.jobs.results import api_status, job_result, step_result
from app.jobs.transitions import JobStore

if TYPE_CHECKING:
    from app.containers.state import ContainerStates

RETRYABLE = (JobStatus.FAILED, JobStatus.CANCELLED)


class JobNotFound(LookupError):
    pass


class JobConflict(Exception):
    """The job is not in a state that allows the action; the message says why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


JOB_ALREADY_FINISHED = "Job already finished"
JOB_NOT_FAILED = "Job is not failed"


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds(), 6)


def _step(row: Any) -> dict[str, Any]:
    return {
        "position": row.position,
        "container": row.container,
        "output": row.output,
        "error": row.error,
        "attempt": row.attempt,
        "node": row.node,
        "started_at": _iso(row.started_at),
        "finished_at": _iso(row.finished_at),
        "duration_seconds": _seconds(row.started_at, row.finished_at),
    }


def job_detail(job: Any, steps: Sequence[Any]) -> dict[str, Any]:
    """A ``jobs`` row and its ``job_steps`` rows as one JSON object."""
    results = [step_result(s.container, s.output, s.error) for s in steps]
    finished = job.status in JobStatus.FINISHED
    node = job.lease_owner if job.lease_owner else (steps[-1].node if steps else None)
    reached = steps[-1].container if steps else (job.containers[0] if job.containers else None)
    return {
        "id": str(job.id),
        "status": job.status,
        "api_status": api_status(job.status),
        "client": job.client,
        "source": job.source,
        "containers": job.containers,
        "input": job.input,
        "requires_proof": job.requires_proof,
        "stream": job.stream,
        "attempts": job.attempts,
        "node": node,
        "container": reached,
        "lease_expires_at": _iso(job.lease_expires_at),
        "created_at": _iso(job.created_at),
        "run_after": _iso(job.run_after),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "queued_seconds": _seconds(job.created_at, job.started_at),
        "duration_seconds": _seconds(job.started_at, job.finished_at) if finished else None,
        "result": job_result(str(job.id), job.status, results, False)["result"],
        "steps": [_step(s) for s in steps],
    }


def _summary(row: Any, error: str | None = None) -> dict[str, Any]:
    return {
        "id": str(row.id),
        "status": row.status,
        "client": row.client,
        "containers": row.containers,
        "attempts": row.attempts,
        "created_at": _iso(row.created_at),
        "finished_at": _iso(row.finished_at),
        "error": error,
    }


_SUMMARY_COLUMNS = (Job.id, Job.status, Job.client, Job.containers, Job.attempts, Job.created_at, Job.finished_at)


@dataclass
class QueueSnapshot:
    """Unfinished jobs by (state, source), runnable pending jobs, the oldest one's age."""

    jobs: dict[tuple[str, str], int]
    queue_depth: int
    oldest_pending_seconds: float


class OperatorService:
    #: Queue depth samples for the dashboard: one every ``SAMPLE_SECONDS``, ``SAMPLES`` kept.
    SAMPLE_SECONDS = 5.0
    SAMPLES = 180

    def __init__(
        self,
        database: Database,
        store: JobStore,
        signal: JobSignal | None = None,
        containers: ContainerStates | None = None,
        live: LiveJobs | None = None,
    ) -> None:
        self.database = database
        self.store = store
        self.signal = signal
        self.containers = containers
        self.live = live
        self.depth_samples: deque[tuple[str, int, int]] = deque(maxlen=self.SAMPLES)
        self._sampler: asyncio.Task[None] | None = None

    # -- one job ------------------------------------------------------------------------

    async def _load(self, conn: AsyncConnection, job_id: str) -> dict[str, Any] | None:
        jobs, steps = Job.__table__, JobStep.__table__
        job = (await conn.execute(select(jobs).where(jobs.c.id == job_id))).first()
        if job is None:
            return None
        rows = (await conn.execute(select(steps).where(steps.c.job_id == job_id).order_by(steps.c.position))).all()
        return job_detail(job, rows)

    async def job(self, job_id: str) -> dict[str, Any]:
        async with self.database.read() as conn:
            detail = await self._load(conn, job_id)
        if detail is None:
            raise JobNotFound(job_id)
        return detail

    async def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel an unfinished job; the node running it checks its leases at once (woken
        here or by NOTIFY) and abandons the step."""
        if not await self.store.cancel(job_id):
            await self.job(job_id)  # JobNotFound; else it had finished
            raise JobConflict(JOB_ALREADY_FINISHED)
        if self.live is not None:
            self.live.ended(job_id)  # reads of it go to the database from now on
        await self._wake(LEASE_CHANNEL)
        detail = await self.job(job_id)
        metrics.job_cancelled(job_id, detail["container"])
        return detail

    async def retry(self, job_id: str) -> dict[str, Any]:
        """Re-queue a failed or cancelled job; it resumes at the step that failed."""
        if not await self.store.requeue(job_id):
            await self.job(job_id)  # JobNotFound
            raise JobConflict(JOB_NOT_FAILED)
        await self.wake_schedulers()
        detail = await self.job(job_id)
        metrics.job_retried(job_id, detail["container"])
        return detail

    async def wake_schedulers(self) -> None:
        await self._wake(CHANNEL)

    async def _wake(self, channel: str) -> None:
        """This node's scheduler (when it runs one) and, on PostgreSQL, every other node's."""
        if self.signal is not None:
            self.signal.wake(channel)
        if self.database.is_postgresql:
            async with self.database.direct_write() as conn:
                await (self.signal or JobSignal()).notify_other_nodes(conn, channel)

    # -- lists --------------------------------------------------------------------------

    async def list_jobs(
        self, status: str | None = None, client: str | None = None, limit: int = 50
    ) -> list[dict[str, Any]]:
        """Newest first."""
        stmt = select(*_SUMMARY_COLUMNS).order_by(desc(Job.seq)).limit(limit)
        if status is not None:
            stmt = stmt.where(status_is(status))
        if client is not None:
            stmt = stmt.where(Job.client == client)
        async with self.database.read() as conn:
            rows = (await conn.execute(stmt)).all()
            errors = await self._errors(conn, [str(r.id) for r in rows if r.status in RETRYABLE])
        return [_summary(r, errors.get(str(r.id))) for r in rows]

    async def failed_jobs(self, limit: int = 20) -> list[dict[str, Any]]:
        """The most recently finished failed or cancelled jobs, with their error."""
        stmt = (
            select(*_SUMMARY_COLUMNS)
            .where(Job.finished_at.is_not(None), status_in(RETRYABLE))
            .order_by(desc(Job.finished_at))
            .limit(limit)
        )
        async with self.database.read() as conn:
            rows = (await conn.execute(stmt)).all()
            errors = await self._errors(conn, [str(r.id) for r in rows])
        return [_summary(r, errors.get(str(r.id))) for r in rows]

    @staticmethod
    async def _errors(conn: AsyncConnection, job_ids: list[str]) -> dict[str, str]:
        if not job_ids:
            return {}
        stmt = select(JobStep.job_id, JobStep.container, JobStep.error).where(
            JobStep.job_id.in_(job_ids), JobStep.error.is_not(None)
        )
        return {str(r.job_id): f"{r.container}: {r.error}" for r in await conn.execute(stmt)}

    async def retryable_ids(self) -> list[str]:
        stmt = select(Job.id).where(status_in(RETRYABLE)).order_by(Job.seq)
        async with self.database.read() as conn:
            return [str(job_id) for (job_id,) in await conn.execute(stmt)]

    # -- numbers ------------------------------------------------------------------------

    async def queue(self) -> QueueSnapshot:
        """Cheap enough for every scrape: reads unfinished jobs only (partial indexes)."""
        now = utcnow()
        by_state = (
            select(Job.status, Job.source, func.count())
            .where(status_in(JobStatus.UNFINISHED))
            .group_by(Job.status, Job.source)
        )
        oldest = select(func.count(), func.min(Job.run_after)).where(status_is(JobStatus.PENDING), Job.run_after <= now)
        async with self.database.read() as conn:
            jobs = {(status, source): count for status, source, count in await conn.execute(by_state)}
            depth, oldest_at = (await conn.execute(oldest)).one()
        age = max(0.0, (now - oldest_at).total_seconds()) if oldest_at is not None else 0.0
        return QueueSnapshot(jobs, depth, age)

    def _minute_bucket(self) -> Any:
        if self.database.is_postgresql:
            return cast(func.floor(func.extract("epoch", Job.finished_at) / 60), Integer)
        return cast(func.strftime("%s", Job.finished_at), Integer) / 60

    async def throughput(self, minutes: int = 10) -> list[dict[str, Any]]:
        """Jobs finished per minute over the last ``minutes`` (the current minute last),
        ``[{"minute": iso, "success": n, "failed": n}]``; cancelled counts as failed."""
        now = utcnow()
        current = int(now.timestamp() // 60)
        since = datetime.fromtimestamp((current - minutes + 1) * 60, now.tzinfo)
        bucket = self._minute_bucket().label("minute")
        stmt = (
            select(bucket, Job.status, func.count())
            .where(Job.finished_at.is_not(None), Job.finished_at >= since)
            .group_by(literal_column("minute"), Job.status)
        )
        counts: dict[int, dict[str, int]] = {
            m: {"success": 0, "failed": 0} for m in range(current - minutes + 1, current + 1)
        }
        async with self.database.read() as conn:
            for minute, status, count in await conn.execute(stmt):
                slot = counts.get(int(minute))
                if slot is not None:
                    slot["success" if status == JobStatus.SUCCESS else "failed"] += count
        return [
            {"minute": datetime.fromtimestamp(m * 60, now.tzinfo).isoformat(), **slot} for m, slot in counts.items()
        ]

    async def finished_since(self, seconds: float) -> int:
        since = utcnow() - timedelta(seconds=seconds)
        stmt = select(func.count()).where(Job.finished_at.is_not(None), Job.finished_at >= since)
        async with self.database.read() as conn:
            return (await conn.execute(stmt)).scalar_one()

    async def stats(self) -> dict[str, Any]:
        """For the CLI: every state (a full count), the oldest pending job, last minute's throughput."""
        async with self.database.read() as conn:
            counts = dict((await conn.execute(select(Job.status, func.count()).group_by(Job.status))).all())
        queue = await self.queue()
        return {
            "jobs": {status: counts.get(status, 0) for status in (*JobStatus.UNFINISHED, *JobStatus.FINISHED)},
            "queue_depth": queue.queue_depth,
            "oldest_pending_seconds": queue.oldest_pending_seconds,
            "finished_last_minute": await self.finished_since(60),
        }

    # -- containers ---------------------------------------------------------------------

    def container_states(self) -> list[dict[str, Any]]:
        """Each configured container's live state on this node.

        ``mean_seconds`` and ``p95_seconds`` are over the last ``app.metrics.RECENT_SAMPLES``
        container calls this node made (in-memory samples, reset on restart), not SQL.
        """
        if self.containers is None:
            return []
        return [
            {
                "id": s.settings.id,
                "image": s.settings.image,
                "url": s.base_url,
                "managed": s.managed,
                "external": s.settings.external,
                "state": s.readiness.value,
                "ready": s.ready,
                "restarts": s.restarts,
                "last_error": s.last_error,
                "in_flight": s.in_flight,
                "concurrency": s.settings.concurrency,
                "done": s.done,
                "failed": s.failed,
                **metrics.RECENT.summary(s),
            }
            for s in self.containers
        ]

    # -- dashboard --------------------------------------------------------------------

    async def sample_depth(self) -> None:
        queue = await self.queue()
        running = sum(n for (status, _), n in queue.jobs.items() if status == JobStatus.RUNNING)
        self.depth_samples.append((utcnow().isoformat(), queue.queue_depth, running))

    async def _sample_forever(self) -> None:
        while True:
            try:
                await self.sample_depth()
            except asyncio.CancelledError:
                raise
            except Exception:
                pass
            await asyncio.sleep(self.SAMPLE_SECONDS)

    async def start(self) -> None:
        """Sample the queue depth in the background for the dashboard's chart."""
        self._sampler = asyncio.create_task(self._sample_forever(), name="jobnode-depth-sampler")

    async def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            await asyncio.gather(self._sampler, return_exceptions=True)
            self._sampler = None

    async def dashboard(self) -> dict[str, Any]:
        queue = await self.queue()
        running = sum(n for (status, _), n in queue.jobs.items() if status == JobStatus.RUNNING)
        recent = await self.list_jobs(limit=15)
        return {
            "now": utcnow().isoformat(),
            "node": self.store.node_id,
            "version": __version__,
            "queue": {
                "pending": queue.queue_depth,
                "running": running,
                "oldest_pending_seconds": queue.oldest_pending_seconds,
            },
            "depth": [{"at": at, "pending": p, "running": r} for at, p, r in self.depth_samples],
            "throughput": await self.throughput(10),
            "containers": self.container_states(),
            "recent": recent,
            "failed": await self.failed_jobs(10),
        }

    # -- retention ----------------------------------------------------------------------

    async def prunable(self, older_than: datetime) -> int:
        stmt = select(func.count()).where(Job.finished_at.is_not(None), Job.finished_at < older_than)
        async with self.database.read() as conn:
            return (await conn.execute(stmt)).scalar_one()

    async def prune(self, older_than: datetime, progress: Callable[[int], None] | None = None) -> int:
        """Delete finished jobs older than ``older_than`` in the pruner's small batches."""
        total = 0
        while (deleted := await self.store.prune(older_than)) > 0:
            total += deleted
            if progress is not None:
                progress(deleted)
        return total
