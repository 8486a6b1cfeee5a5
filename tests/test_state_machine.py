"""Random interleavings of every job state change (SPEC §5), checked against a model.

Hypothesis draws a sequence of operations by three node identities (``JobStore``
instances on one database): submit, claim, step done (an output or an error, one step
alone or several jobs' steps in one group commit, also by a node that lost the job),
crash, restart (``app.maintenance.orphans``), graceful release, lease
expiry, reap, renew, prune, and an operator's cancel and re-queue. After every
operation the ``jobs`` and ``job_steps`` tables must equal a small in-Python model,
which encodes what must never happen:

- an unfinished job is lost (every submitted job is still stored, or was finished and
  then pruned);
- a step is recorded twice, or a resumed job is told (with its claim) other steps than
  those committed, or continues anywhere but at the first missing position;
- a node writes for a claim it lost (it gets ``LeaseLost`` and writes nothing, also
  when it has claimed the same job again since), or two nodes hold a valid lease on one
  job;
- a job is claimed more than ``max_attempts`` times instead of failing with an error
  step that says why;
- a finished job keeps a lease.

``claim`` takes any pending job of the database, so each example runs on a database of
its own: a new migrated SQLite file, or one fresh PostgreSQL database for the whole
test, emptied at the start of each example.

Time is simulated: leases are an hour long, and ``expire`` moves chosen leases into the
past with an UPDATE, as if their node had stopped renewing them.

Operations are drawn with weights (a plain list rather than a ``RuleBasedStateMachine``,
whose uniform rule choice spent most steps on operations with nothing to do); their
arguments are small integers that pick among what exists when the operation runs, so
that a failing sequence shrinks and reads well.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, select, update

from app.clock import utcnow
from app.db import migrate
from app.db.engine import Database
from app.db.models import Job, JobStatus, JobStep
from app.db.signal import JobSignal
from app.jobs.actions import cancel_job, requeue_job
from app.jobs.requests import ContainerCatalog, JobRequest
from app.jobs.service import JobService
from app.jobs.transitions import JobStore
from app.jobs.values import CANCELLED_ERROR, ClaimedJob, LeaseLost, StepResult
from app.maintenance.orphans import take_back
from app.maintenance.pruner import prune_batch
from app.maintenance.reaper import reap
from tests.support import create_pg_database, drop_pg_database, migrated, node_settings

NODES = ("node-a", "node-b", "node-c")
CONTAINERS = ("c0", "c1", "c2")
MAX_ATTEMPTS = 3
#: Real time never expires a lease during a test; ``expire`` does.
LEASE_SECONDS = 3600.0
CLIENT = "127.0.0.1"

PENDING, RUNNING, SUCCESS, FAILED, CANCELLED = (
    JobStatus.PENDING,
    JobStatus.RUNNING,
    JobStatus.SUCCESS,
    JobStatus.FAILED,
    JobStatus.CANCELLED,
)
FINISHED = (SUCCESS, FAILED, CANCELLED)

# -- the operations -----------------------------------------------------------------

NODE = st.sampled_from(NODES)
#: Picks one of whatever exists when the operation runs (modulo its count).
PICK = st.integers(0, 99)
#: 1–3 jobs, each a chain of 1–3 containers.
CHAINS = st.lists(st.lists(st.sampled_from(CONTAINERS), min_size=1, max_size=3), min_size=1, max_size=3)


def _op(name: str, *args: st.SearchStrategy[Any]) -> st.SearchStrategy[tuple[Any, ...]]:
    return st.tuples(st.just(name), *args)


#: (operation, weight)
OPERATIONS = [
    (_op("submit", CHAINS), 2),
    (_op("claim", NODE, st.integers(1, 3)), 4),
    # One node goes on with one job it believes it runs, for a few steps (True: an error).
    (_op("step", PICK, st.lists(st.booleans(), min_size=1, max_size=3)), 3),
    # Every node takes one step of each job it believes it runs, in one transaction per node
    # (group commit); the n-th one fails.
    (_op("step_all", st.integers(0, 9)), 3),
    (_op("crash", PICK), 1),
    (_op("restart", PICK), 2),
    (_op("release", PICK), 1),
    # Leases run out for some running jobs, then maybe a node reaps.
    (_op("expire", st.lists(PICK, min_size=1, max_size=3), st.one_of(st.none(), NODE)), 3),
    (_op("reap", NODE), 1),
    (_op("renew", PICK), 1),
    # A cutoff in the future (True) or the past, and a batch size.
    (_op("prune", NODE, st.booleans(), st.sampled_from([1, 2, 500])), 1),
    # An operator acts on a job it applies to (True) or on any job.
    (_op("cancel", NODE, PICK, st.booleans()), 1),
    (_op("requeue", NODE, PICK, st.booleans()), 1),
]
#: ``one_of`` would pick each kind alike, whatever its weight.
OPERATION = st.sampled_from([op for op, weight in OPERATIONS for _ in range(weight)]).flatmap(lambda op: op)
SEQUENCES = st.tuples(_op("submit", CHAINS), st.lists(OPERATION, min_size=20, max_size=50)).map(
    lambda first_rest: [first_rest[0], *first_rest[1]]
)

#: About 15–20 s per backend (the pinned sequences below run first).
SETTINGS = settings(
    max_examples=50,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


# -- the model ----------------------------------------------------------------------


@dataclass
class ModelStep:
    container: str
    output: Any
    error: str | None
    attempt: int
    node: str


@dataclass
class ModelJob:
    id: str
    containers: list[str]
    input: dict[str, Any]
    #: The claim order: (run_after, seq).
    order: tuple[datetime, int]
    status: str = PENDING
    attempts: int = 0
    owner: str | None = None
    #: Which claim of this job is the current one (each claim adds one).
    claim: int = 0
    #: Its lease was moved into the past and not renewed since.
    expired: bool = False
    steps: list[ModelStep] = field(default_factory=list)
    pruned: bool = False

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


@dataclass
class Handle:
    """What a node believes it runs: one claim of one job, and where its chain is."""

    node: str
    job: ClaimedJob
    claim: int
    next_position: int


class Backend:
    """A database per example: a new SQLite file, or one PostgreSQL database emptied."""

    def __init__(self, kind: str, tmp_path: Path, pg_url: str | None = None) -> None:
        self.kind = kind
        self.tmp_path = tmp_path
        self.pg_url = pg_url
        self._files = itertools.count()

    async def open(self) -> tuple[Database, Path | None]:
        if self.kind == "sqlite":
            path = self.tmp_path / f"example-{next(self._files)}.db"
            database = Database(f"sqlite+aiosqlite:///{path}")
            await migrate.upgrade(database)
            return database, path
        assert self.pg_url is not None
        database = Database(self.pg_url, pool_size=2)
        async with database.write() as conn:
            await conn.execute(delete(JobStep))
            await conn.execute(delete(Job))
        return database, None


class Scenario:
    """One sequence of operations on one database, and the model it must match."""

    def __init__(self, database: Database) -> None:
        self.database = database
        # With a signal, as a node has one: its step commits take the one-statement path on
        # PostgreSQL (one outcome per batch), the general one otherwise.
        self.stores = {node: JobStore(database, node, LEASE_SECONDS, JobSignal(node)) for node in NODES}
        catalog = ContainerCatalog(
            node_settings(
                "sqlite+aiosqlite://",
                {
                    "containers": [{"id": c, "url": "http://127.0.0.1:9"} for c in CONTAINERS],
                },
            )
        )
        self.service = JobService(database, catalog, JobSignal())
        self.jobs: dict[str, ModelJob] = {}
        self.handles: list[Handle] = []
        self.counter = itertools.count(1)

    async def apply(self, op: tuple[Any, ...]) -> None:
        await getattr(self, f"op_{op[0]}")(*op[1:])

    # -- the model ------------------------------------------------------------------

    def live(self, *statuses: str) -> list[ModelJob]:
        """Stored jobs in claim order, optionally only those in ``statuses``."""
        jobs = (j for j in self.jobs.values() if not j.pruned and (not statuses or j.status in statuses))
        return sorted(jobs, key=lambda j: j.order)

    def holds(self, handle: Handle) -> bool:
        """The handle is its job's current claim, by a node that did not lose it."""
        job = self.jobs[handle.job.id]
        return not job.pruned and job.status == RUNNING and job.owner == handle.node and job.claim == handle.claim

    def owned_by(self, node: str, job_ids: list[str]) -> list[ModelJob]:
        """The jobs among ``job_ids`` whose current claim is ``node``'s."""
        jobs = (self.jobs[i] for i in job_ids)
        return [j for j in jobs if not j.pruned and j.status == RUNNING and j.owner == node]

    def held_ids(self, node: str) -> list[str]:
        """What the node's scheduler lists as running."""
        return list(dict.fromkeys(h.job.id for h in self.handles if h.node == node))

    def running_nodes(self) -> list[str]:
        """Nodes that believe they run something, or that hold a lease."""
        return sorted({h.node for h in self.handles} | {j.owner for j in self.live(RUNNING) if j.owner})

    def forget(self, node: str) -> None:
        self.handles = [h for h in self.handles if h.node != node]

    @staticmethod
    def finish(job: ModelJob, status: str) -> None:
        job.status, job.owner, job.expired = status, None, False

    @staticmethod
    def requeue(job: ModelJob) -> None:
        job.status, job.owner, job.expired = PENDING, None, False

    async def give_up(self, exhausted: list[ModelJob], node: str) -> None:
        """Jobs that used every attempt failed, on an error step at their first missing
        position that says why."""
        if not exhausted:
            return
        _, steps = await self.tables()
        errors = {(str(s.job_id), s.position): s.error for s in steps}
        for job in exhausted:
            position = len(job.steps)
            assert position < len(job.containers)
            error = errors.get((job.id, position))
            assert error is not None, f"{job.id} used all {job.attempts} attempts but did not fail"
            assert error.startswith(f"gave up after {job.attempts} attempts: "), error
            job.steps.append(ModelStep(job.containers[position], None, error, 0, node))
            self.finish(job, FAILED)

    # -- reading the database (Core selects) ----------------------------------------

    async def tables(self) -> tuple[list[Any], list[Any]]:
        async with self.database.read() as conn:
            jobs = (
                await conn.execute(
                    select(
                        Job.id,
                        Job.status,
                        Job.attempts,
                        Job.lease_owner,
                        Job.lease_expires_at,
                        Job.containers,
                        Job.input,
                        Job.stream,
                        Job.started_at,
                        Job.finished_at,
                    )
                )
            ).all()
            steps = (
                await conn.execute(
                    select(
                        JobStep.job_id,
                        JobStep.position,
                        JobStep.container,
                        JobStep.output,
                        JobStep.error,
                        JobStep.attempt,
                        JobStep.node,
                    )
                )
            ).all()
        return jobs, steps

    async def snapshot(self, job_id: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """Every column of a job and of its steps."""
        async with self.database.read() as conn:
            job = (await conn.execute(select(Job.__table__).where(Job.id == job_id))).all()
            steps = (
                await conn.execute(select(JobStep.__table__).where(JobStep.job_id == job_id).order_by(JobStep.position))
            ).all()
        return [tuple(r) for r in job], [tuple(r) for r in steps]

    async def order(self, job_ids: list[str]) -> dict[str, tuple[datetime, int]]:
        async with self.database.read() as conn:
            rows = await conn.execute(select(Job.id, Job.run_after, Job.seq).where(Job.id.in_(job_ids)))
            return {str(r.id): (r.run_after, r.seq) for r in rows}

    # -- operations -----------------------------------------------------------------

    async def op_submit(self, chains: list[list[str]]) -> None:
        requests = [JobRequest(containers=chain, data={"n": next(self.counter)}) for chain in chains]
        ids = [answer["id"] for answer in await self.service.submit(CLIENT, requests)]
        stored = await self.order(ids)
        assert set(stored) == set(ids), "an accepted job is not stored"
        for job_id, request in zip(ids, requests, strict=True):
            self.jobs[job_id] = ModelJob(job_id, request.containers, request.data, stored[job_id])

    async def op_claim(self, node: str, limit: int) -> None:
        """The oldest pending jobs, each claim an attempt."""
        expected = self.live(PENDING)[:limit]
        store = self.stores[node]
        claimed = await store.claim(limit)
        assert sorted(c.id for c in claimed) == sorted(j.id for j in expected), "not the oldest pending jobs"
        for c in claimed:
            job = self.jobs[c.id]
            job.status, job.owner, job.expired = RUNNING, node, False
            job.attempts += 1
            job.claim += 1
            assert job.attempts <= MAX_ATTEMPTS, f"claim {job.attempts} of a job allowed {MAX_ATTEMPTS}"
            assert (c.attempts, c.containers, c.input) == (job.attempts, job.containers, job.input)
            # A resumed job is told exactly the committed steps (with its claim), and goes on
            # after them.
            assert [(s.position, s.output, s.error) for s in c.steps] == [
                (p, s.output, s.error) for p, s in enumerate(job.steps)
            ]
            self.handles.append(Handle(node, c, job.claim, len(c.steps)))

    async def steps(self, node: str, planned: list[tuple[Handle, bool]]) -> list[bool]:
        """``node`` commits the next step of each of these claims (True: with an error), one
        alone or several in one transaction (group commit), or finds that it lost them.

        Returns, for each, whether the node goes on with the job."""
        store = self.stores[node]
        results, valid = [], []
        for handle, fail in planned:
            position = min(handle.next_position, len(handle.job.containers) - 1)
            output = None if fail else {"step": next(self.counter)}
            error = f"boom {next(self.counter)}" if fail else None
            results.append(StepResult(handle.job, position, utcnow(), output, error))
            valid.append(self.holds(handle))
        # A node that lost a claim writes nothing for that job: every column stays as it was.
        untouched = {r.job.id for r in results} - {r.job.id for r, ok in zip(results, valid, strict=True) if ok}
        before = {job_id: await self.snapshot(job_id) for job_id in untouched}
        if len(results) == 1:
            try:
                await store.record_step(results[0])
                answers: list[LeaseLost | None] = [None]
            except LeaseLost as lost:
                answers = [lost]
        else:
            answers = await store.record_steps(results)
        for job_id in untouched:
            assert await self.snapshot(job_id) == before[job_id], "a node that lost its claim wrote"

        goes_on = []
        for (handle, _), result, ok, answer in zip(planned, results, valid, answers, strict=True):
            job = self.jobs[handle.job.id]
            if not ok:
                assert isinstance(answer, LeaseLost), f"no LeaseLost for a lost claim of {job.id}"
                self.handles.remove(handle)  # the node abandons the job
                goes_on.append(False)
                continue
            assert answer is None, f"{job.id}: {answer!r}"
            assert result.position == handle.next_position == len(job.steps), "not the first missing step"
            job.steps.append(
                ModelStep(job.containers[result.position], result.output, result.error, job.attempts, node)
            )
            handle.next_position += 1
            if result.error is not None or result.position == len(job.containers) - 1:
                self.finish(job, FAILED if result.error is not None else SUCCESS)
                self.handles.remove(handle)  # the chain is done
                goes_on.append(False)
            else:
                job.expired = False  # each committed step extends the lease
                goes_on.append(True)
        return goes_on

    async def op_step(self, pick: int, fails: list[bool]) -> None:
        if not self.handles:
            return
        handle = self.handles[pick % len(self.handles)]
        for fail in fails:
            if not (await self.steps(handle.node, [(handle, fail)]))[0]:
                return

    async def op_step_all(self, fail: int) -> None:
        planned = [(handle, i == fail) for i, handle in enumerate(self.handles)]
        for node in NODES:
            if mine := [(h, f) for h, f in planned if h.node == node]:
                await self.steps(node, mine)

    async def op_crash(self, pick: int) -> None:
        """The process dies: it forgets what it ran; the database keeps its leases."""
        if nodes := self.running_nodes():
            self.forget(nodes[pick % len(nodes)])

    async def op_restart(self, pick: int) -> None:
        """A node crashes and starts again under the same identity: it takes back its
        orphans at once; the claims they lost still count."""
        if not (nodes := self.running_nodes()):
            return
        node = nodes[pick % len(nodes)]
        self.forget(node)
        orphans = [j for j in self.live(RUNNING) if j.owner == node]
        assert await take_back(self.database, node, MAX_ATTEMPTS) == len(orphans)
        exhausted = [j for j in orphans if j.attempts >= MAX_ATTEMPTS]
        for job in orphans:
            if job not in exhausted:
                self.requeue(job)
        await self.give_up(exhausted, node)

    async def op_release(self, pick: int) -> None:
        """Graceful shutdown: the node hands back what it was running, claims not counted."""
        if not (nodes := self.running_nodes()):
            return
        node = nodes[pick % len(nodes)]
        ids = self.held_ids(node)
        expected = self.owned_by(node, ids)
        assert await self.stores[node].release(ids) == len(expected)
        for job in expected:
            self.requeue(job)
            job.attempts -= 1
        self.forget(node)

    async def op_expire(self, picks: list[int], reaper: str | None) -> None:
        """Time passes for some running jobs: their lease runs out as if not renewed."""
        if running := self.live(RUNNING):
            chosen = {running[p % len(running)].id for p in picks}
            async with self.database.write() as conn:
                await conn.execute(
                    update(Job).where(Job.id.in_(chosen)).values(lease_expires_at=utcnow() - timedelta(hours=1))
                )
            for job_id in chosen:
                self.jobs[job_id].expired = True
        if reaper is not None:
            await self.op_reap(reaper)

    async def op_reap(self, node: str) -> None:
        """Expired leases only: back to pending, or failed once every attempt is used."""
        expired = [j for j in self.live(RUNNING) if j.expired]
        exhausted = [j for j in expired if j.attempts >= MAX_ATTEMPTS]
        requeued, failed = await reap(self.database, node, MAX_ATTEMPTS)
        assert (requeued, failed) == (len(expired) - len(exhausted), len(exhausted))
        for job in expired:
            if job not in exhausted:
                self.requeue(job)
        await self.give_up(exhausted, node)

    async def op_renew(self, pick: int) -> None:
        """Heartbeat: the leases a node still holds are extended, the others reported lost."""
        if not (nodes := sorted({h.node for h in self.handles})):
            return
        node = nodes[pick % len(nodes)]
        ids = self.held_ids(node)
        expected = self.owned_by(node, ids)
        assert await self.stores[node].renew(ids) == {j.id for j in expected}
        for job in expected:
            job.expired = False

    async def op_prune(self, node: str, future: bool, batch: int) -> None:
        """Finished jobs older than the cutoff go, oldest first; a past cutoff deletes none."""
        finished = self.live(*FINISHED)
        cutoff = utcnow() + (timedelta(days=1) if future else -timedelta(days=1))
        before = {str(r.id): r.finished_at for r in (await self.tables())[0]}
        deleted = await prune_batch(self.database, cutoff, batch=batch)
        assert deleted == (min(batch, len(finished)) if future else 0)
        after = {str(r.id) for r in (await self.tables())[0]}
        gone = [j for j in self.live() if j.id not in after]
        assert len(gone) == deleted
        assert all(j.finished for j in gone), "prune deleted an unfinished job"
        kept = [j for j in finished if j.id in after]
        if gone and kept:
            assert max(before[j.id] for j in gone) <= min(before[j.id] for j in kept)
        for job in gone:
            job.pruned = True

    async def op_cancel(self, node: str, pick: int, apt: bool) -> None:
        """An unfinished job ends ``cancelled`` on an error step for the container it had
        reached; a finished one stays as it is."""
        if not (jobs := (self.live(PENDING, RUNNING) if apt else []) or self.live()):
            return
        job = jobs[pick % len(jobs)]
        assert await cancel_job(self.database, job.id, node) == (not job.finished)
        if not job.finished:
            job.steps.append(ModelStep(job.containers[len(job.steps)], None, CANCELLED_ERROR, 0, node))
            self.finish(job, CANCELLED)

    async def op_requeue(self, node: str, pick: int, apt: bool) -> None:
        """A failed or cancelled job runs again from the step that failed (its error step
        goes, its attempts start again); any other job stays as it is."""
        if not (jobs := (self.live(FAILED, CANCELLED) if apt else []) or self.live()):
            return
        job = jobs[pick % len(jobs)]
        requeued = await requeue_job(self.database, job.id)
        assert requeued == (job.status in (FAILED, CANCELLED))
        if requeued:
            self.requeue(job)
            job.attempts = 0
            job.steps = [s for s in job.steps if s.error is None]
            job.order = (await self.order([job.id]))[job.id]

    # -- the database equals the model ----------------------------------------------

    async def check(self) -> None:
        job_rows, step_rows = await self.tables()
        now = utcnow()
        rows = {str(r.id): r for r in job_rows}
        live = {j.id: j for j in self.live()}
        # Nothing lost (pruned jobs were finished: checked by prune), nothing unknown.
        assert set(rows) == set(live), (set(live) - set(rows), set(rows) - set(live))
        for job_id, job in live.items():
            row = rows[job_id]
            assert (row.status, row.attempts, row.lease_owner) == (job.status, job.attempts, job.owner), job
            assert (row.containers, row.input, row.stream) == (job.containers, job.input, False)
            assert row.attempts <= MAX_ATTEMPTS
            if job.status == RUNNING:
                assert row.lease_owner is not None and row.lease_expires_at is not None
                assert (row.lease_expires_at < now) == job.expired
                assert row.started_at is not None
            else:
                assert row.lease_owner is None and row.lease_expires_at is None, "a lease outlived its claim"
            assert (row.finished_at is not None) == job.finished
            errors = [s.error for s in job.steps if s.error is not None]
            if job.status == SUCCESS:
                assert len(job.steps) == len(job.containers) and not errors
            elif job.status == FAILED:
                assert errors == [job.steps[-1].error]
            elif job.status == CANCELLED:
                assert errors == [CANCELLED_ERROR] == [job.steps[-1].error]
            else:
                assert len(job.steps) < len(job.containers) and not errors

        keys = Counter((str(s.job_id), s.position) for s in step_rows)
        assert all(n == 1 for n in keys.values()), "a step was recorded twice"
        actual = {
            (str(s.job_id), s.position): ModelStep(s.container, s.output, s.error, s.attempt, s.node) for s in step_rows
        }
        expected = {(j.id, p): s for j in live.values() for p, s in enumerate(j.steps)}
        assert actual == expected

        # At most one valid lease per job: its owner's current claim.
        valid = Counter(h.job.id for h in self.handles if self.holds(h))
        assert all(n == 1 for n in valid.values())
        for handle in self.handles:
            if self.holds(handle):
                assert rows[handle.job.id].lease_owner == handle.node


async def run_example(backend: Backend, ops: list[tuple[Any, ...]]) -> None:
    database, path = await backend.open()
    try:
        scenario = Scenario(database)
        for op in ops:
            await scenario.apply(op)
            await scenario.check()
    finally:
        await database.dispose()
        if path is not None:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)


