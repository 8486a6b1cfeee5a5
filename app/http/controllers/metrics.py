"""``GET /metrics``: Litestar's ``PrometheusController`` plus the queue's own gauges.

The body is the process registry (HTTP request metrics of Litestar's Prometheus
middleware, and the job histograms and counters of ``app.metrics``) followed by gauges
read at scrape time:

- ``jobnode_jobs{state,source}``: unfinished jobs (pending, running) from SQL, for the
  whole database; finished jobs are counted by ``jobnode_jobs_finished_total`` instead
  (a count of every finished row would scan the table on every scrape).
- ``jobnode_queue_depth``, ``jobnode_oldest_pending_age_seconds``: runnable pending jobs.
- ``jobnode_subscriptions{state="active"|"completed"|"cancelled"}``: subscriptions by
  state, each counted from a partial index (the due one, the ended one), not from the table.
- ``jobnode_database_up``: 0 when the database did not answer (the SQL gauges are then
  left out, the rest is still served).
- ``jobnode_container_ready|in_flight|restarts_total{container}``: this node's view.
- ``jobnode_event_streams_open``: this process's open ``GET /api/jobs/events`` streams,
  against its ``server.max_event_streams`` (past it a stream is refused with a 503).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from litestar import Response, get
from litestar.di import NamedDependency
from litestar.plugins.prometheus import PrometheusController
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from app.db.models import SubscriptionStatus
from app.http.openapi import OPERATOR, OPERATOR_SECURITY, errors
from app.http.operator_auth import operator_guard
from app.jobs.container_report import ContainerReport
from app.jobs.events import EventFeed
from app.jobs.queue_numbers import UNFINISHED_STATES, QueueNumbers, QueueSnapshot

SOURCES = ("offchain", "onchain")


class _ScrapeTime(Collector):
    def __init__(self, snapshot: QueueSnapshot | None, containers: list[dict[str, Any]], streams: int) -> None:
        self.snapshot = snapshot
        self.containers = containers
        self.streams = streams

    def collect(self) -> Iterator[Any]:
        up = GaugeMetricFamily("jobnode_database_up", "1 when the database answered this scrape's queries")
        up.add_metric([], 0 if self.snapshot is None else 1)
        yield up
        if self.snapshot is not None:
            jobs = GaugeMetricFamily(
                "jobnode_jobs", "Unfinished jobs by state and source (SQL, whole database)", labels=["state", "source"]
            )
            sources = sorted(set(SOURCES) | {source for _, source in self.snapshot.jobs})
            for state in UNFINISHED_STATES:
                for source in sources:
                    jobs.add_metric([state, source], self.snapshot.jobs.get((state, source), 0))
            yield jobs
            depth = GaugeMetricFamily("jobnode_queue_depth", "Pending jobs that may run now (SQL, whole database)")
            depth.add_metric([], self.snapshot.queue_depth)
            yield depth
            oldest = GaugeMetricFamily(
                "jobnode_oldest_pending_age_seconds", "Age of the oldest runnable pending job (0 when none)"
            )
            oldest.add_metric([], self.snapshot.oldest_pending_seconds)
            yield oldest
            subscriptions = GaugeMetricFamily(
                "jobnode_subscriptions", "Subscriptions by state (SQL, whole database)", labels=["state"]
            )
            subscriptions.add_metric([SubscriptionStatus.ACTIVE], self.snapshot.active_subscriptions)
            for state in (SubscriptionStatus.COMPLETED, SubscriptionStatus.CANCELLED):
                subscriptions.add_metric([state], self.snapshot.ended_subscriptions.get(state, 0))
            yield subscriptions
        ready = GaugeMetricFamily("jobnode_container_ready", "1 when the container takes work", labels=["container"])
        in_flight = GaugeMetricFamily(
            "jobnode_container_in_flight", "Calls in flight to the container", labels=["container"]
        )
        restarts = CounterMetricFamily(
            "jobnode_container_restarts", "Restarts of the container by this node", labels=["container"]
        )
        for container in self.containers:
            ready.add_metric([container["id"]], 1 if container["ready"] else 0)
            in_flight.add_metric([container["id"]], container["in_flight"])
            restarts.add_metric([container["id"]], container["restarts"])
        yield from (ready, in_flight, restarts)
        streams = GaugeMetricFamily("jobnode_event_streams_open", "Open event streams of this node process")
        streams.add_metric([], self.streams)
        yield streams


class MetricsController(PrometheusController):
    path = "/metrics"
    tags = ["operator"]
    guards = [operator_guard]
    security = OPERATOR_SECURITY

    @get(
        "/",
        summary="Prometheus metrics",
        description="Prometheus text format: HTTP requests, job and step durations, queued-to-started time, "
        "container errors by kind, rescued and retried jobs, and the queue's gauges from SQL.",
        responses=errors(OPERATOR),
        media_type="text/plain",
    )
    async def get(
        self,
        numbers: NamedDependency[QueueNumbers],
        container_report: NamedDependency[ContainerReport],
        events: NamedDependency[EventFeed],
    ) -> Response[bytes]:
        registry = REGISTRY
        if "prometheus_multiproc_dir" in os.environ or "PROMETHEUS_MULTIPROC_DIR" in os.environ:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        snapshot = await numbers.queue_if_available()
        scrape_time = CollectorRegistry(auto_describe=False)
        scrape_time.register(_ScrapeTime(snapshot, container_report.states(), events.streams))
        body = generate_latest(registry) + generate_latest(scrape_time)
        return Response(body, status_code=200, headers={"Content-Type": CONTENT_TYPE_LATEST})
