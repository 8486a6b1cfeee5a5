"""The jobs this node is running, readable without a round trip to the database.

A client polls its job every few milliseconds while it runs; most of those polls find
it still running, on the node that runs it. The node that holds a job's lease knows
its state as well as the database does: it is ``running``, with the steps this node
committed (a job enters here after its claim committed, and each step after its own
commit; it leaves after its last commit). Jobs not here — pending, finished, or run by
another node — are read from the database.

A client may also wait for its jobs (``GET /api/jobs?id=…&wait=``): the node wakes it
when it ends one of them, or when another node or worker announces that it did
(PostgreSQL NOTIFY, heard only while something here waits for a job not running here:
``hear_elsewhere``), and otherwise re-reads every ``RECHECK_SECONDS``.

Event streams (``app.jobs.events``) listen to single jobs: a listener hears each step the
moment it is committed here, the job's end, and a hint to read the database when the job
left this node without an end of its own (given up) or ended on another node. Jobs
nobody listens to pay one test of an empty dictionary per step.

The one thing this view can lag behind is a cancel or a lease taken over by another
node: the job reads ``running`` here until the lease renewal notices (within a third
of ``scheduler.lease_seconds``) and abandons it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from app.db.models import JobStatus
from app.jobs.results import step_result

JOB_RUNNING = JobStatus.RUNNING


@dataclass(slots=True)
class LiveJob:
    client: str
    #: Committed steps in chain order, as ``step_result`` bodies.
    steps: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class EndedJob:
    id: str
    status: str
    steps: list[dict[str, Any]]


#: ``(job id, client, status, steps)``: the job's committed steps so far, ``running`` or
#: the status it ended in; ``(job id, None, None, None)`` when only the database knows
#: (this node gave the job up, or another node ended it).
Listener = Callable[[str, str | None, str | None, list[dict[str, Any]] | None], None]


class LiveJobs:
    def __init__(self) -> None:
        self._jobs: dict[str, LiveJob] = {}
        self._waiters: dict[str, set[asyncio.Future[EndedJob | None]]] = {}
        self._listeners: dict[str, Listener] = {}
        #: Starts hearing of jobs ended elsewhere (``NodeConnection.hear_ended``); None
        #: where nothing announces them (SQLite).
        self.hear_ended: Callable[[], Awaitable[bool]] | None = None

    def listen(self, job_id: str, listener: Listener) -> None:
        """``listener`` hears about the job until ``unlisten`` (one listener per job: the
        node's event feed, which fans out to its streams)."""
        self._listeners[job_id] = listener

    def unlisten(self, job_id: str) -> None:
        self._listeners.pop(job_id, None)

    def peek(self, job_id: str) -> LiveJob | None:
        """The job while this node runs it, whoever's it is."""
        return self._jobs.get(job_id)

    def started(self, job_id: str, client: str, steps: list[dict[str, Any]]) -> None:
        self._jobs[job_id] = LiveJob(client, steps)

    def step_committed(self, job_id: str, container: str, output: Any, error: str | None) -> None:
        job = self._jobs.get(job_id)
        if job is not None:
            job.steps.append(step_result(container, output, error))
            if self._listeners:
                listener = self._listeners.get(job_id)
                if listener is not None:
                    listener(job_id, job.client, JOB_RUNNING, job.steps)

    def ended(self, job_id: str, status: str | None = None) -> None:
        """After the job's last commit, with the status it ended in; or without one when
        this node gave the job up (cancelled, taken over, shutting down, or back to
        ``pending`` until a step retry is due): a read waiting for it reads it again and,
        finding it unfinished, goes on waiting."""
        job = self._jobs.pop(job_id, None)
        final = EndedJob(job_id, status, job.steps) if job is not None and status is not None else None
        if self._listeners:
            listener = self._listeners.get(job_id)
            if listener is not None:
                if final is not None and job is not None:
                    listener(job_id, job.client, status, job.steps)
                else:
                    listener(job_id, None, None, None)
        self.wake([job_id], final)

    def ended_elsewhere(self, job_ids: Iterable[str]) -> None:
        """Another node or worker ended these jobs (PostgreSQL NOTIFY)."""
        job_ids = list(job_ids)
        if self._listeners:
            for job_id in job_ids:
                listener = self._listeners.get(job_id)
                if listener is not None:
                    listener(job_id, None, None, None)
        self.wake(job_ids)

    def wake(self, job_ids: Iterable[str], final: EndedJob | None = None) -> None:
        """Reads waiting on these jobs go on: they ended (here or elsewhere)."""
        for job_id in job_ids:
            for waiter in self._waiters.pop(job_id, ()):
                if not waiter.done():
                    waiter.set_result(final)

    async def hear_elsewhere(self) -> bool:
        """Before a read of jobs not running here that may then wait for them: their end
        is announced from now on. True when it was not before (a read made earlier may
        have missed an end)."""
        return self.hear_ended is not None and await self.hear_ended()

    async def wait_ended(self, job_ids: Iterable[str], timeout: float) -> EndedJob | None:
        """Until one of the jobs ended, or ``timeout`` passed. A job this node ended comes
        back as it was committed, so the waiting read needs no database read for it. None
        at once when the end of a job running elsewhere was not heard of until now: the
        caller reads again before it waits."""
        waiter: asyncio.Future[EndedJob | None] = asyncio.get_running_loop().create_future()
        ids = list(job_ids)
        elsewhere = any(job_id not in self._jobs for job_id in ids)
        for job_id in ids:
            self._waiters.setdefault(job_id, set()).add(waiter)
        try:
            async with asyncio.timeout(timeout):
                if elsewhere and await self.hear_elsewhere():
                    return None
                return await waiter
        except TimeoutError:
            return None
        finally:
            for job_id in ids:
                waiters = self._waiters.get(job_id)
                if waiters is not None:
                    waiters.discard(waiter)
                    if not waiters:
                        del self._waiters[job_id]

    def get(self, job_id: str, client: str) -> LiveJob | None:
        """The job while this node runs it, if it is this client's."""
        job = self._jobs.get(job_id)
        return job if job is not None and job.client == client else None
