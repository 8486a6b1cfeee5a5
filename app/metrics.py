"""What the node measures about its jobs, recorded where things happen.

The scheduler and the chain runner call one function of this module per job event
(claimed, step done, step failed, finished, abandoned, rescued); each records the
Prometheus series of that event and logs it with ``extra={"job_id", "container"}``,
so metrics and structured logs never disagree.

Levels: the routine life of a job (claimed, step done, success) is logged at DEBUG, a
failure at WARNING (the step) and INFO (the job), operator actions at INFO. A log line
(the stdlib's record, the JSON, the write) costs several times what the job's metrics
cost, and a sizeable share of the little CPU the node spends on a job:
``log_level: "DEBUG"`` traces every job, the default does not pay for it.

The histograms and counters are ``prometheus_client`` objects in the process-wide
default registry, which Litestar's ``PrometheusController`` exposes at ``/metrics``.
Gauges that describe the queue (jobs by state, oldest pending job) are not kept here:
they are read from SQL at scrape time (see ``app.jobs.queue_numbers``), so they are right
for the whole database, whichever node ran what.

Each container's recent step durations are also kept in memory (the last
``RECENT_SAMPLES`` calls, per node) for the mean and p95 of ``GET /api/containers``:
a query over ``job_steps`` by container would need an index the schema does not have,
and the live view is about this node anyway.
"""

from __future__ import annotations

import logging
import math
import weakref
from collections import deque
from datetime import datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Histogram

from app.clock import utcnow

if TYPE_CHECKING:
    from app.containers.client import StepFailed
    from app.containers.state import ContainerState
    from app.jobs.values import ClaimedJob

log = logging.getLogger("jobnode.jobs")

#: From milliseconds to the default container timeout (180 s).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, math.inf)
RECENT_SAMPLES = 200

STEP_DURATION = Histogram(
    "jobnode_step_duration_seconds",
    "Duration of one container call (a step), by container and outcome (ok, error)",
    ["container", "outcome"],
    buckets=DURATION_BUCKETS,
)
QUEUE_WAIT = Histogram(
    "jobnode_job_queue_wait_seconds",
    "Queued-to-started: from submit (or re-queue) to the first claim, by first container",
    ["container"],
    buckets=DURATION_BUCKETS,
)
JOB_DURATION = Histogram(
    "jobnode_job_duration_seconds",
    "From submit (or re-queue) to finish, for jobs finished by this node, by status",
    ["status"],
    buckets=DURATION_BUCKETS,
)
#: Down to a tenth of a millisecond: a claim is one statement, and its cost per claim is
#: what tells whether it grows with the backlog (issue 19: p99 ≤ 5 ms whatever the backlog).
CLAIM_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.5, math.inf)
CLAIM_DURATION = Histogram(
    "jobnode_claim_seconds",
    "One claim of the claim loop (pending jobs taken up to the free capacity), with its committed steps' read",
    buckets=CLAIM_BUCKETS,
)
JOBS_FINISHED = Counter(
    "jobnode_jobs_finished_total", "Jobs finished by this node, by status (success, failed, cancelled)", ["status"]
)
CONTAINER_ERRORS = Counter(
    "jobnode_container_errors_total", "Failed container calls, by container and kind of error", ["container", "kind"]
)
STEP_RETRIES = Counter(
    "jobnode_step_retries_total",
    "Failed steps put off to be tried again (a container's retry), by container and reason",
    ["container", "reason"],
)
JOBS_RESCUED = Counter(
    "jobnode_jobs_rescued_total",
    "Jobs whose node stopped: requeued (lease expired), failed (out of attempts), taken_back (restarted node)",
    ["outcome"],
)
INTERVALS_STARTED = Counter(
    "jobnode_subscription_intervals_started_total", "Subscription intervals whose job this node created"
)
INTERVALS_MISSED = Counter(
    "jobnode_subscription_intervals_missed_total",
    "Subscription intervals this node counted missed (their successor was already due)",
)
START_LAG = Histogram(
    "jobnode_subscription_start_lag_seconds",
    "From an interval's due time to the creation of its job (the database's clock on PostgreSQL)",
    buckets=DURATION_BUCKETS,
)
IDEMPOTENT_REPLAYS = Counter(
    "jobnode_idempotent_replays_total", "Submits answered from their Idempotency-Key (no new job)"
)
IDEMPOTENCY_CONFLICTS = Counter(
    "jobnode_idempotency_conflicts_total", "Submits refused 409: their Idempotency-Key was used for another body"
)
WEBHOOK_DELIVERIES = Counter(
    "jobnode_webhook_deliveries_total",
    "Webhook POSTs made by this node, by outcome: delivered (2xx), retried (another attempt "
    "due), failed (the last attempt), refused (the allow-list refused the host or its address)",
    ["outcome"],
)
WEBHOOK_LATENCY = Histogram(
    "jobnode_webhook_delivery_seconds",
    "From a job's end (or an operator's re-send) to the 2xx of its webhook, for deliveries by this node",
    buckets=DURATION_BUCKETS,
)
JOBS_RETRIED = Counter("jobnode_jobs_retried_total", "Failed or cancelled jobs re-queued by an operator")
JOBS_ABANDONED = Counter(
    "jobnode_jobs_abandoned_total",
    "Running jobs this node stopped because it no longer held them (cancelled, taken over)",
)


