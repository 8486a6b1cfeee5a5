"""Every VACUUM of jobs cleans its indexes too (PostgreSQL)

The claim reads the oldest pending jobs first through ``ix_jobs_claim``, whose entries of
jobs claimed since the last VACUUM stay in the index until one removes them: the claim
walks past them all. PostgreSQL's VACUUM skips the indexes when the dead rows it found sit
on fewer than 2 % of the table's pages ("index scan bypassed"), and on a big table that is
most of them: with 16.8 M jobs stored, a VACUUM after 19,000 claims found them on 0.7 % of
the pages and left the claim's entries, and after four drains of 58,000 claims each, with
a VACUUM before each, the claim walked 675 pages of them (1 ms of a 3.5 ms statement).
``vacuum_index_cleanup = on`` makes every VACUUM of the table, autovacuum's included,
clean its indexes. A storage parameter: set at once, nothing rewritten.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE jobs SET (vacuum_index_cleanup = on)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE jobs RESET (vacuum_index_cleanup)")
