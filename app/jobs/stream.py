"""``POST /api/jobs/stream``: run a one-container job now and pass its body through.

The job is stored like any other, but owned by this node from the start (running, its
lease held here and renewed while the stream lasts), so the scheduler leaves it alone.
Its result is the whole body as text once the stream ends. The container call itself is
the runtime's (``app.scheduler.streaming``); this service keeps the job's state.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Protocol

from app.clock import utcnow
from app.errors import NUL_REFUSED, STREAM_NO_SUBSCRIPTIONS, STREAM_NO_WEBHOOKS, STREAM_ONE_CONTAINER
from app.jobs.requests import ContainerCatalog, JobRejected, JobRequest
from app.jobs.transitions import JobStore
from app.jobs.values import ClaimedJob, StepResult
from app.storable import DEFAULT_MAX_DEPTH


class StreamFailed(Exception):
    """The container call failed; ``error`` is the step's error."""

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


class ContainerStream(Protocol):
    """The runtime's side of a streamed job."""

    def stream(self, job: ClaimedJob) -> AsyncIterator[bytes]:
        """The body of the job's one container as it arrives; raises ``StreamFailed``."""
        ...


class StreamService:
    def __init__(
        self,
        store: JobStore,
        catalog: ContainerCatalog,
        runner: ContainerStream,
        max_json_depth: int = DEFAULT_MAX_DEPTH,
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.runner = runner
        #: ``server.max_json_depth``, for the request's ``data`` (``app.jobs.requests``).
        self.max_json_depth = max_json_depth

    async def open(self, client: str, request: JobRequest) -> ClaimedJob:
        """Check and store the job; the caller streams it with ``run``."""
        if request.subscription is not None:
            raise JobRejected(STREAM_NO_SUBSCRIPTIONS)
        if request.webhook is not None:  # its client reads the result as it streams
            raise JobRejected(STREAM_NO_WEBHOOKS)
        if len(request.containers) > 1:
            raise JobRejected(STREAM_ONE_CONTAINER)
        self.catalog.check(request, client)
        return await self.store.open_stream(client, request)

    async def run(self, job: ClaimedJob) -> AsyncIterator[bytes]:
        """The id line first, then the container's body as it arrives."""
        yield f"{job.id}\n".encode()
        started = utcnow()
        received: list[bytes] = []
        error: str | None = "stream cancelled: the client went away"
        heartbeat = asyncio.create_task(self._keep_lease(job))
        try:
            async for chunk in self.runner.stream(job):
                received.append(chunk)
                yield chunk
            error = None
        except StreamFailed as failed:
            error = failed.error
        finally:
            heartbeat.cancel()
            output = None if error else {"output": b"".join(received).decode("utf-8", errors="replace")}
            if output is not None and "\x00" in output["output"]:  # PostgreSQL would refuse the step
                output, error = None, f"output {NUL_REFUSED}"
            # Shielded: a client that disconnects must not leave the job running.
            with contextlib.suppress(Exception):
                await asyncio.shield(self.store.record_step(StepResult(job, 0, started, output, error)))

    async def _keep_lease(self, job: ClaimedJob) -> None:
        while True:
            await asyncio.sleep(self.store.lease.total_seconds() / 3)
            with contextlib.suppress(Exception):
                await self.store.renew([job.id])
