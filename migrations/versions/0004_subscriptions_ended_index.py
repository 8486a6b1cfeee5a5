"""ix_subscriptions_ended: ended subscriptions counted by state from an index

``jobnode_subscriptions{state="completed"|"cancelled"}`` is read at every scrape: an
index-only scan of the ended ones' statuses, never the table's rows.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ENDED = "status <> 'active'"


def upgrade() -> None:
    op.create_index(
        "ix_subscriptions_ended",
        "subscriptions",
        ["status"],
        postgresql_where=sa.text(ENDED),
        sqlite_where=sa.text(ENDED),
    )


def downgrade() -> None:
    op.drop_index("ix_subscriptions_ended", table_name="subscriptions")
