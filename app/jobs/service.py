"""What the API does with jobs: accept them durably and read them back per client."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select

from app.clock import utcnow
from app.db.batching import GroupCommit
from app.db.direct import DirectConnection, Row
from app.db.engine import Database
from app.db.errors import is_database_unavailable, refused_value
from app.db.models import JobStatus, SubscriptionStatus
from app.db.signal import JobSignal
from app.db.statements import reads
from app.db.statements.submits import INSERT_JOBS
from app.db.statements.subscriptions import INSERT_SUBSCRIPTIONS
from app.jobs.backlog_counts import BacklogCount
from app.jobs.handoff import NoClaims, SubmitClaims
from app.jobs.idempotency import Held, IdempotencyKey, KeyClaim, Submitted, claim_keys, submit_keyed
from app.jobs.live import EndedJob, LiveJobs
from app.jobs.requests import ContainerCatalog, JobRejected, JobRequest, with_subscriptions
from app.jobs.results import job_result, step_result
from app.jobs.rows import pending_row, refused_answer
from app.jobs.subscriptions import Quota, SubscriptionService, checked_schedule, new_subscription_row
from app.jobs.values import ClaimedJob

log = logging.getLogger("jobnode.jobs")

#: Ids per results statement: PostgreSQL takes at most 32,767 parameters.
RESULTS_CHUNK = 1024
#: A waiting read re-reads this often when no job of it ended on this node meanwhile
#: (jobs that another node runs).
RECHECK_SECONDS = 0.05


class UnknownCursor(LookupError):
    """``after`` names no job of this client."""


@dataclass(slots=True)
class Accepted:
    """A request's answers in order, and the rows of the jobs and subscriptions accepted."""

    answers: list[dict[str, Any]]
    jobs: list[dict[str, Any]]
    subscriptions: list[dict[str, Any]]


class _NothingStored(Exception):
    """Rolls back a group commit of replays alone: nothing to store, and the key rows its
    claim locked are let go without a commit (which would wait for the disk)."""


@dataclass(slots=True)
class NewJobs:
    """One submit's rows in the submits' group commit, and its ``Idempotency-Key``."""

    rows: list[dict[str, Any]]
    key: KeyClaim | None = None


