"""``GET /resources``: what each container says it offers (``GET /service-resources``)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import urlencode

from app.containers.client import ContainerClient
from app.containers.state import ContainerStates
from app.logging import rate_limited

#: Also the logger of the container runtime (probe warnings): repeats are held back.
log = rate_limited(logging.getLogger("jobnode.containers"))

RESOURCES_TIMEOUT = 5.0


class ResourceService:
    def __init__(self, states: ContainerStates, client: ContainerClient) -> None:
        self.states = states
        self.client = client

    async def collect(self, model_id: str | None) -> dict[str, Any]:
        """Ask every ready container at once; one that fails or answers badly is left out."""
        query = f"?{urlencode({'model_id': model_id})}" if model_id is not None else ""
        ready = [state for state in self.states if state.ready]
        answers = await asyncio.gather(
            *(self.client.get_json(f"{s.base_url}/service-resources{query}", RESOURCES_TIMEOUT) for s in ready),
            return_exceptions=True,
        )
        resources: dict[str, Any] = {}
        for state, answer in zip(ready, answers, strict=True):
            if isinstance(answer, BaseException):  # a line per request: rate-limited
                log.info("resources of %s unavailable: %s", state.settings.id, answer)
            else:
                resources[state.settings.id] = answer
        return resources
