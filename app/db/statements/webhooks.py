"""The webhook outbox (``app.maintenance.webhooks``): deliveries written with the end of
their job, claimed by the delivery service of any node, their attempts recorded; and what
the operator reads of them (``app.jobs.inspection``, the dashboard, the CLI).

A delivery is claimed like a job: ``FOR UPDATE SKIP LOCKED`` on PostgreSQL (SQLite's one
writer serialises the claims), its attempt counted and ``next_attempt_at`` pushed past the
claim's lease in the claim itself, so a node that dies mid-POST leaves the delivery to be
claimed again once the lease has passed, and no two nodes make the same attempt.
"""

from __future__ import annotations

from sqlalchemy import Integer, bindparam, func, select, update
from sqlalchemy.sql.elements import ColumnElement

from app.db.direct import RowsInsert, Statement
from app.db.models import DeliveryStatus, Job, UtcDateTime, WebhookAttempt, WebhookDelivery

_NOW = bindparam("now", type_=UtcDateTime())


def _status_is(status: str) -> ColumnElement[bool]:
    """A literal, so that PostgreSQL matches the partial indexes in generic plans."""
    return WebhookDelivery.status == bindparam(None, status, literal_execute=True)


def _still_pending() -> ColumnElement[bool]:
    """A parameter, not a literal: a write to one delivery by its key never reads the partial
    index of the pending ones instead (the planner's generic plan may prefer the small one)."""
    return WebhookDelivery.status == bindparam(None, DeliveryStatus.PENDING)


#: New deliveries, pending and due at once (``app.jobs.outbox.delivery_row``).
INSERT_DELIVERIES = RowsInsert(
    WebhookDelivery.__table__,  # type: ignore[arg-type]
    ("id", "job_id", "url", "status", "attempts", "next_attempt_at", "created_at"),
)

_DUE = (
    select(WebhookDelivery.id)
    .where(_status_is(DeliveryStatus.PENDING), WebhookDelivery.next_attempt_at <= _NOW)
    .order_by(WebhookDelivery.next_attempt_at)
    .limit(bindparam("limit", type_=Integer))
    .with_for_update(skip_locked=True)
    .cte("due")
)
#: Up to ``limit`` due deliveries, their next attempt counted and leased until
#: ``lease_until``. Parameters: ``now``, ``limit``, ``lease_until``.
CLAIM_DUE = Statement(
    update(WebhookDelivery)
    .where(WebhookDelivery.id == _DUE.c.id)
    .values(attempts=WebhookDelivery.attempts + 1, next_attempt_at=bindparam("lease_until", type_=UtcDateTime()))
    .returning(WebhookDelivery.id, WebhookDelivery.job_id, WebhookDelivery.url, WebhookDelivery.attempts)
)
#: When the earliest pending delivery is due (NULL: none pending).
NEXT_DUE = Statement(select(func.min(WebhookDelivery.next_attempt_at)).where(_status_is(DeliveryStatus.PENDING)))
#: Deliveries a 2xx answered. Parameters: ``ids``, ``now``; returns their id and the job's
#: end (``created_at``), for the latency histogram.
DELIVERED = Statement(
    update(WebhookDelivery)
    .where(WebhookDelivery.id.in_(bindparam("ids", expanding=True)), _still_pending())
    .values(status=DeliveryStatus.DELIVERED, delivered_at=_NOW, last_error=None)
    .returning(WebhookDelivery.id, WebhookDelivery.created_at)
)
#: An attempt that did not deliver: retried at ``retry_at`` (``state`` pending) or given
#: up (``state`` failed). Only the node holding that very attempt writes. Parameters:
#: ``delivery``, ``attempt``, ``state``, ``retry_at``, ``reason``.
NOT_DELIVERED = Statement(
    update(WebhookDelivery)
    .where(
        WebhookDelivery.id == bindparam("delivery"),
        WebhookDelivery.attempts == bindparam("attempt"),
        _still_pending(),
    )
    .values(
        status=bindparam("state"),
        next_attempt_at=bindparam("retry_at", type_=UtcDateTime()),
        last_error=bindparam("reason"),
    )
)
#: Each POST: when, and its status code or its error.
INSERT_ATTEMPTS = RowsInsert(
    WebhookAttempt.__table__,  # type: ignore[arg-type]
    ("delivery_id", "attempt", "started_at", "finished_at", "status_code", "error"),
)

# -- the operator -----------------------------------------------------------------------

#: A job's webhook and status (a re-send). Parameter: ``job``.
JOB_WEBHOOK = Statement(select(Job.webhook, Job.status).where(Job.id == bindparam("job")))
#: A job's deliveries, oldest first. Parameter: ``job``.
JOB_DELIVERIES = Statement(
    select(
        WebhookDelivery.id,
        WebhookDelivery.url,
        WebhookDelivery.status,
        WebhookDelivery.attempts,
        WebhookDelivery.next_attempt_at,
        WebhookDelivery.created_at,
        WebhookDelivery.delivered_at,
        WebhookDelivery.last_error,
    )
    .where(WebhookDelivery.job_id == bindparam("job"))
    .order_by(WebhookDelivery.created_at, WebhookDelivery.id)
)
#: The attempts of deliveries, in order. Parameter: ``ids``.
DELIVERY_ATTEMPTS = Statement(
    select(
        WebhookAttempt.delivery_id,
        WebhookAttempt.attempt,
        WebhookAttempt.started_at,
        WebhookAttempt.finished_at,
        WebhookAttempt.status_code,
        WebhookAttempt.error,
    )
    .where(WebhookAttempt.delivery_id.in_(bindparam("ids", expanding=True)))
    .order_by(WebhookAttempt.delivery_id, WebhookAttempt.attempt)
)
#: Endpoints whose deliveries failed since ``since``: (url, failed, newest, an error of
#: them), most failures first. Parameter: ``since``, ``limit``.
FAILED_ENDPOINTS = Statement(
    select(
        WebhookDelivery.url,
        func.count(),
        func.max(WebhookDelivery.created_at),
        func.max(WebhookDelivery.last_error),
    )
    .where(_status_is(DeliveryStatus.FAILED), WebhookDelivery.created_at >= bindparam("since", type_=UtcDateTime()))
    .group_by(WebhookDelivery.url)
    .order_by(func.count().desc(), WebhookDelivery.url)
    .limit(bindparam("limit", type_=Integer))
)
#: Endpoints with deliveries being retried (pending after a failed attempt): (url,
#: deliveries, oldest, an error of them). Parameter: ``limit``.
RETRYING_ENDPOINTS = Statement(
    select(
        WebhookDelivery.url,
        func.count(),
        func.min(WebhookDelivery.created_at),
        func.max(WebhookDelivery.last_error),
    )
    .where(_status_is(DeliveryStatus.PENDING), WebhookDelivery.last_error.is_not(None))
    .group_by(WebhookDelivery.url)
    .order_by(func.count().desc(), WebhookDelivery.url)
    .limit(bindparam("limit", type_=Integer))
)
