"""A webhook's delivery row, written in the transaction that ends its job (every way a
job ends: its last step's commit, a cancel, the reaper, a restarted node's take-back) or
by an operator's re-send; ``app.maintenance.webhooks`` POSTs it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from app.db.direct import wrap
from app.db.models import DeliveryStatus
from app.db.signal import WEBHOOKS_CHANNEL
from app.db.statements.webhooks import INSERT_DELIVERIES
from app.jobs.rows import new_job_id


def delivery_row(job_id: str, url: str, now: datetime) -> dict[str, Any]:
    """A new delivery, due at once; its id is the ``Jobnode-Delivery`` header."""
    return {
        "id": new_job_id(),
        "job_id": job_id,
        "url": url,
        "status": DeliveryStatus.PENDING,
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
    }


async def insert_deliveries(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    """In the caller's transaction (the one that ends the jobs)."""
    if rows:
        await wrap(conn).insert_many(INSERT_DELIVERIES, rows)


async def notify_webhooks(conn: AsyncConnection) -> None:
    """Every node's delivery service, this one's included (PostgreSQL, at commit: the
    payload names no sender, so no node ignores it); a no-op on SQLite, whose one node
    wakes its service in-process (``JobSignal.webhooks_changed``)."""
    await wrap(conn).notify(WEBHOOKS_CHANNEL, "")
