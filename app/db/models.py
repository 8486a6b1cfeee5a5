"""The schema operators read: ``jobs``, ``job_steps``, ``step_attempts``, ``subscriptions``,
``idempotency_keys`` and the webhook outbox (``webhook_deliveries``, ``webhook_attempts``).

Every API query is served by an index declared here, and the Alembic history in
``migrations/`` must produce exactly this (a test compares them).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

#: Job ids are canonical UUID strings in Python; PostgreSQL stores them natively.
JobIdType = String(36).with_variant(PG_UUID(as_uuid=False), "postgresql")
#: JSON documents; JSONB on PostgreSQL so operators can query into them.
JsonType = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
#: An autoincrement key: SQLite only autoincrements an INTEGER PRIMARY KEY.
SeqType = BigInteger().with_variant(Integer(), "sqlite")


class UtcDateTime(TypeDecorator[datetime]):
    """Timestamps are UTC everywhere; SQLite drops the zone, so it is put back on read."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime written to a UTC column")
        if value is not None and dialect.name == "sqlite":
            return value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class JobStatus:
    """The states of SPEC §5; the API shows pending and running both as ``running``."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    CANCELLED = "cancelled"

    UNFINISHED = (PENDING, RUNNING)
    FINISHED = (SUCCESS, FAILED, CANCELLED)


_UNFINISHED_SQL = "status IN ('pending', 'running')"
_CLAIM_AGAIN_SQL = "status = 'pending' AND started_at IS NOT NULL"
_FAILED_SQL = "status IN ('failed', 'cancelled')"


class Base(DeclarativeBase):
    pass


class Job(Base):
    __tablename__ = "jobs"

    #: Monotonic insertion order: "oldest first" and keyset pagination use it, since
    #: the jobs of one batch share a timestamp.
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(JobIdType, nullable=False)
    client: Mapped[str] = mapped_column(String(64), nullable=False)
    source: Mapped[str] = mapped_column(String(16), nullable=False, default="offchain")
    containers: Mapped[list[str]] = mapped_column(JsonType, nullable=False)
    input: Mapped[dict[str, Any]] = mapped_column(JsonType, nullable=False)
    requires_proof: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default=JobStatus.PENDING)
    #: Claims so far; a graceful hand-back gives one back.
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    #: Durable step retries so far (a container's ``retry``): only a job with some reads
    #: its ``step_attempts`` when claimed.
    retries: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    #: A job owned by one node outside the scheduler (the streaming endpoint).
    stream: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    run_after: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    #: An interval's job: its subscription and its interval (1-based); NULL otherwise.
    subscription_id: Mapped[str | None] = mapped_column(JobIdType)
    interval: Mapped[int | None] = mapped_column(BigInteger)
    #: Where the job's result is POSTed when it ends (``app.maintenance.webhooks``).
    webhook: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        UniqueConstraint("id", name="uq_jobs_id"),
        # Exactly one job per interval, whichever node ticks it and however often; also a
        # subscription's jobs, newest interval first.
        Index("uq_jobs_subscription_interval", "subscription_id", "interval", unique=True),
        # A client's history, oldest first, and keyset pages of it (index-only on PostgreSQL).
        Index("ix_jobs_client_seq", "client", "seq", postgresql_include=["id"]),
        # A client's unfinished jobs (pending=true) without walking its whole history.
        Index(
            "ix_jobs_client_unfinished",
            "client",
            "seq",
            postgresql_where=text(_UNFINISHED_SQL),
            sqlite_where=text(_UNFINISHED_SQL),
        ),
        # The claim query: oldest runnable pending job first. A claimed job's entry stays
        # until a VACUUM takes it out, and the claim walks past it: on PostgreSQL every
        # VACUUM of jobs cleans the indexes (migration 0009, ``app.db.upkeep``), and a
        # draining node's claims start after the last job taken (``claims.CLAIM_AFTER``).
        Index(
            "ix_jobs_claim",
            "run_after",
            "seq",
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
        # Jobs claimed before and pending again (handed back, rescued, retried, re-queued):
        # the only ones that can lie behind that cursor, read from here (migration 0010).
        Index(
            "ix_jobs_claim_again",
            "run_after",
            "seq",
            postgresql_where=text(_CLAIM_AGAIN_SQL),
            sqlite_where=text(_CLAIM_AGAIN_SQL),
        ),
        # Pending counts by source for /info.
        Index(
            "ix_jobs_unfinished_source",
            "source",
            postgresql_where=text(_UNFINISHED_SQL),
            sqlite_where=text(_UNFINISHED_SQL),
        ),
        # The reaper: running jobs whose lease expired.
        Index(
            "ix_jobs_lease",
            "lease_expires_at",
            postgresql_where=text("status = 'running'"),
            sqlite_where=text("status = 'running'"),
        ),
        # The last failed or cancelled jobs (the dashboard), without walking past the
        # jobs that succeeded since (migration 0011).
        Index(
            "ix_jobs_failed",
            "finished_at",
            postgresql_where=text(_FAILED_SQL),
            sqlite_where=text(_FAILED_SQL),
        ),
        # The pruner: finished jobs by age.
        Index(
            "ix_jobs_finished_at",
            "finished_at",
            postgresql_where=text("finished_at IS NOT NULL"),
            sqlite_where=text("finished_at IS NOT NULL"),
        ),
    )


class JobStep(Base):
    """One container call of a job: its output or its error, committed on its own."""

    __tablename__ = "job_steps"

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(
        JobIdType, ForeignKey("jobs.id", ondelete="CASCADE", name="fk_job_steps_job_id"), nullable=False
    )
    position: Mapped[int] = mapped_column(Integer, nullable=False)
    container: Mapped[str] = mapped_column(String(255), nullable=False)
    output: Mapped[Any | None] = mapped_column(JsonType)
    error: Mapped[str | None] = mapped_column(Text)
    attempt: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    node: Mapped[str | None] = mapped_column(String(255))
    started_at: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)
    finished_at: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)

    __table_args__ = (
        # One committed result per step: a resumed job can never record a step twice.
        UniqueConstraint("job_id", "position", name="uq_job_steps_job_position"),
    )


class StepAttempt(Base):
    """A failed call of a step that was retried later (a container's ``retry``); the
    step's last call is its ``job_steps`` row."""

    __tablename__ = "step_attempts"

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(
        JobIdType, ForeignKey("jobs.id", ondelete="CASCADE", name="fk_step_attempts_job_id"), nullable=False
    )
    position: Mapped[int] = mapped_column(Integer, nullable=False)
    container: Mapped[str] = mapped_column(String(255), nullable=False)
    #: 1-based, per step.
    attempt: Mapped[int] = mapped_column(Integer, nullable=False)
    error: Mapped[str] = mapped_column(Text, nullable=False)
    #: ``timeout``, ``connection``, ``5xx`` or ``429`` (``app.containers.client``).
    reason: Mapped[str] = mapped_column(String(16), nullable=False)
    node: Mapped[str | None] = mapped_column(String(255))
    started_at: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)
    finished_at: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)
    #: When the next attempt was due.
    retry_at: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)

    __table_args__ = (
        # A job's attempts, step by step (the claim's count, the operator's view).
        Index("ix_step_attempts_job", "job_id", "position", "attempt"),
    )


