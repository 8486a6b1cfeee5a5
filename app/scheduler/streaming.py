"""The container call of a streamed job (``app.jobs.stream``), on the runtime's side."""

from __future__ import annotations

from collections.abc import AsyncIterator

from app.containers.client import ContainerClient, StepFailed
from app.containers.state import ContainerStates
from app.jobs.stream import StreamFailed
from app.jobs.values import ClaimedJob


class StreamRunner:
    def __init__(self, states: ContainerStates, client: ContainerClient) -> None:
        self.states = states
        self.client = client

    async def stream(self, job: ClaimedJob) -> AsyncIterator[bytes]:
        state = self.states.get(job.containers[0])
        assert state is not None  # checked by the catalog when the job was stored
        try:
            if state.holds_jobs and not state.ready:
                raise StepFailed(f"container not ready ({state.readiness.value})", delivered=False)
            async for chunk in self.client.stream(state.settings, state.base_url, job.input, job.requires_proof):
                yield chunk
        except StepFailed as failed:
            raise StreamFailed(failed.error) from None