class JobService:
    def __init__(
        self,
        database: Database,
        catalog: ContainerCatalog,
        signal: JobSignal,
        live: LiveJobs | None = None,
        claims: SubmitClaims | None = None,
        subscriptions: SubscriptionService | None = None,
        idempotency_ttl: timedelta = timedelta(hours=24),
    ) -> None:
        self.database = database
        self.catalog = catalog
        self.signal = signal
        self.live = live or LiveJobs()
        #: This process's scheduler, which takes new jobs in their INSERT when it can.
        self.claims = claims or NoClaims()
        self.subscriptions = subscriptions or SubscriptionService(database, signal, max_active=1000)
        #: How long a submit's ``Idempotency-Key`` is kept (``retention.idempotency_hours``).
        self.idempotency_ttl = idempotency_ttl
        self._insert: GroupCommit[NewJobs, Held | None] = GroupCommit(self._insert_batches)
        self._read: GroupCommit[list[str], list[tuple[str, Row]]] = GroupCommit(self._read_batches)
        #: The two group commits' flushes, each one at a time, keep a connection each.
        self._insert_lane = database.lane()
        self._read_lane = database.lane()
        self._unfinished = BacklogCount(self._count_unfinished, lambda counts: sum(counts.values()))

    async def submit(self, client: str, requests: Sequence[JobRequest | JobRejected]) -> list[dict[str, Any]]:
        """Check each request, store the accepted ones in one transaction, answer in order.

        Ids are returned only after the commit: an id a client holds is a stored job.
        """
        now = utcnow()
        if with_subscriptions(requests):
            return await self._submit_with_subscriptions(client, requests, now)
        accepted = self.checked(client, requests, now)
        answers, rows = accepted.answers, accepted.jobs
        if rows:
            try:
                await self._insert(NewJobs(rows))
            except Exception as exc:
                await self._insert_alone(rows, answers, exc)
        return answers

    async def submit_keyed(
        self, client: str, requests: Sequence[JobRequest | JobRejected], key: IdempotencyKey, single: bool
    ) -> Submitted:
        """``submit`` under an ``Idempotency-Key`` (SPEC §8): ``app.jobs.idempotency``."""
        return await submit_keyed(self, client, requests, key, single, self.idempotency_ttl)

    async def insert_keyed(self, rows: list[dict[str, Any]], key: KeyClaim) -> Held | None:
        """Store ``rows`` under ``key`` in the submits' group commit: None once committed,
        else who holds the key (nothing stored)."""
        return await self._insert(NewJobs(rows, key))

    async def _submit_with_subscriptions(
        self, client: str, requests: Sequence[JobRequest | JobRejected], now: datetime
    ) -> list[dict[str, Any]]:
        """A request with subscriptions (SPEC §7): each checked as a job, then its schedule
        and the client's quota of active ones; the accepted jobs and subscriptions are
        committed in one transaction, without the group commit (their rows differ) and
        without claiming (the claim loop and the ticker are woken). The client's active
        subscriptions are counted in that transaction, under its quota lock."""
        async with self.database.direct_write() as conn:
            accepted = await self.accept(conn, client, requests, now)
            await self.store(conn, accepted)
        self.announce(accepted)
        return accepted.answers

    async def accept(
        self, conn: DirectConnection, client: str, requests: Sequence[JobRequest | JobRejected], now: datetime
    ) -> Accepted:
        """Check each request in the transaction ``conn`` that will store them: the rows
        of the accepted ones and every answer, in order. With subscriptions, the client's
        quota is counted (and, on PostgreSQL, locked until the transaction ends)."""
        quota = await self.subscriptions.quota(conn, client) if with_subscriptions(requests) else None
        return self.checked(client, requests, now, quota)

    def checked(
        self,
        client: str,
        requests: Sequence[JobRequest | JobRejected],
        now: datetime,
        quota: Quota | None = None,
    ) -> Accepted:
        """``accept`` without a transaction: requests without subscriptions need none."""
        accepted = Accepted([], [], [])
        for request in requests:
            try:
                if isinstance(request, JobRejected):
                    raise request
                self.catalog.check(request, client)
                if request.subscription is None:
                    row = pending_row(request, client, now)
                    accepted.jobs.append(row)
                else:
                    assert quota is not None
                    schedule = checked_schedule(request.subscription, now)
                    quota.take()
                    row = new_subscription_row(request, schedule, client, now)
                    accepted.subscriptions.append(row)
            except JobRejected as rejected:
                accepted.answers.append(rejected.body())
                continue
            accepted.answers.append({"id": row["id"]})
        return accepted

    async def store(self, conn: DirectConnection, accepted: Accepted) -> None:
        """Insert what ``accept`` accepted (announced to other nodes at commit)."""
        if accepted.jobs:
            await conn.insert_many(INSERT_JOBS, accepted.jobs, notify=self.signal.notification)
        if accepted.subscriptions:
            await conn.insert_many(INSERT_SUBSCRIPTIONS, accepted.subscriptions, notify=self.subscriptions.notification)

    def announce(self, accepted: Accepted) -> None:
        """After the commit: wake this node's claim loop and ticker."""
        if accepted.jobs:
            self.signal.notify()
        if accepted.subscriptions:
            self.signal.subscriptions_changed()

    async def _insert_alone(self, rows: list[dict[str, Any]], answers: list[dict[str, Any]], exc: Exception) -> None:
        """The INSERT of a request's jobs failed. A job the database refused (bad data that
        passed the checks of ``app.jobs.requests``) is answered ``Invalid job request``
        like any invalid one; a batch's other jobs are stored each on its own (one bad item
        does not fail the batch), and answered in place. A lost database, or a failure
        that is not about the data, fails the request as before (503 or 500)."""
        if is_database_unavailable(exc):
            raise exc
        accepted = [i for i, answer in enumerate(answers) if "id" in answer]
        if len(rows) == 1:
            if refused_value(exc) is None:
                raise exc
            outcomes: list[Held | BaseException | None] = [exc]
        else:
            outcomes = await asyncio.gather(*(self._insert(NewJobs([row])) for row in rows), return_exceptions=True)
        for i, outcome in zip(accepted, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                answers[i] = refused_answer(answers[i]["id"], outcome)

    async def _insert_batches(self, batches: list[NewJobs]) -> list[Held | None]:
        """Concurrent submits commit together: one INSERT, one commit. The first jobs are
        claimed in it when this node's scheduler can run them now (``app.jobs.handoff``);
        the others are left ``pending`` and announced (NOTIFY in the same statement).

        Keyed submits' keys are claimed first, in the same transaction (``claim_keys``):
        only the jobs of the keys it takes are stored (and may be claimed like any others:
        the key, the jobs and their claim commit or roll back together); a submit whose
        key is another's is answered its holder. Without keys it is one statement (on
        SQLite, one call to the hot writer's thread: ``Database.write_transaction``); with
        keys it runs on the event loop, since the slots it reserves depend on the keys taken.

        The claimed ones start here, in the flush's own task, whichever submits went away."""
        keyed = [batch.key for batch in batches if batch.key is not None]
        outcomes: list[Held | None] = [None] * len(batches)
        rows: list[dict[str, Any]] = []
        claimed = 0
        unclaimed: dict[str, Any] = {}
        try:
            if keyed:
                async with self.database.direct_write(lane=self._insert_lane) as conn:
                    now = utcnow()
                    held = iter(await claim_keys(conn, self.database, keyed, now, now + self.idempotency_ttl))
                    outcomes = [None if batch.key is None else next(held) for batch in batches]
                    if None not in outcomes:
                        raise _NothingStored
                    rows = [
                        row
                        for batch, held_by in zip(batches, outcomes, strict=True)
                        if held_by is None
                        for row in batch.rows
                    ]
                    claimed, unclaimed = self._claim_first(rows)
                    left = claimed < len(rows)
                    if rows:
                        await conn.insert_many(INSERT_JOBS, rows, notify=self.signal.notification if left else None)
            else:
                rows = [row for batch in batches for row in batch.rows]
                claimed, unclaimed = self._claim_first(rows)
                left = claimed < len(rows)
                notify = self.signal.notification if left else None
                await self.database.write_transaction(
                    lambda conn: conn.insert_many(INSERT_JOBS, rows, notify=notify),
                    one_statement=True,
                    lane=self._insert_lane,
                )
        except _NothingStored:
            return outcomes
        except BaseException:
            self.claims.unreserve(claimed)
            # The rows go back as they came: ``GroupCommit`` may flush them again, each on
            # its own, and a row must not be stored claimed without a reservation (its job
            # would sit ``running`` here, run by nobody, until its lease expired).
            for row in rows[:claimed]:
                row.update(unclaimed)
            raise
        if claimed:
            self.claims.start_claimed([ClaimedJob.inserted(row) for row in rows[:claimed]], claimed)
        if left:
            self.signal.notify()
        return outcomes

    def _claim_first(self, rows: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
        """Reserve this node's free slots for the first ``rows`` and mark them claimed:
        how many, and the columns that mark them back ``pending`` if the INSERT fails."""
        claimed = self.claims.reserve(len(rows)) if rows else 0
        if not claimed:
            return 0, {}
        columns = self.claims.claimed_columns(utcnow())
        unclaimed = {key: rows[0][key] for key in columns}  # the same in every new row
        for row in rows[:claimed]:
            row.update(columns)
        return claimed, unclaimed

    async def results(
        self, client: str, job_ids: Sequence[str], intermediate: bool, wait: float | None = 0.0, hold: float = 0.0
    ) -> list[dict[str, Any]]:
        """Results in the order asked; ids that are not this client's are left out.

        With ``wait`` (seconds), answers once none of the jobs is running any more, or when
        the time is up: one request instead of a poll every few milliseconds. Without it
        (``None``), a read whose unfinished jobs all run on this node is held for up to
        ``hold`` seconds the same way: a client polling in a tight loop gets the result the
        moment the job ends, and stops taking the event loop from the jobs it waits for.
        """
        loop = asyncio.get_running_loop()
        deadline: float | None = None if wait is None else loop.time() + wait
        ended: dict[str, EndedJob] = {}  # this client's jobs, ended here while it waited
        while True:
            answers = await self._results(client, job_ids, intermediate, ended)
            running = [answer["id"] for answer in answers if answer["status"] == "running"]
            if deadline is None:  # the first read without a wait: hold it?
                held = running and all(self.live.get(job_id, client) is not None for job_id in running)
                deadline = loop.time() + (hold if held else 0.0)
            remaining = deadline - loop.time()
            if not running or remaining <= 0:
                return answers
            job = await self.live.wait_ended(running, min(remaining, RECHECK_SECONDS))
            if job is not None:
                ended[job.id] = job

    async def _results(
        self, client: str, job_ids: Sequence[str], intermediate: bool, ended: dict[str, EndedJob]
    ) -> list[dict[str, Any]]:
        """Jobs this node is running, or ended for a waiting read, are answered without the
        database (``app.jobs.live``)."""
        status: dict[str, str] = {}
        steps: dict[str, list[dict[str, Any]]] = defaultdict(list)
        unread: list[str] = []
        for job_id in dict.fromkeys(job_ids):
            live = ended.get(job_id) or self.live.get(job_id, client)
            if live is None:
                unread.append(job_id)
            else:
                status[job_id] = live.status if isinstance(live, EndedJob) else JobStatus.RUNNING
                steps[job_id] = live.steps
        if unread:
            await self._read_results(client, unread, status, steps)
            subscriptions = [job_id for job_id in unread if job_id not in status]
            if subscriptions:
                await self._subscription_results(client, subscriptions, status, steps)
        return [
            job_result(job_id, status[job_id], steps[job_id], intermediate) for job_id in job_ids if job_id in status
        ]

    async def _read_results(
        self, client: str, job_ids: list[str], status: dict[str, str], steps: dict[str, list[dict[str, Any]]]
    ) -> None:
        for job_id, (_, owner, job_status, container, output, error) in await self._read(job_ids):
            if owner != client:
                continue
            status[job_id] = job_status
            if container is not None:
                steps[job_id].append(step_result(container, output, error))

    async def _subscription_results(
        self, client: str, ids: list[str], status: dict[str, str], steps: dict[str, list[dict[str, Any]]]
    ) -> None:
        """Subscription ids (SPEC §7): running while intervals remain, then the result of
        the latest interval's job; cancelled before any ran: failed, ``cancelled``."""
        latest = await self.subscriptions.latest_jobs(client, ids)
        jobs = [job for _, _, job in latest.values() if job is not None]
        job_status: dict[str, str] = {}
        job_steps: dict[str, list[dict[str, Any]]] = defaultdict(list)
        if jobs:
            await self._read_results(client, jobs, job_status, job_steps)
        for subscription, (state, containers, job) in latest.items():
            if job is None:
                if state == SubscriptionStatus.ACTIVE:
                    status[subscription] = JobStatus.RUNNING
                else:
                    status[subscription] = JobStatus.FAILED
                    steps[subscription] = [step_result(containers[0], None, "cancelled")]
            elif state == SubscriptionStatus.ACTIVE:
                status[subscription] = JobStatus.RUNNING
                steps[subscription] = job_steps[job]
            else:
                status[subscription] = job_status.get(job, JobStatus.RUNNING)
                steps[subscription] = job_steps[job]

    async def _read_batches(self, batches: list[list[str]]) -> list[list[tuple[str, Row]] | BaseException]:
        """Concurrent reads share one statement (one snapshot): clients waiting for their
        jobs all ask at once, and a statement per read was a tenth of the node's CPU. Each
        read starts after it was asked, so it sees every job committed before."""
        wanted = list(dict.fromkeys(job_id for ids in batches for job_id in ids))
        rows: dict[str, list[Row]] = defaultdict(list)
        async with self.database.direct_read(self._read_lane) as conn:
            # A job and its steps always come in one statement (one snapshot).
            for chunk in range(0, len(wanted), RESULTS_CHUNK):
                for row in await conn.fetch(reads.RESULTS, {"ids": wanted[chunk : chunk + RESULTS_CHUNK]}):
                    rows[str(row[0])].append(row)
        return [[(job_id, row) for job_id in ids for row in rows.get(job_id, ())] for ids in batches]

    async def job_ids(self, client: str, pending: bool | None, after: str | None, limit: int | None) -> list[str]:
        params: dict[str, Any] = {"client": client, "limit": limit}
        async with self.database.direct_read() as conn:
            if after is not None:
                cursor = await conn.fetch(reads.CLIENT_JOB_SEQ, {"client": client, "id": after})
                if not cursor:
                    raise UnknownCursor(after)
                params["after_seq"] = cursor[0][0]
            statement = reads.client_job_ids(pending, after is not None, limit is not None)
            return [str(job_id) for (job_id,) in await conn.fetch(statement, params)]

    async def pending_counts(self) -> dict[str, int]:
        """Unfinished jobs by source (``/info``); with a large backlog up to a second old
        (``app.jobs.backlog_counts``)."""
        return await self._unfinished()

    async def _count_unfinished(self) -> dict[str, int]:
        async with self.database.direct_read() as conn:
            counts: dict[str, int] = dict(await conn.fetch(reads.UNFINISHED_COUNTS, {}))  # type: ignore[arg-type]
        return {"offchain": counts.get("offchain", 0), "onchain": counts.get("onchain", 0)}

    async def ping(self) -> None:
        async with self.database.read() as conn:
            await conn.execute(select(1))
