"""Subscriptions as the API sees them (SPEC §7): the checks of a new one and its row, and
reading and cancelling a client's. Their interval jobs are made by the ticker
(``app.maintenance.ticker``); another client's subscription is never found.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from app.clock import utcnow
from app.db.direct import DirectConnection, wrap
from app.db.engine import Database
from app.db.models import JobStatus, SubscriptionStatus
from app.db.signal import SUBSCRIPTIONS_CHANNEL, JobSignal
from app.db.statements import subscriptions as statements
from app.errors import INVALID_SUBSCRIPTION, SUBSCRIPTION_NOT_FOUND, TOO_MANY_SUBSCRIPTIONS
from app.jobs.requests import JobRejected, JobRequest, SubscriptionRequest
from app.jobs.rows import new_job_id
from app.jobs.schedule import Schedule, out_of_range

#: The newest interval jobs a subscription's document lists.
NEWEST_JOBS = 100


def checked_schedule(request: SubscriptionRequest, now: datetime) -> Schedule:
    """The schedule asked for, or ``Invalid subscription`` naming the field out of range."""
    active_at = int(now.timestamp()) if request.active_at is None else request.active_at
    problem = out_of_range(request.period, request.frequency, active_at)
    if problem is not None:
        field, reason = problem
        raise JobRejected(INVALID_SUBSCRIPTION, {"field": field, "reason": reason})
    return Schedule(request.period, request.frequency, active_at)


def new_subscription_row(request: JobRequest, schedule: Schedule, client: str, now: datetime) -> dict[str, Any]:
    """A new subscription's columns (``INSERT_SUBSCRIPTIONS``'), first interval next."""
    return {
        "id": new_job_id(),
        "client": client,
        "containers": request.containers,
        "input": request.data,
        "requires_proof": request.requires_proof,
        "period": schedule.period,
        "frequency": schedule.frequency,
        "active_at": schedule.active_at,
        "next_interval": 1,
        "next_due_at": schedule.due(1),
        "status": SubscriptionStatus.ACTIVE,
        "missed": 0,
        "created_at": now,
        "cancelled_at": None,
        "webhook": request.webhook,
    }


class Quota:
    """A request's new subscriptions, counted against the client's active ones."""

    def __init__(self, active: int, limit: int) -> None:
        self.active = active
        self.limit = limit

    def take(self) -> None:
        if self.active >= self.limit:
            raise JobRejected(TOO_MANY_SUBSCRIPTIONS, {"limit": self.limit})
        self.active += 1


class UnknownCursor(LookupError):
    """``after`` names no subscription (or job of it) of this client."""


class SubscriptionService:
    def __init__(self, database: Database, signal: JobSignal, max_active: int) -> None:
        self.database = database
        self.signal = signal
        self.max_active = max_active

    async def quota(self, conn: DirectConnection, client: str) -> Quota:
        """The client's quota, in the transaction that will insert its new subscriptions
        (which, on PostgreSQL, then holds the client's quota lock until it ends)."""
        if conn.postgresql:
            await conn.execute(statements.LOCK_CLIENT, {"client": client})
        ((active,),) = await conn.fetch(statements.ACTIVE_COUNT, {"client": client})
        return Quota(active, self.max_active)

    @property
    def notification(self) -> tuple[str, str]:
        """``pg_notify`` arguments for the statement that adds subscriptions."""
        return SUBSCRIPTIONS_CHANNEL, self.signal.sender

    async def ids(self, client: str, active: bool | None, after: str | None, limit: int | None) -> list[str]:
        params: dict[str, Any] = {"client": client, "limit": limit}
        async with self.database.read() as conn:
            if after is not None:
                row = await self._row(conn, after, client)
                if row is None:
                    raise UnknownCursor(after)
                params["after_seq"] = row.seq
            statement = statements.client_subscription_ids(active, after is not None, limit is not None)
            return [str(i) for (i,) in await statement.run(conn, params)]

    async def document(self, client: str, subscription: str) -> dict[str, Any]:
        """``GET /api/subscriptions/{id}``."""
        async with self.database.read() as conn:
            row = await self._row(conn, subscription, client)
            if row is None:
                raise SUBSCRIPTION_NOT_FOUND.error()
            counts: dict[str, int] = {
                row.status: row.jobs for row in await statements.JOB_COUNTS.run(conn, {"subscription": subscription})
            }
            jobs = await statements.subscription_jobs(True).run(
                conn, {"subscription": subscription, "limit": NEWEST_JOBS}
            )
            newest = [_job(job.interval, job.id, job.status) for job in jobs]
        active = row.status == SubscriptionStatus.ACTIVE
        return {
            "id": subscription,
            "containers": row.containers,
            "period": row.period,
            "frequency": row.frequency,
            "active_at": row.active_at,
            "status": row.status,
            "next_interval": row.next_interval if active else None,
            "next_at": int(row.next_due_at.timestamp()) if active and row.next_due_at else None,
            "counts": {
                "started": sum(counts.values()),
                "success": counts.get(JobStatus.SUCCESS, 0),
                "failed": counts.get(JobStatus.FAILED, 0) + counts.get(JobStatus.CANCELLED, 0),
                "missed": row.missed,
            },
            "jobs": list(reversed(newest)),
        }

    async def jobs(self, client: str, subscription: str, after: str | None, limit: int | None) -> list[dict[str, Any]]:
        """``GET /api/subscriptions/{id}/jobs``: its jobs in interval order, paged."""
        async with self.database.read() as conn:
            if await self._row(conn, subscription, client) is None:
                raise SUBSCRIPTION_NOT_FOUND.error()
            after_interval = 0
            if after is not None:
                found = (await statements.JOB_INTERVAL.run(conn, {"subscription": subscription, "job": after})).first()
                if found is None:
                    raise UnknownCursor(after)
                after_interval = found[0]
            params = {"subscription": subscription, "after_interval": after_interval, "limit": limit or 2**31 - 1}
            rows = await statements.subscription_jobs(False).run(conn, params)
            return [_job(job.interval, job.id, job.status) for job in rows]

    async def cancel(self, client: str, subscription: str) -> dict[str, Any]:
        """``DELETE /api/subscriptions/{id}``: no interval starts after it (a running one ends
        as it would); answers the subscription as it is then."""
        async with self.database.write() as conn:
            cancelled = (
                await statements.CANCEL.run(conn, {"subscription": subscription, "owner": client, "now": utcnow()})
            ).first()
            if cancelled is not None:
                await wrap(conn).notify(*self.notification)
        if cancelled is not None:
            self.signal.subscriptions_changed()
        return await self.document(client, subscription)

    async def latest_jobs(self, client: str, ids: list[str]) -> dict[str, tuple[str, list[str], str | None]]:
        """The subscriptions of this client among ``ids``: (status, containers, the job of
        its latest interval or None)."""
        async with self.database.read() as conn:
            rows = await statements.LATEST_JOBS.run(conn, {"ids": ids})
        return {
            str(row.id): (row.status, row.containers, None if row.latest is None else str(row.latest))
            for row in rows
            if row.client == client
        }

    # -- the operator: any client's, acting as its client ------------------------------

    async def owner(self, subscription: str) -> str:
        async with self.database.read() as conn:
            found = (await statements.SUBSCRIPTION_OWNER.run(conn, {"subscription": subscription})).first()
        if found is None:
            raise SUBSCRIPTION_NOT_FOUND.error()
        return str(found.client)

    async def newest(self, active: bool, limit: int) -> list[dict[str, Any]]:
        async with self.database.read() as conn:
            rows = await statements.newest_subscriptions(active).run(conn, {"limit": limit})
            return [
                {
                    "id": str(row.id),
                    "client": row.client,
                    "status": row.status,
                    "period": row.period,
                    "frequency": row.frequency,
                    "next_interval": row.next_interval,
                    "next_at": None if row.next_due_at is None else int(row.next_due_at.timestamp()),
                    "missed": row.missed,
                }
                for row in rows
            ]

    @staticmethod
    async def _row(conn: Any, subscription: str, client: str) -> Any:
        return (await statements.CLIENT_SUBSCRIPTION.run(conn, {"subscription": subscription, "owner": client})).first()


def _job(interval: int, job_id: Any, status: str) -> dict[str, Any]:
    shown = "running" if status in JobStatus.UNFINISHED else "success" if status == JobStatus.SUCCESS else "failed"
    return {"interval": interval, "id": str(job_id), "status": shown}
