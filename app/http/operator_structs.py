"""Response shapes of the operator endpoints, for the OpenAPI document."""

from __future__ import annotations

import uuid
from typing import Any, Literal

import msgspec

from app.http.structs import ApiStatus

#: A job's stored state (SPEC §5).
StoredStatus = Literal["pending", "running", "success", "failed", "cancelled"]


class AttemptDetail(msgspec.Struct):
    """One call of a step: ``attempt`` counts this step's calls from 1; a failed one that
    was retried has its ``reason`` (timeout, connection, 5xx, 429) and ``retry_at``."""

    attempt: int
    error: str | None
    reason: str | None
    node: str | None
    started_at: str
    finished_at: str
    duration_seconds: float
    retry_at: str | None


class StepDetail(msgspec.Struct):
    """``attempt`` is the job's claim that committed it; ``attempts`` every call of it."""

    position: int
    container: str
    output: Any
    error: str | None
    attempt: int
    node: str | None
    started_at: str
    finished_at: str
    duration_seconds: float
    attempts: list[AttemptDetail]


class WaitingStep(msgspec.Struct):
    """A step whose next attempt is due at ``next_attempt_at`` (a container's ``retry``)."""

    position: int
    container: str
    next_attempt_at: str | None
    attempts: list[AttemptDetail]


class IntervalOf(msgspec.Struct):
    id: uuid.UUID
    interval: int


class WebhookAttemptDetail(msgspec.Struct):
    """One POST: its status code, or its error (no answer: refused, timed out, no connection)."""

    attempt: int
    started_at: str
    finished_at: str
    status_code: int | None
    error: str | None


class WebhookDeliveryDetail(msgspec.Struct):
    """One delivery of the job's result (``Jobnode-Delivery``): at the job's end, or an
    operator's re-send. ``next_attempt_at`` is null once delivered or failed."""

    id: uuid.UUID
    url: str
    status: Literal["pending", "delivered", "failed"]
    created_at: str
    delivered_at: str | None
    next_attempt_at: str | None
    last_error: str | None
    attempts: list[WebhookAttemptDetail]


class WebhookDetail(msgspec.Struct):
    url: str
    deliveries: list[WebhookDeliveryDetail]


class JobDetail(msgspec.Struct):
    """One job in full. ``status`` is the stored state (pending, running, success, failed,
    cancelled); ``api_status`` is how the compatible surface shows it."""

    id: uuid.UUID
    status: StoredStatus
    api_status: ApiStatus
    client: str
    source: str
    containers: list[str]
    input: dict[str, Any]
    requires_proof: bool
    stream: bool
    attempts: int
    node: str | None
    container: str | None
    lease_expires_at: str | None
    created_at: str
    run_after: str
    started_at: str | None
    finished_at: str | None
    queued_seconds: float | None
    duration_seconds: float | None
    result: dict[str, Any] | None
    steps: list[StepDetail]
    #: Durable step retries so far.
    retries: int
    #: The step waiting for its retry; null otherwise.
    waiting: WaitingStep | None
    #: An interval's job: ``{"id": <subscription>, "interval": k}``; null otherwise.
    subscription: IntervalOf | None = None
    #: The job's webhook and its deliveries; null without a webhook.
    webhook: WebhookDetail | None = None


class ContainerLiveState(msgspec.Struct):
    """``mean_seconds``/``p95_seconds``: over this node's last calls (in memory)."""

    id: str
    image: str
    url: str
    managed: bool
    external: bool
    state: str
    ready: bool
    restarts: int
    last_error: str | None
    in_flight: int
    concurrency: int
    done: int
    failed: int
    samples: int
    mean_seconds: float | None
    p95_seconds: float | None
