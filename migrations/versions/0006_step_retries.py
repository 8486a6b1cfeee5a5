"""step_attempts and jobs.retries: durable step retries

A container's ``retry`` puts a job whose step failed back to ``pending`` with the time its
next attempt is due (``run_after``, served by ``ix_jobs_claim`` like any delayed job); the
failed attempt is kept in ``step_attempts``, and ``jobs.retries`` counts them so that only
a retried job reads that table when claimed.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.String(36).with_variant(postgresql.UUID(as_uuid=False), "postgresql")
SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("jobs", sa.Column("retries", sa.Integer(), nullable=False, server_default=sa.text("0")))
    op.create_table(
        "step_attempts",
        sa.Column("seq", SEQ, primary_key=True, autoincrement=True),
        sa.Column(
            "job_id",
            ID,
            sa.ForeignKey("jobs.id", ondelete="CASCADE", name="fk_step_attempts_job_id"),
            nullable=False,
        ),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("container", sa.String(255), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("reason", sa.String(16), nullable=False),
        sa.Column("node", sa.String(255), nullable=True),
        sa.Column("started_at", TIMESTAMP, nullable=False),
        sa.Column("finished_at", TIMESTAMP, nullable=False),
        sa.Column("retry_at", TIMESTAMP, nullable=False),
    )
    op.create_index("ix_step_attempts_job", "step_attempts", ["job_id", "position", "attempt"])


def downgrade() -> None:
    op.drop_table("step_attempts")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("retries")
