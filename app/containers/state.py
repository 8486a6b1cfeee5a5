"""The live state of each configured container, shared by the runtime and the API.

The runtime writes it (starting, ready, failed, restarts); the HTTP layer only reads it,
so that ``/info`` lists a container once it can take work and ``/health`` can say why
one cannot.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from app.config import ContainerSettings, Settings


class Readiness(StrEnum):
    STARTING = "starting"
    READY = "ready"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass
class ContainerState:
    settings: ContainerSettings
    readiness: Readiness = Readiness.STARTING
    last_error: str | None = None
    restarts: int = 0
    in_flight: int = 0
    done: int = 0
    failed: int = 0
    docker_id: str | None = field(default=None, repr=False)

    @property
    def ready(self) -> bool:
        return self.readiness is Readiness.READY

    def mark(self, readiness: Readiness, error: str | None = None) -> None:
        self.readiness = readiness
        if error is not None or readiness is Readiness.READY:
            self.last_error = error


class ContainerStates:
    def __init__(self, settings: Settings) -> None:
        self._states = {c.id: ContainerState(c) for c in settings.containers}
        if not settings.manage_containers:
            # Nothing to start: a container the node does not manage is ready as configured
            # (one with a health_path is probed by the runtime instead).
            for state in self._states.values():
                if state.settings.health_path is None:
                    state.mark(Readiness.READY)

    def __iter__(self):  # type: ignore[no-untyped-def]
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
