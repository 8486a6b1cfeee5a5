"""Which node runs the maintenance services, and their loops.

Most services run on the leader only (``register``). A service whose work is shared by
row locks instead (the subscription ticker: ``SKIP LOCKED`` splits the due rows, a unique
constraint makes each interval's job exactly once) runs on every node
(``register_on_every_node``), and sleeps in a way of its own (``NodeService.wait``).

On PostgreSQL the leader is the node holding a session-level advisory lock on its
dedicated connection (``app.db.listen.NodeConnection.is_leader``): when it dies its
connection closes, the lock is freed, and another node takes it at its next try. On
SQLite the only node leads. A service whose node does not lead stays idle: its loop asks
again at every period and touches no table.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from app.loops import Outages, every

log = logging.getLogger("jobnode.scheduler")


class MaintenanceService(Protocol):
    #: Names the loop: its task (``jobnode-<name>``) and its outage log lines.
    name: str
    #: Seconds between two runs.
    period: float

    async def work(self) -> None:
        """One run, on the leader only."""


class NodeService(MaintenanceService, Protocol):
    """A service that runs on every node, whatever the leadership."""

    async def wait(self, period: float) -> bool:
        """Block until the next run is due (at most ``period`` seconds); True when woken."""


async def _only_node() -> bool:
    return True


class Leadership:
    def __init__(self, elect: Callable[[], Awaitable[bool]] | None = None) -> None:
        """``elect``: true while this node leads, trying to take the lead when it is free;
        None: this is the only node (SQLite)."""
        self.is_leader = elect or _only_node
        self.services: list[MaintenanceService] = []
        self.node_services: list[NodeService] = []
        self._loops: list[asyncio.Task[None]] = []
        self._outages = Outages(log)

    def register(self, service: MaintenanceService) -> None:
        """A service for the leader only."""
        self.services.append(service)

    def register_on_every_node(self, service: NodeService) -> None:
        self.node_services.append(service)

    async def start(self) -> None:
        self._loops = [
            asyncio.create_task(
                every(service.name, service.period, self._on_leader(service), self._outages),
                name=f"jobnode-{service.name}",
            )
            for service in self.services
        ] + [
            asyncio.create_task(
                every(service.name, service.period, service.work, self._outages, service.wait),
                name=f"jobnode-{service.name}",
            )
            for service in self.node_services
        ]

    async def stop(self) -> None:
        """Cancels the loops; a run under way finishes its transaction (``every``)."""
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._loops = []

    def _on_leader(self, service: MaintenanceService) -> Callable[[], Awaitable[bool]]:
        async def run() -> bool:
            if not await self.is_leader():
                return False  # no database call: an outage is not taken for over
            await service.work()
            return True

        return run
