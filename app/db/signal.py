"""Wake-ups for idle schedulers when jobs are added.

In one process an ``asyncio.Event`` is set after the submit commits, so a new job starts
within milliseconds. Across nodes on PostgreSQL the submit transaction also sends
``NOTIFY``, which PostgreSQL delivers only if that transaction commits.
"""

from __future__ import annotations

import asyncio

from sqlalchemy import bindparam, func, select

from app.db.direct import DirectConnection, Statement

CHANNEL = "jobnode_jobs"
_NOTIFY = Statement(select(func.pg_notify(bindparam("channel"), bindparam("sender"))))


class JobSignal:
    def __init__(self, sender: str = "") -> None:
        self._event = asyncio.Event()
        #: Sent as the NOTIFY payload, so that a node ignores its own notifications: it
        #: was already woken in-process.
        self.sender = sender

    @property
    def notification(self) -> tuple[str, str]:
        """``pg_notify`` arguments for a statement that adds jobs."""
        return CHANNEL, self.sender

    def notify(self) -> None:
        """Work may be waiting: jobs were added, or a busy scheduler freed a slot."""
        self._event.set()

    async def notify_other_nodes(self, conn: DirectConnection) -> None:
        """Call inside the inserting transaction; a no-op off PostgreSQL."""
        if conn.postgresql:
            await conn.execute(_NOTIFY, {"channel": CHANNEL, "sender": self.sender})

    async def wait(self, timeout: float) -> bool:
        """Block until notified or ``timeout`` passed; True when notified."""
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except TimeoutError:
            return False
        finally:
            self._event.clear()
        return True
