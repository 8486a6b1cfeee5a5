"""The composition root: builds the node's parts from its settings and runs their lifecycle.

Only this module knows every layer; the HTTP layer and the scheduler never import each
other, they meet here through the database and the shared container states.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar

from app.config import Settings
from app.containers.state import ContainerStates
from app.db import migrate
from app.db.engine import Database
from app.db.signal import JobSignal
from app.http.app import create_app
from app.jobs.requests import ContainerCatalog
from app.jobs.service import JobService

log = logging.getLogger("jobnode")


class Node:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.database = Database(
            settings.database.url,
            pool_size=settings.database.pool_size,
            connect_timeout=settings.database.connect_timeout,
        )
        self.signal = JobSignal()
        self.containers = ContainerStates(settings)
        self.jobs = JobService(self.database, ContainerCatalog(settings), self.signal)

    @asynccontextmanager
    async def lifespan(self, _app: Litestar) -> AsyncIterator[None]:
        if self.settings.ignored_keys:
            log.warning("config keys ignored (Infernet-only): %s", ", ".join(self.settings.ignored_keys))
        await migrate.upgrade(self.database)
        try:
            yield
        finally:
            await self.database.dispose()

    def app(self) -> Litestar:
        return create_app(self.settings.server, self.jobs, self.containers, lifespan=[self.lifespan])
