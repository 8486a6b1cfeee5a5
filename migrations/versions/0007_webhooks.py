"""webhooks: ``jobs.webhook``, ``subscriptions.webhook`` and the delivery outbox

A job's webhook is POSTed its result when it ends. The delivery row is written in the
transaction that ends the job (``webhook_deliveries``), so a crash between the end and
the POST loses nothing; each POST is recorded in ``webhook_attempts``.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.String(36).with_variant(postgresql.UUID(as_uuid=False), "postgresql")
SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIMESTAMP = sa.DateTime(timezone=True)


def _partial(where: str) -> dict[str, Any]:  # keyword arguments of op.create_index
    return {"postgresql_where": sa.text(where), "sqlite_where": sa.text(where)}


def upgrade() -> None:
    op.add_column("jobs", sa.Column("webhook", sa.Text(), nullable=True))
    op.add_column("subscriptions", sa.Column("webhook", sa.Text(), nullable=True))
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", ID, primary_key=True),
        sa.Column(
            "job_id",
            ID,
            sa.ForeignKey("jobs.id", ondelete="CASCADE", name="fk_webhook_deliveries_job_id"),
            nullable=False,
        ),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", TIMESTAMP, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("delivered_at", TIMESTAMP, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
    )
    op.create_index(
        "ix_webhook_deliveries_due", "webhook_deliveries", ["next_attempt_at"], **_partial("status = 'pending'")
    )
    op.create_index("ix_webhook_deliveries_job", "webhook_deliveries", ["job_id"])
    op.create_index(
        "ix_webhook_deliveries_failed", "webhook_deliveries", ["created_at"], **_partial("status = 'failed'")
    )
    op.create_table(
        "webhook_attempts",
        sa.Column("seq", SEQ, primary_key=True, autoincrement=True),
        sa.Column(
            "delivery_id",
            ID,
            sa.ForeignKey("webhook_deliveries.id", ondelete="CASCADE", name="fk_webhook_attempts_delivery_id"),
            nullable=False,
        ),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("started_at", TIMESTAMP, nullable=False),
        sa.Column("finished_at", TIMESTAMP, nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.UniqueConstraint("delivery_id", "attempt", name="uq_webhook_attempts_delivery_attempt"),
    )


def downgrade() -> None:
    op.drop_table("webhook_attempts")
    op.drop_table("webhook_deliveries")
    with op.batch_alter_table("subscriptions") as batch:
        batch.drop_column("webhook")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("webhook")
