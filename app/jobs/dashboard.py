"""The dashboard's data: the queue now, its depth over the last minutes (sampled in the
background, kept in memory), throughput, containers, recent and failed jobs, and the
subscriptions: active ones, the next due time, intervals this node counted missed; and
the webhook endpoints that fail (retried now, or failed in the last day)."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from app import __version__, metrics
from app.clock import utcnow
from app.jobs.backlog_counts import BacklogCount
from app.jobs.container_report import ContainerReport
from app.jobs.inspection import JobInspection
from app.jobs.queue_numbers import QueueNumbers


class Dashboard:
    #: Queue depth samples for the chart: one every ``SAMPLE_SECONDS``, ``SAMPLES`` kept.
    SAMPLE_SECONDS = 5.0
    SAMPLES = 180

    def __init__(
        self, node_id: str, numbers: QueueNumbers, inspection: JobInspection, containers: ContainerReport
    ) -> None:
        self.node_id = node_id
        self.numbers = numbers
        self.inspection = inspection
        self.containers = containers
        self.depth_samples: deque[tuple[str, int, int]] = deque(maxlen=self.SAMPLES)
        # A day of failed deliveries, counted at each refresh: an endpoint down for a day
        # fails every job's delivery. Shared as a backlog's count when large.
        self._failing_webhooks = BacklogCount(
            lambda: inspection.failing_webhooks(limit=10), lambda rows: sum(row["deliveries"] for row in rows)
        )
        self._sampler: asyncio.Task[None] | None = None

    async def sample_depth(self) -> None:
        queue = await self.numbers.queue()
        self.depth_samples.append((utcnow().isoformat(), queue.queue_depth, queue.running))

    async def _sample_forever(self) -> None:
        while True:
            try:
                await self.sample_depth()
            except asyncio.CancelledError:
                raise
            except Exception:
                pass
            await asyncio.sleep(self.SAMPLE_SECONDS)

    async def start(self) -> None:
        """Sample the queue depth in the background for the chart."""
        self._sampler = asyncio.create_task(self._sample_forever(), name="jobnode-depth-sampler")

    async def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            await asyncio.gather(self._sampler, return_exceptions=True)
            self._sampler = None

    async def data(self) -> dict[str, Any]:
        queue = await self.numbers.queue()
        recent = await self.inspection.list_jobs(limit=15)
        next_due = await self.numbers.next_subscription_due()
        return {
            "now": utcnow().isoformat(),
            "node": self.node_id,
            "version": __version__,
            "queue": {
                "pending": queue.queue_depth,
                "running": queue.running,
                "oldest_pending_seconds": queue.oldest_pending_seconds,
            },
            "subscriptions": {
                "active": queue.active_subscriptions,
                "next_due": None if next_due is None else next_due.isoformat(),
                "missed": metrics.intervals_missed(),
            },
            "depth": [{"at": at, "pending": p, "running": r} for at, p, r in self.depth_samples],
            "throughput": await self.numbers.throughput(10),
            "containers": self.containers.states(),
            "recent": recent,
            "failed": await self.inspection.failed_jobs(10),
            "webhooks": await self._failing_webhooks(),
        }
