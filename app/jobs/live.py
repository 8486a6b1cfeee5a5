"""The jobs this node is running, readable without a round trip to the database.

A client polls its job every few milliseconds while it runs; most of those polls find
it still running, on the node that runs it. The node that holds a job's lease knows
its state as well as the database does: it is ``running``, with the steps this node
committed (a job enters here after its claim committed, and each step after its own
commit; it leaves after its last commit). Jobs not here — pending, finished, or run by
another node — are read from the database.

A client may also wait for its jobs (``GET /api/jobs?id=…&wait=``): the node wakes it
when it ends one of them, or when another node or worker announces that it did
(PostgreSQL NOTIFY), and otherwise re-reads every ``RECHECK_SECONDS``.

The one thing this view can lag behind is a cancel or a lease taken over by another
node: the job reads ``running`` here until the lease renewal notices (within a third
of ``scheduler.lease_seconds``) and abandons it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from app.jobs.results import step_result


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


class LiveJobs:
    def __init__(self) -> None:
        self._jobs: dict[str, LiveJob] = {}
        self._waiters: dict[str, set[asyncio.Future[EndedJob | None]]] = {}

    def started(self, job_id: str, client: str, steps: list[dict[str, Any]]) -> None:
        self._jobs[job_id] = LiveJob(client, steps)

    def step_committed(self, job_id: str, container: str, output: Any, error: str | None) -> None:
        job = self._jobs.get(job_id)
        if job is not None:
            job.steps.append(step_result(container, output, error))

    def ended(self, job_id: str, status: str | None = None) -> None:
        """After the job's last commit, with the status it ended in; or without one when
        this node gave the job up (cancelled, taken over, shutting down, or back to
        ``pending`` until a step retry is due): a read waiting for it reads it again and,
        finding it unfinished, goes on waiting."""
        job = self._jobs.pop(job_id, None)
        final = EndedJob(job_id, status, job.steps) if job is not None and status is not None else None
        self.wake([job_id], final)

    def wake(self, job_ids: Iterable[str], final: EndedJob | None = None) -> None:
        """Reads waiting on these jobs go on: they ended (here or elsewhere)."""
        for job_id in job_ids:
            for waiter in self._waiters.pop(job_id, ()):
                if not waiter.done():
                    waiter.set_result(final)

    async def wait_ended(self, job_ids: Iterable[str], timeout: float) -> EndedJob | None:
        """Until one of the jobs ended, or ``timeout`` passed. A job this node ended comes
        back as it was committed, so the waiting read needs no database read for it."""
        waiter: asyncio.Future[EndedJob | None] = asyncio.get_running_loop().create_future()
        ids = list(job_ids)
        for job_id in ids:
            self._waiters.setdefault(job_id, set()).add(waiter)
        try:
            async with asyncio.timeout(timeout):
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
