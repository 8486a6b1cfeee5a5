"""Wake-ups for idle schedulers when jobs are added.

In one process an ``asyncio.Event`` is set after the submit commits, so a new job starts
within milliseconds. Across nodes on PostgreSQL the submit transaction also sends
``NOTIFY``, which PostgreSQL delivers only if that transaction commits.
"""

from __future__ import annotations

import asyncio

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

CHANNEL = "jobnode_jobs"


class JobSignal:
    def __init__(self, sender: str = "") -> None:
        self._event = asyncio.Event()
        #: Sent as the NOTIFY payload, so that a node ignores its own notifications: it
        #: was already woken in-process.
        self.sender = sender

    def notify(self) -> None:
        """Work may be waiting: jobs were added, or a busy scheduler freed a slot."""
        self._event.set()

    async def notify_other_nodes(self, conn: AsyncConnection) -> None:
        """Call inside the inserting transaction; a no-op off PostgreSQL."""
        if conn.dialect.name == "postgresql":
            await conn.execute(select(func.pg_notify(CHANNEL, self.sender)))

    async def wait(self, timeout: float) -> bool:
        """Block until notified or ``timeout`` passed; True when notified."""
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except TimeoutError:
            return False
        finally:
            self._event.clear()
        return True
