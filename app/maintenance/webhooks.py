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
by a NOTIFY from other nodes (``jobnode_webhooks``), or when a POST is answered, it
otherwise sleeps until the earliest due delivery. Each round is one write transaction:
the outcomes of the POSTs answered since the last round, then the next claim; rounds
are at least ``ROUND_SECONDS`` apart, so that a busy node's deliveries cost a few
transactions a second rather than several per job (SQLite's one writer serves the jobs'
step commits too). A round claims ahead of the POSTs (up to ``CLAIMED_PER_SLOT`` per
slot), so that slots refill between rounds; a claimed attempt that waited for a slot
until too little of its lease was left is not made (the next claim makes the next one).
A round that fails as a whole for another reason than an outage writes each outcome
alone, so one faulty outcome cannot stall the others.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import msgspec

from app import metrics
from app.clock import utcnow
from app.config.settings import WebhookSettings
from app.db.direct import DirectConnection
from app.db.engine import Database
from app.db.errors import is_database_unavailable
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
#: The shortest time between two rounds (outcomes written, deliveries claimed).
ROUND_SECONDS = 0.02
#: Deliveries claimed and not answered yet, at most, per ``webhooks.concurrency``: a round
#: claims ahead of the POSTs, so that the slots refill between rounds.
CLAIMED_PER_SLOT = 4


def backoff(attempt: int) -> timedelta:
    """After the ``attempt``-th failed attempt (1-based): 1 s, 2 s, 4 s … 1 h."""
    return min(timedelta(seconds=2 ** min(attempt - 1, 12)), MAX_BACKOFF)


@dataclass(frozen=True, slots=True)
class Claimed:
    id: str
    job_id: str
    url: str
    attempt: int
    #: The attempt is this node's until then; past it, another node may claim it again.
    lease_until: datetime


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
        #: Deliveries claimed and not answered yet (POSTed or waiting for a slot).
        self._claimed = 0
        self._slots: asyncio.Semaphore | None = None
        #: Answered POSTs whose outcome the next round writes.
        self._outcomes: list[Outcome] = []
        self._delay: float | None = None
        self._last_round = 0.0

    async def work(self) -> None:
        """One round: the outcomes answered since the last one, then a claim of what is due
        (as many as there are free slots), in one transaction; then their POSTs start."""
        self._last_round = time.monotonic()
        outcomes, self._outcomes = self._outcomes, []
        free = self.settings.concurrency * CLAIMED_PER_SLOT - self._claimed
        try:
            async with self.database.direct_write() as conn:
                latencies = await self._write(conn, outcomes)
                claimed = await self._claim(conn, free)
        except Exception as exc:
            if is_database_unavailable(exc):
                self._outcomes = outcomes + self._outcomes  # written once it is back
                raise
            latencies = await self._write_alone(outcomes)
            async with self.database.direct_write(one_statement=True) as conn:
                claimed = await self._claim(conn, free)
        metrics.webhooks_delivered(latencies)
        if claimed:
            bodies = await self._bodies([c.job_id for c in claimed])
            for delivery in claimed:
                self._claimed += 1
                task = asyncio.create_task(self._deliver(delivery, bodies.get(delivery.job_id)))
                self._tasks.add(task)
                task.add_done_callback(self._done)
        if claimed or free <= 0:  # woken by new deliveries, answered POSTs and retries
            self._delay = 0.0 if len(claimed) == free > 0 else None  # a full claim: more may be due
            return
        async with self.database.direct_read() as conn:
            due = (await conn.fetch(webhooks.NEXT_DUE, {}))[0][0]
        self._delay = None if due is None else max(0.0, (due - utcnow()).total_seconds())

    async def _claim(self, conn: DirectConnection, free: int) -> list[Claimed]:
        if free <= 0:
            return []
        now = utcnow()
        lease_until = now + timedelta(seconds=self.settings.timeout) + CLAIM_MARGIN
        rows = await conn.fetch(webhooks.CLAIM_DUE, {"now": now, "limit": free, "lease_until": lease_until})
        return [Claimed(str(r[0]), str(r[1]), r[2], r[3], lease_until) for r in rows]

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("webhook delivery failed unexpectedly", exc_info=task.exception())

    async def wait(self, period: float) -> bool:
        """Until the earliest due delivery, or woken; at least ``ROUND_SECONDS`` after the
        last round (wake-ups meanwhile are served together by the next one)."""
        timeout = period if self._delay is None else min(period, self._delay)
        self._delay = None
        woken = await self.signal.wait_webhooks(timeout)
        rest = self._last_round + ROUND_SECONDS - time.monotonic()
        if rest > 0:
            await asyncio.sleep(rest)
        return woken

    async def stop(self) -> None:
        """POSTs under way are abandoned (their attempts are claimed again once leased
        out); the outcomes of those answered are written, if the database answers."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.client.close()
        if self._outcomes:
            try:
                await self._write_alone(self._outcomes)
            except Exception:
                log.warning("outcomes of %d webhook attempts not written at shutdown", len(self._outcomes))

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
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.settings.concurrency)
        try:
            async with self._slots:
                started = utcnow()
                if started + timedelta(seconds=self.settings.timeout) > delivery.lease_until:
                    return  # waited too long for a slot: left to the next claim, never made twice
                if body is None:  # the job went (pruned) between the claim and the read
                    answer = Answer(None, "refused: the job no longer exists", refused=True)
                else:
                    answer = await self.client.post(delivery.url, delivery.id, delivery.attempt, body)
        finally:
            self._claimed -= 1
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
        self._outcomes.append(Outcome(delivery, started, finished, answer, state, finished + backoff(delivery.attempt)))
        self.signal.webhooks_changed()  # the next round writes it (and claims into the free slot)

    async def _write(self, conn: DirectConnection, outcomes: list[Outcome]) -> list[float]:
        """The attempts and what they did to their deliveries; the delivered ones' seconds
        from the job's end."""
        if not outcomes:
            return []
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
        await conn.insert_many(webhooks.INSERT_ATTEMPTS, attempts)
        latencies: list[float] = []
        delivered = [o.delivery.id for o in outcomes if o.state == DeliveryStatus.DELIVERED]
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
        return latencies

    async def _write_alone(self, outcomes: list[Outcome]) -> list[float]:
        """Each outcome in a transaction of its own: one the database refuses is logged and
        left (its attempt is claimed again once its lease has passed)."""
        latencies: list[float] = []
        for outcome in outcomes:
            try:
                async with self.database.direct_write() as conn:
                    latencies += await self._write(conn, [outcome])
            except Exception as exc:
                if is_database_unavailable(exc):
                    raise
                log.exception("the outcome of webhook attempt %d not written", outcome.delivery.attempt)
        return latencies
