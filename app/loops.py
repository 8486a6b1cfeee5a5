"""The node's background loops: an action every period (or at once when woken), and the
one way an outage of the database is logged by them.

The claim loop, the lease renewal and every maintenance service run through here, so a
database that goes away is logged once per loop when the outage begins and once when it
ends, not at every retry.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from app.db.errors import describe, is_database_unavailable


class Outages:
    """The loops that found the database unavailable and have not reached it since."""

    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self._cut_off: set[str] = set()

    def lost(self, loop: str, exc: BaseException) -> None:
        """A loop's database call failed for want of a database: logged when the outage
        begins, not at every retry."""
        if loop not in self._cut_off:
            self._cut_off.add(loop)
            self.log.warning("%s: database unavailable, paused until it answers: %s", loop, describe(exc))
        else:
            self.log.debug("%s: database still unavailable: %s", loop, describe(exc))

    def reached(self, loop: str) -> None:
        if loop in self._cut_off:
            self._cut_off.discard(loop)
            self.log.info("%s: database reachable again, resumed", loop)


async def every(
    name: str,
    period: float,
    action: Callable[[], Awaitable[bool | None]],
    outages: Outages,
    wake: Callable[[float], Awaitable[bool]] | None = None,
) -> None:
    """``action`` every ``period`` seconds, and at once whenever ``wake`` returns. The loop
    is cancelled at shutdown; an action under way is shielded and finishes its
    transaction. An action returns False when it did not use the database (an outage
    is then not taken for over). ``name`` names the loop in the log."""
    while True:
        if wake is None:
            await asyncio.sleep(period)
        else:
            await wake(period)
        try:
            reached = await asyncio.shield(action())
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if is_database_unavailable(exc):
                outages.lost(name, exc)
            else:
                outages.log.exception("%s failed", name)
        else:
            if reached is not False:
                outages.reached(name)
