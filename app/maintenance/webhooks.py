"""The webhook delivery service: POSTs the outbox's due deliveries (``webhook_deliveries``,
written with the end of their job) and records each attempt.

It runs on every node (``Leadership.register_on_every_node``): deliveries are claimed like
jobs, ``FOR UPDATE SKIP LOCKED``, their attempt counted and leased in the claim
(``app.db.statements.webhooks``), so no two nodes make one attempt, and a node that dies
mid-POST leaves it to the next claim once the lease (``webhooks.timeout`` + a margin) has
passed: at-least-once. A 2xx delivers; anything else (3xx included: redirects are never
followed, an error, a timeout) is retried after ``min(1 s * 2^(n-1), 1 h)``, until
``webhooks.max_attempts``; a host or address the allow-list refuses fails at once.

POSTs run in tasks of their own, at most ``webhooks.concurrency`` at once, never in the
job's path: the step commit only writes the row and wakes this service. Woken by that,
by a NOTIFY from other nodes (``jobnode_webhooks``), or when a POST frees a slot, it
otherwise sleeps until the earliest due delivery. The outcomes of many POSTs are written
in one transaction (``GroupCommit``, one item alone again if the group fails).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import msgspec

from app import metrics
from app.clock import utcnow
from app.config.settings import WebhookSettings
from app.db.batching import GroupCommit
from app.db.engine import Database
from app.db.models import DeliveryStatus
from app.db.signal import JobSignal
from app.db.statements import reads, webhooks
from app.jobs.results import job_result, step_result
from app.maintenance.webhook_http import Answer, WebhookClient

log = logging.getLogger("jobnode.webhooks")

#: The longest wait between two attempts of a delivery.
MAX_BACKOFF = timedelta(hours=1)
#: A claimed attempt belongs to its node this long past ``webhooks.timeout``.
CLAIM_MARGIN = timedelta(seconds=5)


def backoff(attempt: int) -> timedelta:
    """After the ``attempt``-th failed attempt (1-based): 1 s, 2 s, 4 s … 1 h."""
    return min(timedelta(seconds=2 ** min(attempt - 1, 12)), MAX_BACKOFF)


@dataclass(frozen=True, slots=True)
class Claimed:
    id: str
    job_id: str
    url: str
    attempt: int


@dataclass(frozen=True, slots=True)
class Outcome:
    delivery: Claimed
    started_at: datetime
    finished_at: datetime
    answer: Answer
    #: ``pending`` (retried at ``retry_at``), ``failed`` or ``delivered``.
    state: str
    retry_at: datetime


class WebhookDeliveries:
    name = "webhooks"
    #: The longest sleep when nothing is due (a safety net under the wake-ups).
    period = 1.0

    def __init__(self, database: Database, signal: JobSignal, settings: WebhookSettings) -> None:
        self.database = database
        self.signal = signal
        self.settings = settings
        self.client = WebhookClient(settings)
        self._tasks: set[asyncio.Task[None]] = set()
        self._delay: float | None = None
        #: Every slot was taken at the last claim: a finished POST wakes the loop.
        self._full = False
        self._record: GroupCommit[Outcome, None] = GroupCommit(self._write_outcomes)

    async def work(self) -> None:
        """Claim what is due, as many as there are free slots, and start their POSTs."""
        free = self.settings.concurrency - len(self._tasks)
        if free <= 0:
            self._full = True
            self._delay = None  # a finished POST wakes the loop
            return
        now = utcnow()
        lease_until = now + timedelta(seconds=self.settings.timeout) + CLAIM_MARGIN
        async with self.database.direct_write(one_statement=True) as conn:
            rows = await conn.fetch(webhooks.CLAIM_DUE, {"now": now, "limit": free, "lease_until": lease_until})
        claimed = [Claimed(str(r[0]), str(r[1]), r[2], r[3]) for r in rows]
        if claimed:
            bodies = await self._bodies([c.job_id for c in claimed])
            for delivery in claimed:
                task = asyncio.create_task(self._deliver(delivery, bodies.get(delivery.job_id)))
                self._tasks.add(task)
                task.add_done_callback(self._done)
        self._full = len(self._tasks) >= self.settings.concurrency
        if len(claimed) == free:  # more may be due: at once, or when a slot frees
            self._delay = None if self._full else 0.0
            return
        if claimed:  # woken again by new deliveries and by retries (``_deliver``)
            self._delay = None
            return
        async with self.database.direct_read() as conn:
            due = (await conn.fetch(webhooks.NEXT_DUE, {}))[0][0]
        self._delay = None if due is None else max(0.0, (due - utcnow()).total_seconds())

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("webhook delivery failed unexpectedly", exc_info=task.exception())
        if self._full:
            self._full = False
            self.signal.webhooks_changed()  # a slot is free for what is waiting

    async def wait(self, period: float) -> bool:
        timeout = period if self._delay is None else min(period, self._delay)
        self._delay = None
        return await self.signal.wait_webhooks(timeout)

    async def stop(self) -> None:
        """POSTs under way are abandoned: their attempts are claimed again once leased out."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.client.close()

    async def _bodies(self, job_ids: list[str]) -> dict[str, bytes]:
        """Each job's ``JobResult`` with ``intermediate_results``, read in one statement."""
        status: dict[str, str] = {}
        steps: dict[str, list[dict[str, Any]]] = defaultdict(list)
        async with self.database.direct_read() as conn:
            for job_id, _, job_status, container, output, error in await conn.fetch(
                reads.RESULTS, {"ids": list(dict.fromkeys(job_ids))}
            ):
                status[str(job_id)] = job_status
                if container is not None:
                    steps[str(job_id)].append(step_result(container, output, error))
        return {
            job_id: msgspec.json.encode(job_result(job_id, job_status, steps[job_id], True))
            for job_id, job_status in status.items()
        }

    async def _deliver(self, delivery: Claimed, body: bytes | None) -> None:
        started = utcnow()
        if body is None:  # the job went (pruned) between the claim and the read
            answer = Answer(None, "refused: the job no longer exists", refused=True)
        else:
            answer = await self.client.post(delivery.url, delivery.id, delivery.attempt, body)
        finished = utcnow()
        if answer.delivered:
            state, outcome = DeliveryStatus.DELIVERED, "delivered"
        elif answer.refused or delivery.attempt >= self.settings.max_attempts:
            state, outcome = DeliveryStatus.FAILED, "refused" if answer.refused else "failed"
        else:
            state, outcome = DeliveryStatus.PENDING, "retried"
        metrics.webhook_attempted(outcome)
        if outcome != "delivered":
            log.info(
                "webhook attempt %d %s: %s",
                delivery.attempt,
                outcome,
                answer.error,
                extra={"job_id": delivery.job_id, "delivery": delivery.id, "url": delivery.url},
            )
        await self._record(Outcome(delivery, started, finished, answer, state, finished + backoff(delivery.attempt)))
        if state == DeliveryStatus.PENDING:
            self.signal.webhooks_changed()  # the loop sleeps until this retry is due

    async def _write_outcomes(self, outcomes: list[Outcome]) -> list[None]:
        now = utcnow()
        attempts = [
            {
                "delivery_id": o.delivery.id,
                "attempt": o.delivery.attempt,
                "started_at": o.started_at,
                "finished_at": o.finished_at,
                "status_code": o.answer.status_code,
                "error": o.answer.error,
            }
            for o in outcomes
        ]
        delivered = [o.delivery.id for o in outcomes if o.state == DeliveryStatus.DELIVERED]
        latencies: list[float] = []
        async with self.database.direct_write() as conn:
            await conn.insert_many(webhooks.INSERT_ATTEMPTS, attempts)
            if delivered:
                for _, created_at in await conn.fetch(webhooks.DELIVERED, {"ids": delivered, "now": now}):
                    latencies.append((now - created_at).total_seconds())
            for o in outcomes:
                if o.state != DeliveryStatus.DELIVERED:
                    params = {
                        "delivery": o.delivery.id,
                        "attempt": o.delivery.attempt,
                        "state": o.state,
                        "retry_at": o.retry_at,
                        "reason": o.answer.error,
                    }
                    await conn.execute(webhooks.NOT_DELIVERED, params)
        metrics.webhooks_delivered(latencies)
        return [None] * len(outcomes)
