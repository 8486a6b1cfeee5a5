"""Subscriptions as the API sees them (SPEC §7): storing one, reading and cancelling a
client's. Their interval jobs are made by the ticker (``app.maintenance.ticker``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from app.db.models import SubscriptionStatus
from app.jobs.requests import JobRequest
from app.jobs.rows import new_job_id
from app.jobs.schedule import Schedule


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
    }
