"""Whether this node should get traffic (``GET /health/ready``).

Ready means: the database answers, its schema is at the migration head this code ships
with, and the node is not shutting down. A load balancer or an orchestrator takes a node
out of rotation on the first 503, so a node told to stop (SIGTERM, the lifespan ending)
reports it at once, while it still finishes the requests it has.
"""

from __future__ import annotations

from app.db import migrate
from app.db.engine import Database
from app.formatting import error_text

DRAINING = "draining: the node is shutting down"


class NodeReadiness:
    def __init__(self, database: Database) -> None:
        self._database = database
        self._head: str | None = None
        self.draining = False

    def drain(self) -> None:
        """Shutdown has begun: ``/health/ready`` answers 503 from now on."""
        self.draining = True

    async def unready_reason(self) -> str | None:
        """Why the node should not get traffic, in plain words; None when it should."""
        if self.draining:
            return DRAINING
        try:
            current = await migrate.current_revision(self._database)
        except Exception as exc:
            return f"database unreachable: {error_text(exc)}"
        if self._head is None:  # parsed once: the scripts ship with the code
            self._head = migrate.head_revision()
        if current != self._head:
            return (
                f"database schema at revision {current or 'none'}, "
                f"this node needs {self._head} (run: jobnode db upgrade)"
            )
        return None
