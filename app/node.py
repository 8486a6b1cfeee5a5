"""The composition root: builds the node's parts from its settings and runs their lifecycle.

Only this module knows every layer; the HTTP layer and the scheduler never import each
other, they meet here: through the database, the shared container states, and the
scheduler taking new jobs from the submit path (``app.jobs.handoff``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta
from typing import TYPE_CHECKING

from litestar import Litestar

from app.config.settings import Settings
from app.containers.client import ContainerClient
from app.containers.resources import ResourceService
from app.containers.state import ContainerStates
from app.db import migrate, upkeep
from app.db.engine import Database
from app.db.listen import NodeConnection
from app.db.signal import JobSignal
from app.health import NodeReadiness
from app.http.app import create_app
from app.jobs.actions import JobActions
from app.jobs.container_report import ContainerReport
from app.jobs.dashboard import Dashboard
from app.jobs.events import EventFeed
from app.jobs.inspection import JobInspection
from app.jobs.live import LiveJobs
from app.jobs.queue_numbers import QueueNumbers
from app.jobs.requests import ContainerCatalog
from app.jobs.service import JobService
from app.jobs.stream import StreamService
from app.jobs.subscriptions import SubscriptionService
from app.jobs.transitions import JobStore
from app.maintenance.leader import Leadership
from app.maintenance.orphans import OrphanTakeBack
from app.maintenance.pruner import KeyPruner, Pruner
from app.maintenance.reaper import Reaper
from app.maintenance.ticker import Ticker
from app.maintenance.webhooks import WebhookDeliveries
from app.scheduler.chain import ChainRunner
from app.scheduler.scheduler import Scheduler
from app.scheduler.streaming import StreamRunner

if TYPE_CHECKING:
    from app.containers.runtime import ContainerRuntime

log = logging.getLogger("jobnode")


class Node:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.database = Database(
            settings.database.url,
            pool_size=settings.database.pool_size,
            connect_timeout=settings.database.connect_timeout,
            statement_timeout=settings.database.statement_timeout,
        )
        self.signal = JobSignal(settings.node_id)
        self.containers = ContainerStates(settings)
        self.client = ContainerClient(max_json_depth=settings.server.max_json_depth)
        catalog = ContainerCatalog(settings)
        live = LiveJobs()  # the scheduler's running jobs, which the API reads
        store = JobStore(self.database, settings.node_id, settings.scheduler.lease_seconds, self.signal)
        self.connection = (
            NodeConnection(self.database, self.signal, on_ended=live.ended_elsewhere)
            if self.database.is_postgresql
            else None
        )
        if self.connection is not None:
            live.hear_ended = self.connection.hear_ended
        self.scheduler = Scheduler(settings, store, ChainRunner(store, self.containers, self.client, live), self.signal)
        self.webhooks = WebhookDeliveries(self.database, self.signal, settings.webhooks)
        self.orphans = OrphanTakeBack(self.database, settings.node_id, settings.scheduler.max_attempts)
        self.maintenance = self._maintenance(settings)
        # New jobs go straight to this node's scheduler when it has room (app.jobs.handoff).
        claims = self.scheduler if settings.scheduler.enabled else None
        self.subscriptions = SubscriptionService(self.database, self.signal, settings.server.max_subscriptions)
        self.jobs = JobService(
            self.database,
            catalog,
            self.signal,
            live,
            claims,
            self.subscriptions,
            timedelta(hours=settings.retention.idempotency_hours),
        )
        self.events = EventFeed(self.database, live)
        streamer = StreamRunner(self.containers, self.client)
        self.streams = StreamService(store, catalog, streamer, settings.server.max_json_depth)
        self.resources = ResourceService(self.containers, self.client)
        self.inspection = JobInspection(self.database)
        self.actions = JobActions(self.database, self.inspection, settings.node_id, self.signal, live)
        self.numbers = QueueNumbers(self.database)
        self.container_report = ContainerReport(self.containers)
        self.dashboard = Dashboard(settings.node_id, self.numbers, self.inspection, self.container_report)
        self.runtime: ContainerRuntime | None = None
        self.readiness = NodeReadiness(self.database)

    def _maintenance(self, settings: Settings) -> Leadership:
        """The reaper and the pruner, on the node that leads (PostgreSQL: the holder of the
        advisory lock of ``self.connection``; SQLite: this one); the subscription ticker on
        every node."""
        leadership = Leadership(self.connection.is_leader if self.connection is not None else None)
        period = max(0.5, settings.scheduler.lease_seconds / 2)
        leadership.register(
            Reaper(self.database, settings.node_id, settings.scheduler.max_attempts, period, self.signal)
        )
        if settings.retention.finished_jobs_days > 0:
            leadership.register(Pruner(self.database, settings.retention.finished_jobs_days, period))
        leadership.register(KeyPruner(self.database, period))
        leadership.register_on_every_node(Ticker(self.database, self.signal))
        leadership.register_on_every_node(self.webhooks)
        return leadership

    def drain(self) -> None:
        """Shutdown has begun (a signal, or the lifespan ending): stop getting traffic."""
        self.readiness.drain()
        self.events.close()  # streams end: their clients reconnect to a node that serves

    def _needs_runtime(self) -> bool:
        """Docker only when something is managed; probes for any container (a TCP connect
        for one run elsewhere without a health_path)."""
        return bool(self.settings.containers)

    @asynccontextmanager
    async def lifespan(self, _app: Litestar) -> AsyncIterator[None]:
        if self.settings.ignored_keys:
            log.warning("config keys ignored (Infernet-only): %s", ", ".join(self.settings.ignored_keys))
        async with AsyncExitStack() as stack:
            stack.push_async_callback(self.database.dispose)
            stack.push_async_callback(self.events.stop)
            await migrate.upgrade(self.database)
            await upkeep.warn_if_never_vacuumed(self.database)
            await self.dashboard.start()
            stack.push_async_callback(self.dashboard.stop)
            stack.push_async_callback(self.client.close)
            if self._needs_runtime():
                from app.containers.runtime import ContainerRuntime

                self.runtime = ContainerRuntime(self.settings, self.containers)
                await self.runtime.start()
                stack.push_async_callback(self.runtime.stop)
                await self.runtime.first_probes()  # /info is right from the first request
            if self.connection is not None:  # wake-ups: new jobs, cancels, jobs ended elsewhere
                await self.connection.start()
                stack.push_async_callback(self.connection.stop)
            if self.settings.scheduler.enabled:
                await self.orphans.run()  # before the first claim
                await self.maintenance.start()
                stack.push_async_callback(self.webhooks.stop)  # after the loops' stop
                stack.push_async_callback(self.maintenance.stop)  # after the scheduler's stop
                await self.scheduler.start()
                stack.push_async_callback(self.scheduler.stop)
            try:
                yield
            finally:
                self.drain()  # before anything stops (run_node drains already on the signal)

    def app(self) -> Litestar:
        return create_app(
            self.settings.server,
            {
                "jobs": self.jobs,
                "events": self.events,
                "subscriptions": self.subscriptions,
                "containers": self.containers,
                "streams": self.streams,
                "resources": self.resources,
                "inspection": self.inspection,
                "actions": self.actions,
                "numbers": self.numbers,
                "container_report": self.container_report,
                "dashboard": self.dashboard,
                "readiness": self.readiness,
            },
            lifespan=[self.lifespan],
        )
