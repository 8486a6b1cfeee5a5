"""subscriptions, and the interval jobs they create

A subscription (SPEC §7) is a job request with a schedule. Each interval's job is an
ordinary ``jobs`` row that names its subscription and interval; the unique index on that
pair is what makes an interval run exactly once, whichever node ticks it and however often.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.String(36).with_variant(postgresql.UUID(as_uuid=False), "postgresql")
JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIMESTAMP = sa.DateTime(timezone=True)
ACTIVE = "status = 'active'"


def _partial(where: str) -> dict[str, Any]:  # keyword arguments of op.create_index
    return {"postgresql_where": sa.text(where), "sqlite_where": sa.text(where)}


def upgrade() -> None:
    op.create_table(
        "subscriptions",
        sa.Column("seq", SEQ, primary_key=True, autoincrement=True),
        sa.Column("id", ID, nullable=False),
        sa.Column("client", sa.String(64), nullable=False),
        sa.Column("containers", JSON, nullable=False),
        sa.Column("input", JSON, nullable=False),
        sa.Column("requires_proof", sa.Boolean(), nullable=False),
        sa.Column("period", sa.BigInteger(), nullable=False),
        sa.Column("frequency", sa.BigInteger(), nullable=False),
        sa.Column("active_at", sa.BigInteger(), nullable=False),
        sa.Column("next_interval", sa.BigInteger(), nullable=False),
        sa.Column("next_due_at", TIMESTAMP, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("missed", sa.BigInteger(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("cancelled_at", TIMESTAMP, nullable=True),
        sa.UniqueConstraint("id", name="uq_subscriptions_id"),
    )
    op.create_index("ix_subscriptions_due", "subscriptions", ["next_due_at"], **_partial(ACTIVE))
    op.create_index("ix_subscriptions_client_seq", "subscriptions", ["client", "seq"])
    op.create_index("ix_subscriptions_client_active", "subscriptions", ["client", "seq"], **_partial(ACTIVE))

    op.add_column("jobs", sa.Column("subscription_id", ID, nullable=True))
    op.add_column("jobs", sa.Column("interval", sa.BigInteger(), nullable=True))
    op.create_index("uq_jobs_subscription_interval", "jobs", ["subscription_id", "interval"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_jobs_subscription_interval", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("interval")
        batch.drop_column("subscription_id")
    op.drop_table("subscriptions")
