"""jobs and job_steps

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JOB_ID = sa.String(36).with_variant(postgresql.UUID(as_uuid=False), "postgresql")
JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIMESTAMP = sa.DateTime(timezone=True)
UNFINISHED = "status IN ('pending', 'running')"


def _partial(where: str) -> dict[str, Any]:  # keyword arguments of op.create_index
    return {"postgresql_where": sa.text(where), "sqlite_where": sa.text(where)}


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("seq", SEQ, primary_key=True, autoincrement=True),
        sa.Column("id", JOB_ID, nullable=False),
        sa.Column("client", sa.String(64), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("containers", JSON, nullable=False),
        sa.Column("input", JSON, nullable=False),
        sa.Column("requires_proof", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("stream", sa.Boolean(), nullable=False),
        sa.Column("lease_owner", sa.String(255), nullable=True),
        sa.Column("lease_expires_at", TIMESTAMP, nullable=True),
        sa.Column("run_after", TIMESTAMP, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("started_at", TIMESTAMP, nullable=True),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        sa.UniqueConstraint("id", name="uq_jobs_id"),
    )
    op.create_index("ix_jobs_client_seq", "jobs", ["client", "seq"])
    op.create_index("ix_jobs_client_unfinished", "jobs", ["client", "seq"], **_partial(UNFINISHED))
    op.create_index("ix_jobs_claim", "jobs", ["run_after", "seq"], **_partial("status = 'pending'"))
    op.create_index("ix_jobs_unfinished_source", "jobs", ["source"], **_partial(UNFINISHED))
    op.create_index("ix_jobs_lease", "jobs", ["lease_expires_at"], **_partial("status = 'running'"))
    op.create_index("ix_jobs_finished_at", "jobs", ["finished_at"], **_partial("finished_at IS NOT NULL"))

    op.create_table(
        "job_steps",
        sa.Column("seq", SEQ, primary_key=True, autoincrement=True),
        sa.Column(
            "job_id", JOB_ID, sa.ForeignKey("jobs.id", ondelete="CASCADE", name="fk_job_steps_job_id"), nullable=False
        ),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("container", sa.String(255), nullable=False),
        sa.Column("output", JSON, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("node", sa.String(255), nullable=True),
        sa.Column("started_at", TIMESTAMP, nullable=False),
        sa.Column("finished_at", TIMESTAMP, nullable=False),
        sa.UniqueConstraint("job_id", "position", name="uq_job_steps_job_position"),
    )


def downgrade() -> None:
    op.drop_table("job_steps")
    op.drop_table("jobs")