_children: dict[tuple[Any, ...], Any] = {}


def _child(metric: Any, *labels: str) -> Any:
    """``metric.labels(*labels)``, cached: the job path calls these for every job."""
    key = (metric, *labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*labels)
    return child


def error_kind(error: str) -> str:
    """A small fixed set of labels for the error texts of ``app.containers.client``."""
    if error.startswith("HTTP "):
        return "http_status"
    if error.startswith("timed out"):
        return "timeout"
    if error == "connection refused" or error.startswith("cannot connect"):
        return "connection"
    if error.startswith(("connection closed", "connection reset", "request failed", "stream")):
        return "disconnected"
    if error.startswith("not valid JSON"):
        return "invalid_json"
    if error.startswith("output "):  # refused by ``app.storable``, or by the database
        return "unstorable_output"
    if error.startswith("container not ready"):
        return "not_ready"
    if "not configured" in error:
        return "not_configured"
    return "other"


class RecentDurations:
    """The last few step durations of each container, per ``ContainerState`` (one node)."""

    def __init__(self, size: int = RECENT_SAMPLES) -> None:
        self.size = size
        self._samples: dict[int, deque[float]] = {}

    def add(self, state: ContainerState, seconds: float) -> None:
        key = id(state)
        samples = self._samples.get(key)
        if samples is None:
            samples = self._samples[key] = deque(maxlen=self.size)
            weakref.finalize(state, self._samples.pop, key, None)
        samples.append(seconds)

    def summary(self, state: ContainerState) -> dict[str, Any]:
        """``{"samples", "mean_seconds", "p95_seconds"}``; the two are null without samples."""
        samples = sorted(self._samples.get(id(state), ()))
        if not samples:
            return {"samples": 0, "mean_seconds": None, "p95_seconds": None}
        p95 = samples[max(0, math.ceil(0.95 * len(samples)) - 1)]  # nearest-rank
        return {"samples": len(samples), "mean_seconds": sum(samples) / len(samples), "p95_seconds": p95}


RECENT = RecentDurations()


def _seconds_since(moment: datetime | None) -> float | None:
    return None if moment is None else max(0.0, (utcnow() - moment).total_seconds())


def _extra(job_id: str, container: str | None, **more: Any) -> dict[str, Any]:
    return {"job_id": job_id, "container": container, **more}


# -- job events (one call each from the scheduler and the chain runner) --------------


def job_claimed(job: ClaimedJob) -> None:
    first = job.containers[0] if job.containers else None
    waited = _seconds_since(job.queued_at)
    if waited is not None and job.attempts == 1 and first is not None:
        _child(QUEUE_WAIT, first).observe(waited)
    if log.isEnabledFor(logging.DEBUG):
        log.debug(
            "job claimed (attempt %d)",
            job.attempts,
            extra=_extra(job.id, first, attempt=job.attempts, queued_seconds=waited),
        )


