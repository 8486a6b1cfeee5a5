"""Job inputs and step outputs compressed with lz4 on PostgreSQL

A payload larger than about 2 kB is compressed when stored (TOAST). PostgreSQL's default,
pglz, took 17 ms to store a 1 MB JSON input of repeated characters and 44 ms for one of
text, lz4 10 and 14 ms (issue 19: payload 1 KB / 100 KB / 1 MB, the database's CPU per
job grew with the payload at ~30 ms per MB of input, stored once as the input and once as
the output). Only values written from now on are compressed with it: nothing is
rewritten, so the migration takes no time; older rows stay readable as they are.

PostgreSQL 14 and later, when built with lz4 (Debian's and the official images are); on
an older or a server without it, and on SQLite, nothing changes.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: The columns that hold a client's payloads: what a job was given, what each step returned.
COLUMNS = (("jobs", "input"), ("job_steps", "output"))


def _compress(method: str) -> None:
    """``method``: lz4, or ``default`` (the server's ``default_toast_compression``, as before)."""
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    available = bind.execute(
        sa.text("SELECT :method = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'"),
        {"method": "lz4"},
    ).scalar()
    if not available:
        return
    for table, column in COLUMNS:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET COMPRESSION {method}")


def upgrade() -> None:
    _compress("lz4")


def downgrade() -> None:
    _compress("default")
