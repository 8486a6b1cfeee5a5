"""New jobs: the submit's INSERT, which also claims jobs for this node (``app.jobs.handoff``)
and stores a streamed job (``app.jobs.stream``), all with the same columns."""

from __future__ import annotations

from app.db.direct import RowsInsert
from app.db.models import Job

#: Every new job's columns (``app.jobs.rows.pending_row``). Parameter: the rows, one dict
#: of these keys each; on PostgreSQL the ``pg_notify`` arguments when it announces them.
INSERT_JOBS = RowsInsert(
    Job.__table__,  # type: ignore[arg-type]
    (
        "id",
        "client",
        "source",
        "containers",
        "input",
        "requires_proof",
        "status",
        "attempts",
        "stream",
        "lease_owner",
        "lease_expires_at",
        "run_after",
        "created_at",
        "started_at",
        "webhook",
    ),
)
