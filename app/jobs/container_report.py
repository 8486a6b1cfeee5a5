"""Each configured container's live state on this node, as the operator sees it
(``/api/containers``, the dashboard, ``/metrics``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from app import metrics

if TYPE_CHECKING:
    from app.containers.state import ContainerStates


class ContainerReport:
    def __init__(self, containers: ContainerStates | None) -> None:
        self.containers = containers

    def states(self) -> list[dict[str, Any]]:
        """``mean_seconds`` and ``p95_seconds`` are over the last ``app.metrics.RECENT_SAMPLES``
        container calls this node made (in-memory samples, reset on restart), not SQL."""
        if self.containers is None:
            return []
        return [
            {
                "id": s.settings.id,
                "image": s.settings.image,
                "url": s.base_url,
                "managed": s.managed,
                "external": s.settings.external,
                "state": s.readiness.value,
                "ready": s.ready,
                "restarts": s.restarts,
                "last_error": s.last_error,
                "in_flight": s.in_flight,
                "concurrency": s.settings.concurrency,
                "done": s.done,
                "failed": s.failed,
                **metrics.RECENT.summary(s),
            }
            for s in self.containers
        ]