class SubscriptionStatus:
    ACTIVE = "active"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


_ACTIVE_SQL = "status = 'active'"
_ENDED_SQL = "status <> 'active'"


class Subscription(Base):
    """A job request with a schedule (SPEC §7): interval k is due at ``active_at + (k-1) *
    period``. ``next_interval``/``next_due_at`` say what the ticker looks at next (NULL due
    time once it is no longer active)."""

    __tablename__ = "subscriptions"

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(JobIdType, nullable=False)
    client: Mapped[str] = mapped_column(String(64), nullable=False)
    containers: Mapped[list[str]] = mapped_column(JsonType, nullable=False)
    input: Mapped[dict[str, Any]] = mapped_column(JsonType, nullable=False)
    requires_proof: Mapped[bool] = mapped_column(Boolean, nullable=False)
    #: Seconds between intervals; frequency: how many; active_at: unix seconds of the first.
    period: Mapped[int] = mapped_column(BigInteger, nullable=False)
    frequency: Mapped[int] = mapped_column(BigInteger, nullable=False)
    active_at: Mapped[int] = mapped_column(BigInteger, nullable=False)
    next_interval: Mapped[int] = mapped_column(BigInteger, nullable=False)
    next_due_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    #: Intervals whose successor was already due when they were reached: never run.
    missed: Mapped[int] = mapped_column(BigInteger, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)
    cancelled_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    #: Copied into each interval's job.
    webhook: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        UniqueConstraint("id", name="uq_subscriptions_id"),
        # The ticker: the earliest due active subscription, and those due now.
        Index(
            "ix_subscriptions_due",
            "next_due_at",
            postgresql_where=text(_ACTIVE_SQL),
            sqlite_where=text(_ACTIVE_SQL),
        ),
        # Ended ones by state (``/metrics``): counted from this index, not from the table.
        Index(
            "ix_subscriptions_ended",
            "status",
            postgresql_where=text(_ENDED_SQL),
            sqlite_where=text(_ENDED_SQL),
        ),
        # A client's subscriptions, oldest first, and keyset pages of them.
        Index("ix_subscriptions_client_seq", "client", "seq"),
        # A client's active ones: ``?active=true`` and the ``max_subscriptions`` count.
        Index(
            "ix_subscriptions_client_active",
            "client",
            "seq",
            postgresql_where=text(_ACTIVE_SQL),
            sqlite_where=text(_ACTIVE_SQL),
        ),
    )


