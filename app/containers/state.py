"""The live state of each configured container, shared by the runtime and the API.

The runtime writes it (starting, ready, failed, restarts); the HTTP layer and the
scheduler only read it, so that ``/info`` lists a container once it can take work,
``/health`` can say why one cannot, and a job waits for its container instead of
calling into a container that is being restarted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum

from app.config.settings import ContainerSettings, Settings


class Readiness(StrEnum):
    STARTING = "starting"
    READY = "ready"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass
class ContainerState:
    settings: ContainerSettings
    base_url: str
    managed: bool
    readiness: Readiness = Readiness.STARTING
    last_error: str | None = None
    restarts: int = 0
    in_flight: int = 0
    done: int = 0
    failed: int = 0
    docker_id: str | None = field(default=None, repr=False)
    #: Set when READY, and when FAILED on a managed container: the runtime gave up on it
    #: (no engine, no image, it would not start) until something changes, so waiting for
    #: it is pointless; an unmanaged one keeps being probed and may come back.
    _ready_event: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def ready(self) -> bool:
        return self.readiness is Readiness.READY

    @property
    def holds_jobs(self) -> bool:
        """Does a job wait for this container to be ready before calling it? Yes when the
        node runs it or its ``health_path`` says whether it can work. One run elsewhere
        without a ``health_path`` is only probed by a TCP connect, up to
        ``probe_interval`` old: a job calls it whatever the probe said last (when it is
        down the call fails at once, "connection refused")."""
        return self.managed or self.settings.health_path is not None

    def mark(self, readiness: Readiness, error: str | None = None) -> None:
        """Record a transition; ``error`` says why a container is not ready."""
        self.readiness = readiness
        if readiness is Readiness.READY:
            self.last_error = None
            self._ready_event.set()
        else:
            if error is not None:
                self.last_error = error
            if readiness is Readiness.FAILED and self.managed:
                self._ready_event.set()  # wake the waiters: they fail now, with last_error
            else:
                self._ready_event.clear()

    async def wait_ready(self, timeout: float) -> bool:
        """Ready within ``timeout``? False at once when the runtime has given up on it."""
        if self.ready:
            return True
        try:
            await asyncio.wait_for(self._ready_event.wait(), timeout)
        except TimeoutError:
            return False
        return self.ready


class ContainerStates:
    def __init__(self, settings: Settings) -> None:
        self._states = {
            c.id: ContainerState(c, base_url=settings.base_url(c), managed=settings.managed(c))
            for c in settings.containers
        }
        for state in self._states.values():
            if not state.managed and state.settings.health_path is None:
                # Run by someone else, probed by a TCP connect: ready as configured until
                # the runtime's first probe (made before the node serves).
                state.mark(Readiness.READY)

    def __iter__(self) -> Iterator[ContainerState]:
        return iter(self._states.values())

    def get(self, container_id: str) -> ContainerState | None:
        return self._states.get(container_id)

    def ready(self) -> list[ContainerState]:
        return [state for state in self._states.values() if state.ready]

    def not_ready(self) -> dict[str, str]:
        return {
            s.settings.id: f"{s.readiness.value}: {s.last_error}" if s.last_error else s.readiness.value
            for s in self._states.values()
            if not s.ready
        }