@pytest.fixture
def backend(database_url: str, tmp_path: Path) -> Iterator[Backend]:
    """``database_url`` picks the backend (and skips, or fails in CI, when PostgreSQL is
    unavailable); the examples run on databases of their own."""
    if database_url.startswith("sqlite"):
        yield Backend("sqlite", tmp_path)
        return
    pg_url = asyncio.run(create_pg_database())
    try:
        asyncio.run(migrated(pg_url))
        yield Backend("postgresql", tmp_path, pg_url)
    finally:
        asyncio.run(drop_pg_database(pg_url))


#: Sequences that always run first: the bugs this test found, and a plain resume.
PINNED = [
    # A node whose lease expired claims the same job again: its first claim must not write.
    [
        ("submit", [["c0", "c1"]]),
        ("claim", "node-a", 1),
        ("expire", [0], "node-b"),
        ("claim", "node-a", 1),
        ("step", 0, [False]),
    ],
    # The same, both claims stepping in one group commit: only the current one writes.
    [
        ("submit", [["c0", "c1"]]),
        ("claim", "node-a", 1),
        ("expire", [0], "node-b"),
        ("claim", "node-a", 1),
        ("step_all", 9),
    ],
    # Cancelled, re-queued (attempts back to 0) and claimed again by the same node.
    [
        ("submit", [["c0", "c1"]]),
        ("claim", "node-a", 1),
        ("cancel", "node-b", 0, True),
        ("requeue", "node-b", 0, True),
        ("claim", "node-a", 1),
        ("step", 0, [False]),
    ],
    # A node that dies at once after each claim, restarting under the same identity:
    # the third lost claim fails the job.
    [("submit", [["c0"]]), *[("claim", "node-a", 1), ("restart", 0)] * 3, ("claim", "node-a", 1)],
    # Step 0 done on node-a, which crashes; node-b resumes at step 1, node-a's claim is lost.
    [
        ("submit", [["c0", "c1", "c2"]]),
        ("claim", "node-a", 1),
        ("step", 0, [False]),
        ("crash", 0),
        ("expire", [0], "node-c"),
        ("claim", "node-b", 1),
        ("step", 0, [False, False]),
    ],
]


def _pinned(test: Any) -> Any:
    for ops in reversed(PINNED):
        test = example(ops=ops)(test)
    return test


@SETTINGS
@_pinned
@given(ops=SEQUENCES)
def test_random_interleavings_keep_the_guarantees(backend: Backend, ops: list[tuple[Any, ...]]) -> None:
    asyncio.run(run_example(backend, ops))
