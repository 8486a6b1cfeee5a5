"""The running node's changes of a job's state (SPEC §5): claim, step commits, leases.

pending → running (claim) → success | failed, and back to pending when this node hands
its jobs back. The other changes have homes of their own: expired leases and a restarted
node's orphans in ``app.maintenance``, an operator's cancel and re-queue in
``app.jobs.actions``. Each write that a running job makes is guarded by
``status = 'running' AND lease_owner = <this node>`` and checks its row count, so a node
that lost its lease can no longer write anything for that job. The statements are named in
``app.db.statements.claims``; the values passed around are in ``app.jobs.values``.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any

from app.clock import utcnow
from app.db.direct import DirectConnection, Row
from app.db.engine import Database
from app.db.models import JobStatus
from app.db.signal import ENDED_CHANNEL, ENDED_PER_NOTIFY, JobSignal
from app.db.statements import claims, retries
from app.db.statements.submits import INSERT_JOBS
from app.db.statements.webhooks import INSERT_DELIVERIES
from app.jobs.outbox import delivery_row
from app.jobs.requests import JobRequest
from app.jobs.rows import new_job_id, pending_row
from app.jobs.values import ClaimedJob, CommittedStep, LeaseLost, StepResult, StepRetry

#: How often a claim on PostgreSQL reads the claim index from its start while a backlog
#: is drained after a cursor (``JobStore.claim``): a job never claimed that lies behind the
#: cursor (stored by a node whose clock is behind, or skipped while another node's failed
#: claim held it locked) waits at most this much longer.
FULL_CLAIM_SECONDS = 1.0
#: The most jobs one claim takes on PostgreSQL; a node with more capacity free claims
#: again at once. A claim's answer waits for the node's event loop, busy with the jobs the
#: claims before it started, and a claim of more jobs starts a longer burst of them and
#: takes longer itself: draining a backlog with 64 jobs in flight and 14–15 M stored, claims
#: of up to 16 jobs were 98.5–99.3 % within 5 ms against 93.9–96.2 % for claims of all
#: the capacity free (about 28), for about as many jobs a second and 5 % more CPU a job.
#: Not on SQLite, whose claims take turns with the step commits in its one writer: there
#: the same cap halved a drain's rate.
MAX_CLAIM_POSTGRESQL = 16


class JobStore:
    """The scheduler's side of the database, for one node identity."""

    def __init__(self, database: Database, node_id: str, lease_seconds: float, signal: JobSignal | None = None) -> None:
        self.database = database
        self.node_id = node_id
        self.lease = timedelta(seconds=lease_seconds)
        #: Announces ended jobs to reads waiting in other processes (PostgreSQL).
        self.signal = signal
        #: Where the last claim that took all it asked for stopped in the claim index
        #: (``run_after``, ``seq``; PostgreSQL): the next claim starts after it (``claim``).
        self._claim_cursor: tuple[datetime, int] | None = None
        self._last_full_claim = 0.0
        self.full_claim_seconds = FULL_CLAIM_SECONDS
        #: The claim loop's statements and the step commits' flushes, each one at a time,
        #: keep a connection each.
        self._claim_lane = database.lane()
        self._commit_lane = database.lane()
        #: The most jobs one claim asks for (None: all the capacity free).
        self.max_claim = MAX_CLAIM_POSTGRESQL if database.is_postgresql else None

    def claimed_columns(self, now: datetime) -> dict[str, Any]:
        """A new job's columns when its INSERT is its first claim (``app.jobs.handoff``),
        as ``CLAIM`` would have set them."""
        return {
            "status": JobStatus.RUNNING,
            "attempts": 1,
            "lease_owner": self.node_id,
            "lease_expires_at": now + self.lease,
            "started_at": now,
        }

    async def open_stream(self, client: str, request: JobRequest) -> ClaimedJob:
        """Store a job that this node runs at once, streaming its body (``app.jobs.stream``):
        running and leased here from its INSERT, marked ``stream`` (never run again)."""
        now = utcnow()
        row = {**pending_row(request, client, now), **self.claimed_columns(now), "stream": True}
        await self.database.write_transaction(lambda conn: conn.insert_many(INSERT_JOBS, [row]), one_statement=True)
        return ClaimedJob(row["id"], request.containers, request.data, request.requires_proof, 1, now)

    def claim_params(self, limit: int, now: datetime) -> dict[str, Any]:
        return {"now": now, "limit": limit, "node": self.node_id, "lease_until": now + self.lease}

    async def claim(self, limit: int) -> list[ClaimedJob]:
        """Take up to ``limit`` runnable jobs in one statement, with their committed steps.

        The candidates are locked in a CTE (``FOR UPDATE SKIP LOCKED`` on PostgreSQL) so
        that the LIMIT is applied once; on SQLite the writer's ``BEGIN IMMEDIATE``
        serialises claims instead. The claim is one statement (one round trip on
        PostgreSQL); it also tells which jobs have committed steps or retried ones, and only
        those (resumed jobs) cost a second read, so that they continue where they stopped.

        Its commit does not wait for the disk (``durable=False``): a claim lost in a crash of
        the database leaves its jobs pending, to be claimed again, as a node's crash does
        (and the step commit that follows, flushed, makes the claim durable with it). The
        claim's WAL flush was most of its time at p99 (a one-row commit here: 0.4 ms p50,
        5.8 ms p99).

        While a backlog drains on PostgreSQL (each claim took all it asked for), the next
        claim starts after the last job taken (``claims.CLAIM_AFTER``): the claim index
        keeps the entry of every job claimed since the last VACUUM, which a claim from the
        index's start walks past, so that without the cursor each claim cost more than the
        last until the next VACUUM. The jobs pending again behind the cursor (handed back,
        rescued, retried, re-queued) are read from an index of their own, so that the
        oldest are still taken first; a claim that took less than it asked for (the rest is
        claimed from the start at once), and one every ``full_claim_seconds``, read from the
        start again, for any other job behind it.
        """
        after = self._cursor_due()
        rows = await self._claim_rows(limit, after)
        if after is not None and len(rows) < limit:
            # Short: no job after the cursor is left free (the backlog ended, or other
            # nodes' claims under way hold the rest). The rest from the index's start,
            # where a job never claimed may lie behind the cursor.
            self._last_full_claim = time.monotonic()
            rows += await self._claim_rows(limit - len(rows), None)
        took_all = bool(rows) and len(rows) == limit and self.database.is_postgresql
        self._claim_cursor = max((row[5], row[7]) for row in rows) if took_all else None
        resumed = [row[0] for row in rows if row[-1]]
        retried = [row[0] for row in rows if row[-2]]
        steps: dict[str, list[CommittedStep]] = {}
        step_retries: dict[str, dict[int, int]] = {}
        if resumed or retried:
            async with self.database.direct_read(self._claim_lane) as conn:
                if resumed:
                    for job_id, position, output, error in await conn.fetch(claims.COMMITTED_STEPS, {"ids": resumed}):
                        steps.setdefault(str(job_id), []).append(CommittedStep(position, output, error))
                if retried:
                    for job_id, position, count in await conn.fetch(retries.STEP_ATTEMPT_COUNTS, {"ids": retried}):
                        step_retries.setdefault(str(job_id), {})[position] = count
        return [
            ClaimedJob(
                str(job_id),
                containers,
                data,
                requires_proof,
                attempts,
                run_after,
                tuple(steps.get(str(job_id), ())),
                client,
                step_retries.get(str(job_id), {}),
            )
            for job_id, containers, data, requires_proof, attempts, run_after, client, *_ in rows
        ]

    def _cursor_due(self) -> dict[str, Any] | None:
        """The cursor's parameters when the next claim starts after it (PostgreSQL); None
        for a claim from the index's start, whose time is noted."""
        if not self.database.is_postgresql:
            return None
        if self._claim_cursor is not None and time.monotonic() - self._last_full_claim < self.full_claim_seconds:
            return dict(zip(("after_run_after", "after_seq"), self._claim_cursor, strict=True))
        self._last_full_claim = time.monotonic()
        return None

    async def _claim_rows(self, limit: int, after: dict[str, Any] | None) -> list[Row]:
        """One claim statement: from the claim index's start, or ``after`` the cursor."""
        statement = claims.CLAIM.pick(self.database) if after is None else claims.CLAIM_AFTER

        async def claim(conn: DirectConnection) -> list[Row]:
            return await conn.fetch(statement, {**self.claim_params(limit, utcnow()), **(after or {})})

        return await self.database.write_transaction(claim, one_statement=True, durable=False, lane=self._claim_lane)

    async def record_steps(self, results: list[StepResult]) -> list[LeaseLost | None]:
        """Commit the steps of several jobs in one transaction (group commit).

        Each job finishes in the same transaction when its chain ends with that step. A step
        of a job this node no longer holds writes nothing and answers ``LeaseLost``. On
        PostgreSQL a batch whose steps all end their jobs alike (or all go on) is one
        statement (``_record_steps_at_once``): an idle job's commit in one round trip.
        """
        now = utcnow()
        if self.database.is_postgresql and self.signal is not None:
            outcomes = {result.ends_job_as for result in results}
            if len(outcomes) == 1 and len(results) <= ENDED_PER_NOTIFY:
                return await self._record_steps_at_once(results, outcomes.pop(), now)
        held, deliveries = await self.database.write_transaction(
            lambda conn: self._commit_steps(conn, results, now), lane=self._commit_lane
        )
        if deliveries and self.signal is not None:
            self.signal.webhooks_changed()  # this node's delivery service, at once
        return _answers(results, held)

    async def _commit_steps(
        self, conn: DirectConnection, results: list[StepResult], now: datetime
    ) -> tuple[set[tuple[str, int, datetime]], list[dict[str, Any]]]:
        """``record_steps``' transaction: the claims still held, and the webhook deliveries
        it stored. The claims written for, not only the jobs: a node holding a stale and a
        current claim of one job (it lost the job and claimed it again) writes for the
        current one."""
        held: set[tuple[str, int, datetime]] = set()
        deliveries: list[dict[str, Any]] = []
        for outcome in {result.ends_job_as for result in results}:
            owned = [result.claim for result in results if result.ends_job_as == outcome]
            params = {"claims": owned, "ids": [claim[0] for claim in owned], "node": self.node_id}
            if outcome is None:
                rows = await conn.fetch(
                    claims.EXTEND_OWNED.pick(self.database), {**params, "lease_until": now + self.lease}
                )
            else:
                rows = await conn.fetch(
                    claims.FINISH_OWNED.pick(self.database), {**params, "outcome": outcome, "now": now}
                )
                deliveries += [delivery_row(str(row[0]), row[3], now) for row in rows if row[3] is not None]
            held.update((str(row[0]), row[1], row[2]) for row in rows)
        steps = [self._step_row(r) for r in results if r.claim in held]
        ended = [r.job.id for r in results if r.ends_job_as is not None and r.claim in held]
        notifications = self.signal.ended_notifications(ended) if self.signal else []
        if steps:  # the first notification rides in the INSERT statement
            notify = notifications.pop(0) if notifications else None
            await conn.insert_many(claims.INSERT_STEPS, steps, notify=notify)
        for notification in notifications:
            await conn.notify(*notification)
        if deliveries:  # in the transaction that ends their jobs
            await conn.insert_many(INSERT_DELIVERIES, deliveries)
        return held, deliveries

    def _step_row(self, result: StepResult) -> dict[str, Any]:
        """The ``job_steps`` row of a step (``claims.INSERT_STEPS``' columns)."""
        return {**_step_values(result), "node": self.node_id}

    async def _record_steps_at_once(
        self, results: list[StepResult], outcome: str | None, now: datetime
    ) -> list[LeaseLost | None]:
        """``record_steps`` in one statement (``claims.FINISH_STEPS``/``EXTEND_STEPS``), for
        steps that all end their jobs as ``outcome`` or all go on (PostgreSQL): one round
        trip, its own transaction (a node with no ``signal`` announces nothing: the general
        path). Each ended job has a delivery id ready, used only if the
        job has a webhook."""
        steps = [{**_step_values(r), "run_after": r.job.queued_at} for r in results]
        if outcome is not None:
            for step in steps:
                step["delivery_id"] = new_job_id()
        params: dict[str, Any] = {"steps": steps, "ids": [r.job.id for r in results], "node": self.node_id}
        if outcome is None:
            statement = claims.EXTEND_STEPS
            params["lease_until"] = now + self.lease
        else:
            statement = claims.FINISH_STEPS
            assert self.signal is not None
            params.update(
                outcome=outcome,
                now=now,
                channel=ENDED_CHANNEL,
                sender=self.signal.sender,
            )
        async with self.database.direct_write(one_statement=True, lane=self._commit_lane) as conn:
            written = await conn.fetch(statement, params)
        held = {(str(row[0]), row[1], row[2]) for row in written}
        if outcome is not None and self.signal is not None and any(row[3] is not None for row in written):
            self.signal.webhooks_changed()  # this node's delivery service, at once
        return _answers(results, held)

    async def record_retry(self, retry: StepRetry) -> None:
        """Hand the job back to ``pending`` until ``retry.retry_at``, keeping the failed
        attempt: one transaction, guarded by the claim (``LeaseLost`` when no longer held)."""
        job = retry.job
        params = {"claims": [(job.id, job.attempts, job.queued_at)], "node": self.node_id, "retry_at": retry.retry_at}
        row = {
            "job_id": retry.job.id,
            "position": retry.position,
            "container": retry.job.containers[retry.position],
            "attempt": retry.attempt,
            "error": retry.error,
            "reason": retry.reason,
            "node": self.node_id,
            "started_at": retry.started_at,
            "finished_at": retry.finished_at,
            "retry_at": retry.retry_at,
        }

        async def retry_owned(conn: DirectConnection) -> None:
            if not await conn.fetch(retries.RETRY_OWNED, params):
                raise LeaseLost(retry.job.id)
            await conn.insert_many(retries.INSERT_STEP_ATTEMPTS, [row])

        await self.database.write_transaction(retry_owned)

    async def next_due(self) -> datetime | None:
        """When the earliest pending job is due (``retries.NEXT_DUE``)."""
        async with self.database.direct_read(self._claim_lane) as conn:
            rows = await conn.fetch(retries.NEXT_DUE, {})
        return rows[0][0] if rows else None

    async def record_step(self, result: StepResult) -> None:
        (lost,) = await self.record_steps([result])
        if lost is not None:
            raise lost

    async def renew(self, job_ids: list[str]) -> set[str]:
        """Heartbeat: extend the leases of the jobs this node is still running.

        Returns the ids still held; a job missing from it was cancelled or taken over,
        and its running step should be abandoned.
        """
        if not job_ids:
            return set()
        params = {"ids": job_ids, "node": self.node_id, "lease_until": utcnow() + self.lease}
        statement = claims.RENEW.pick(self.database)
        rows = await self.database.write_transaction(lambda conn: conn.fetch(statement, params), one_statement=True)
        return {str(job_id) for (job_id,) in rows}

    async def release(self, job_ids: list[str]) -> int:
        """Graceful hand-back: the jobs go back to pending, the claim not counted."""
        if not job_ids:
            return 0
        async with self.database.write() as conn:
            return (await claims.RELEASE.run(conn, {"ids": job_ids, "node": self.node_id})).rowcount


def _answers(results: list[StepResult], held: set[tuple[str, int, datetime]]) -> list[LeaseLost | None]:
    """A step commit's answer per step: ``LeaseLost`` for a claim it found no longer held."""
    return [None if r.claim in held else LeaseLost(r.job.id) for r in results]


def _step_values(result: StepResult) -> dict[str, Any]:
    """A step's own values: its row without ``node``, which the one-statement step commit
    takes once as a parameter, not once per step."""
    return {
        "job_id": result.job.id,
        "position": result.position,
        "container": result.job.containers[result.position],
        "output": result.output,
        "error": result.error,
        "attempt": result.job.attempts,
        "started_at": result.started_at,
        "finished_at": result.finished_at,
    }
