"""ix_jobs_client_seq covers the job id on PostgreSQL

A page of a client's job ids (``GET /api/jobs?limit=…&after=…``) becomes an index-only
scan instead of a heap fetch per id: with 10 M jobs stored a page of 1,000 ids read
about 1,000 scattered heap pages. SQLite has no INCLUDE; its index is unchanged.

Rebuilding the index locks writes to ``jobs`` while it runs (seconds per million jobs).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _rebuild(include: list[str]) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index("ix_jobs_client_seq", table_name="jobs")
    op.create_index("ix_jobs_client_seq", "jobs", ["client", "seq"], postgresql_include=include)


def upgrade() -> None:
    _rebuild(["id"])


def downgrade() -> None:
    _rebuild([])