class IdempotencyKey(Base):
    """A submit's ``Idempotency-Key`` (SPEC §8), kept per client until ``expires_at``: the
    request's fingerprint and the answer it was given, replayed to the same request."""

    __tablename__ = "idempotency_keys"

    client: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    #: sha256 (hex) of the endpoint and the raw body: the same bytes are the same request.
    request_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    #: ``{"id"}`` of ``POST /api/jobs``; a batch's list of item answers.
    answer: Mapped[Any] = mapped_column(JsonType, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)

    __table_args__ = (
        # The pruner: expired keys, oldest first.
        Index("ix_idempotency_keys_expires_at", "expires_at"),
    )


class DeliveryStatus:
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


_PENDING_SQL = "status = 'pending'"


class WebhookDelivery(Base):
    """The outbox: one POST of a job's result to its webhook, written in the transaction
    that ends the job (or by an operator's re-send); its id is ``Jobnode-Delivery``."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(JobIdType, primary_key=True)
    job_id: Mapped[str] = mapped_column(
        JobIdType, ForeignKey("jobs.id", ondelete="CASCADE", name="fk_webhook_deliveries_job_id"), nullable=False
    )
    url: Mapped[str] = mapped_column(Text, nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False)
    #: When the next attempt is due; a claimed delivery's is pushed past its claim lease.
    next_attempt_at: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)
    #: The job's end (or the re-send): where the delivery latency starts.
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)
    delivered_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        # The delivery claim: the earliest due pending delivery.
        Index(
            "ix_webhook_deliveries_due",
            "next_attempt_at",
            postgresql_where=text(_PENDING_SQL),
            sqlite_where=text(_PENDING_SQL),
        ),
        # A job's deliveries (``GET /api/jobs/{id}``) and the cascade of a pruned job.
        Index("ix_webhook_deliveries_job", "job_id"),
        # Failing endpoints (the dashboard, ``jobnode webhooks list --failing``).
        Index(
            "ix_webhook_deliveries_failed",
            "created_at",
            postgresql_where=text("status = 'failed'"),
            sqlite_where=text("status = 'failed'"),
        ),
    )


class WebhookAttempt(Base):
    """One POST of a delivery: when, and what came back (a status code or an error)."""

    __tablename__ = "webhook_attempts"

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(
        JobIdType,
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE", name="fk_webhook_attempts_delivery_id"),
        nullable=False,
    )
    attempt: Mapped[int] = mapped_column(Integer, nullable=False)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)
    finished_at: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (UniqueConstraint("delivery_id", "attempt", name="uq_webhook_attempts_delivery_attempt"),)