def step_done(job: ClaimedJob, position: int, state: ContainerState, started: datetime) -> None:
    seconds = _seconds_since(started) or 0.0
    _child(STEP_DURATION, state.settings.id, "ok").observe(seconds)
    RECENT.add(state, seconds)
    if log.isEnabledFor(logging.DEBUG):
        log.debug(
            "step %d done in %.3f s",
            position,
            seconds,
            extra=_extra(job.id, state.settings.id, step=position, duration_seconds=seconds),
        )


def step_failed(
    job: ClaimedJob, position: int, container: str, state: ContainerState | None, failed: StepFailed, started: datetime
) -> None:
    kind = error_kind(failed.error)
    CONTAINER_ERRORS.labels(container, kind).inc()
    seconds = _seconds_since(started) or 0.0
    if failed.delivered and state is not None:
        _child(STEP_DURATION, container, "error").observe(seconds)
        RECENT.add(state, seconds)
    log.warning(
        "step %d failed (%s): %s",
        position,
        kind,
        failed.error,
        extra=_extra(job.id, container, step=position, error=failed.error, error_kind=kind),
    )


def step_retried(container: str, reason: str) -> None:
    """Logged by the chain runner, which knows when the next attempt is due."""
    _child(STEP_RETRIES, container, reason).inc()


def job_finished(job: ClaimedJob, status: str, container: str | None = None) -> None:
    _child(JOBS_FINISHED, status).inc()
    took = _seconds_since(job.queued_at)
    if took is not None:
        _child(JOB_DURATION, status).observe(took)
    level = logging.DEBUG if status == "success" else logging.INFO
    if log.isEnabledFor(level):
        container = container or (job.containers[-1] if job.containers else None)
        log.log(
            level,
            "job %s",
            status,
            extra=_extra(job.id, container, status=status, attempt=job.attempts, duration_seconds=took),
        )


def job_abandoned(job_id: str, why: str) -> None:
    JOBS_ABANDONED.inc()
    log.warning("job abandoned: %s", why, extra=_extra(job_id, None))


def jobs_rescued(requeued: int = 0, failed: int = 0, taken_back: int = 0) -> None:
    for outcome, count in (("requeued", requeued), ("failed", failed), ("taken_back", taken_back)):
        if count:
            JOBS_RESCUED.labels(outcome).inc(count)


# -- operator events (app.jobs.actions) -----------------------------------------------


def job_cancelled(job_id: str, container: str | None) -> None:
    JOBS_FINISHED.labels("cancelled").inc()
    log.info("job cancelled by an operator", extra=_extra(job_id, container, status="cancelled"))


def job_retried(job_id: str, container: str | None) -> None:
    JOBS_RETRIED.inc()
    log.info("job re-queued by an operator", extra=_extra(job_id, container, status="pending"))


def intervals_missed() -> int:
    """The intervals this node counted missed since it started (the dashboard)."""
    return int(
        sum(
            sample.value
            for family in INTERVALS_MISSED.collect()
            for sample in family.samples
            if sample.name.endswith("_total")
        )
    )


def intervals_ticked(lags: list[float], missed: int) -> None:
    """A tick of the subscription ticker: the start lag of each interval job it created."""
    INTERVALS_STARTED.inc(len(lags))
    if missed:
        INTERVALS_MISSED.inc(missed)
    for lag in lags:
        START_LAG.observe(lag)


def webhook_attempted(outcome: str) -> None:
    """One POST of a webhook (``app.maintenance.webhooks``): its outcome."""
    _child(WEBHOOK_DELIVERIES, outcome).inc()


def webhooks_delivered(latencies: list[float]) -> None:
    """Seconds from each delivered job's end to its 2xx."""
    for seconds in latencies:
        WEBHOOK_LATENCY.observe(seconds)
