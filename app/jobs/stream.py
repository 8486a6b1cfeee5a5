"""``POST /api/jobs/stream``: run a one-container job now and pass its body through.

The job is stored like any other, but owned by this node from the start (running, its
lease held here and renewed while the stream lasts), so the scheduler leaves it alone.
Its result is the whole body as text once the stream ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

from sqlalchemy import insert

from app.clock import utcnow
from app.containers.client import ContainerClient, StepFailed
from app.containers.state import ContainerStates
from app.db.models import Job, JobStatus
from app.errors import NUL_REFUSED, STREAM_ONE_CONTAINER
from app.jobs.requests import ContainerCatalog, JobRejected, JobRequest
from app.jobs.transitions import ClaimedJob, JobStore, StepResult
from app.storable import DEFAULT_MAX_DEPTH


class StreamService:
    def __init__(
        self,
        store: JobStore,
        catalog: ContainerCatalog,
        states: ContainerStates,
        client: ContainerClient,
        max_json_depth: int = DEFAULT_MAX_DEPTH,
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.states = states
        self.client = client
        #: ``server.max_json_depth``, for the request's ``data`` (``app.jobs.requests``).
        self.max_json_depth = max_json_depth

    async def open(self, client: str, request: JobRequest) -> ClaimedJob:
        """Check and store the job; the caller streams it with ``run``."""
        if len(request.containers) > 1:
            raise JobRejected(STREAM_ONE_CONTAINER)
        self.catalog.check(request, client)
        now = utcnow()
        job = ClaimedJob(str(uuid.uuid4()), request.containers, request.data, request.requires_proof, 1, now)
        async with self.store.database.write() as conn:
            await conn.execute(
                insert(Job).values(
                    id=job.id,
                    client=client,
                    source="offchain",
                    containers=job.containers,
                    input=job.input,
                    requires_proof=job.requires_proof,
                    status=JobStatus.RUNNING,
                    attempts=1,
                    stream=True,
                    lease_owner=self.store.node_id,
                    lease_expires_at=now + self.store.lease,
                    run_after=now,
                    created_at=now,
                    started_at=now,
                )
            )
        return job

    async def run(self, job: ClaimedJob) -> AsyncIterator[bytes]:
        """The id line first, then the container's body as it arrives."""
        yield f"{job.id}\n".encode()
        state = self.states.get(job.containers[0])
        assert state is not None  # checked by the catalog in open()
        started = utcnow()
        received: list[bytes] = []
        error: str | None = "stream cancelled: the client went away"
        heartbeat = asyncio.create_task(self._keep_lease(job))
        try:
            if state.holds_jobs and not state.ready:
                raise StepFailed(f"container not ready ({state.readiness.value})", delivered=False)
            async for chunk in self.client.stream(state.settings, state.base_url, job.input, job.requires_proof):
                received.append(chunk)
                yield chunk
            error = None
        except StepFailed as failed:
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
