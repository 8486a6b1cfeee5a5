"""ix_jobs_failed: failed and cancelled jobs by when they ended

The dashboard shows the last failed or cancelled jobs at each refresh (every 2 s while it
is open, ``inspection.RECENTLY_FAILED``). It read ``ix_jobs_finished_at`` backwards past
every job that succeeded since the last failure: with 5 M of them, 0.73 s of the
database's time per refresh, and more the longer a node runs without failing. This index
holds the failed and cancelled jobs alone. Building it reads the table once (seconds for
millions of jobs), writes wait meanwhile.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FAILED = "status IN ('failed', 'cancelled')"


def upgrade() -> None:
    op.create_index(
        "ix_jobs_failed", "jobs", ["finished_at"], postgresql_where=sa.text(FAILED), sqlite_where=sa.text(FAILED)
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_failed", table_name="jobs")
