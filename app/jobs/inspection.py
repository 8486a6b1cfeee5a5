"""One job in full and lists of jobs, as the operator reads them (the operator endpoints,
the dashboard and the ``jobnode jobs`` CLI)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from app.clock import utcnow
from app.db.engine import Database
from app.db.models import DeliveryStatus, JobStatus
from app.db.statements.inspection import (
    ERRORS,
    JOB,
    JOB_STEPS,
    RECENTLY_FAILED,
    RETRYABLE,
    RETRYABLE_IDS,
    newest_jobs,
)
from app.db.statements.retries import JOB_STEP_ATTEMPTS
from app.db.statements.webhooks import DELIVERY_ATTEMPTS, FAILED_ENDPOINTS, JOB_DELIVERIES, RETRYING_ENDPOINTS
from app.jobs.results import api_status, job_result, step_result


class JobNotFound(LookupError):
    pass


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


def _attempt(row: Any) -> dict[str, Any]:
    """A failed attempt that was retried (``step_attempts``)."""
    return {
        "attempt": row.attempt,
        "error": row.error,
        "reason": row.reason,
        "node": row.node,
        "started_at": _iso(row.started_at),
        "finished_at": _iso(row.finished_at),
        "duration_seconds": _seconds(row.started_at, row.finished_at),
        "retry_at": _iso(row.retry_at),
    }


def _final_attempt(step: Any, number: int) -> dict[str, Any]:
    """A step's committed call, the last of its attempts."""
    return {
        "attempt": number,
        "error": step.error,
        "reason": None,
        "node": step.node,
        "started_at": _iso(step.started_at),
        "finished_at": _iso(step.finished_at),
        "duration_seconds": _seconds(step.started_at, step.finished_at),
        "retry_at": None,
    }


def _with_attempts(step: Any, failed: list[dict[str, Any]]) -> dict[str, Any]:
    return {**_step(step), "attempts": [*failed, _final_attempt(step, len(failed) + 1)]}


def job_detail(job: Any, steps: Sequence[Any], attempts: Sequence[Any] = ()) -> dict[str, Any]:
    """A ``jobs`` row, its ``job_steps`` rows and its failed attempts (``step_attempts``)
    as one JSON object. A job waiting for a step retry shows that step in ``waiting``."""
    failed: dict[int, list[dict[str, Any]]] = {}
    for row in attempts:
        failed.setdefault(row.position, []).append(_attempt(row))
    committed = {s.position for s in steps}
    waiting = next((p for p in sorted(failed) if p not in committed), None)
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
        "steps": [_with_attempts(s, failed.get(s.position, [])) for s in steps],
        "retries": job.retries,
        # A step whose retry is due at ``run_after`` (the job is pending meanwhile).
        "waiting": None
        if waiting is None or job.status in JobStatus.FINISHED
        else {
            "position": waiting,
            "container": job.containers[waiting],
            "next_attempt_at": _iso(job.run_after) if job.status == JobStatus.PENDING else None,
            "attempts": failed[waiting],
        },
        # An interval's job (SPEC §7): its subscription and interval.
        "subscription": None
        if job.subscription_id is None
        else {"id": str(job.subscription_id), "interval": job.interval},
        "webhook": None,
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


class JobInspection:
    def __init__(self, database: Database) -> None:
        self.database = database

    async def job(self, job_id: str) -> dict[str, Any]:
        async with self.database.read() as conn:
            job = (await JOB.run(conn, {"job": job_id})).first()
            if job is None:
                raise JobNotFound(job_id)
            steps = (await JOB_STEPS.run(conn, {"job": job_id})).all()
            attempts = (await JOB_STEP_ATTEMPTS.run(conn, {"job": job_id})).all() if job.retries else []
            detail = job_detail(job, steps, attempts)
            if job.webhook is not None:
                detail["webhook"] = {"url": job.webhook, "deliveries": await _deliveries(conn, job_id)}
        return detail

    async def list_jobs(
        self, status: str | None = None, client: str | None = None, limit: int = 50
    ) -> list[dict[str, Any]]:
        """Newest first."""
        params: dict[str, Any] = {"limit": limit} if client is None else {"limit": limit, "client": client}
        async with self.database.read() as conn:
            rows = (await newest_jobs(status, client is not None).run(conn, params)).all()
            errors = await _errors(conn, [str(r.id) for r in rows if r.status in RETRYABLE])
        return [_summary(r, errors.get(str(r.id))) for r in rows]

    async def failed_jobs(self, limit: int = 20) -> list[dict[str, Any]]:
        """The most recently finished failed or cancelled jobs, with their error."""
        async with self.database.read() as conn:
            rows = (await RECENTLY_FAILED.run(conn, {"limit": limit})).all()
            errors = await _errors(conn, [str(r.id) for r in rows])
        return [_summary(r, errors.get(str(r.id))) for r in rows]

    async def failing_webhooks(self, hours: float = 24, limit: int = 20) -> list[dict[str, Any]]:
        """Endpoints whose deliveries are being retried now, then those whose deliveries
        failed in the last ``hours``: ``{"url", "state", "deliveries", "since", "error"}``
        (``since``: the oldest retried or the newest failed; ``error``: one of theirs)."""
        since = utcnow() - timedelta(hours=hours)
        async with self.database.read() as conn:
            retrying = (await RETRYING_ENDPOINTS.run(conn, {"limit": limit})).all()
            failed = (await FAILED_ENDPOINTS.run(conn, {"since": since, "limit": limit})).all()
        return [
            {"url": url, "state": state, "deliveries": count, "since": _iso(at), "error": error}
            for state, rows in (("retrying", retrying), ("failed", failed))
            for url, count, at, error in (tuple(row) for row in rows)
        ]

    async def retryable_ids(self) -> list[str]:
        async with self.database.read() as conn:
            return [str(job_id) for (job_id,) in await RETRYABLE_IDS.run(conn)]


async def _errors(conn: AsyncConnection, job_ids: list[str]) -> dict[str, str]:
    if not job_ids:
        return {}
    return {str(r.job_id): f"{r.container}: {r.error}" for r in await ERRORS.run(conn, {"ids": job_ids})}


async def _deliveries(conn: AsyncConnection, job_id: str) -> list[dict[str, Any]]:
    """The job's webhook deliveries, each with its attempts."""
    deliveries = (await JOB_DELIVERIES.run(conn, {"job": job_id})).all()
    attempts: dict[str, list[dict[str, Any]]] = {str(d.id): [] for d in deliveries}
    if deliveries:
        for a in await DELIVERY_ATTEMPTS.run(conn, {"ids": list(attempts)}):
            attempts[str(a.delivery_id)].append(
                {
                    "attempt": a.attempt,
                    "started_at": _iso(a.started_at),
                    "finished_at": _iso(a.finished_at),
                    "status_code": a.status_code,
                    "error": a.error,
                }
            )
    return [
        {
            "id": str(d.id),
            "url": d.url,
            "status": d.status,
            "created_at": _iso(d.created_at),
            "delivered_at": _iso(d.delivered_at),
            "next_attempt_at": _iso(d.next_attempt_at) if d.status == DeliveryStatus.PENDING else None,
            "last_error": d.last_error,
            "attempts": attempts[str(d.id)],
        }
        for d in deliveries
    ]
