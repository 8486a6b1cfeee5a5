"""``/health``, ``/health/live``, ``/health/ready`` and ``/info``: is the node usable, should
it get traffic, and what can it run."""

from __future__ import annotations

from typing import Any

from litestar import Controller, MediaType, Response, get
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec

from app import __version__
from app.containers.state import ContainerStates
from app.health import NodeReadiness
from app.http.openapi import DATABASE, RATE_LIMITED, errors
from app.http.structs import ChainInfo, ContainerInfo, Health, NodeInfo, PendingCounts, Probe
from app.jobs.service import JobService


class NodeController(Controller):
    tags = ["node"]

    @get(
        "/health",
        media_type=MediaType.JSON,
        summary="Database reachable?",
        responses={503: ResponseSpec(Health, description='Database unreachable: {"status": "unhealthy", ...}')},
    )
    async def health(
        self, jobs: NamedDependency[JobService], containers: NamedDependency[ContainerStates]
    ) -> Response[Health]:
        not_ready = containers.not_ready()
        extra: dict[str, Any] = {"containers": not_ready} if not_ready else {}
        try:
            await jobs.ping()
        except Exception as exc:
            return Response(
                Health(status="unhealthy", database=f"unreachable: {type(exc).__name__}", **extra), status_code=503
            )
        return Response(Health(status="healthy", **extra))

    @get("/health/live", media_type=MediaType.JSON, summary="Is the process serving? (liveness probe)")
    async def live(self) -> Probe:
        """Always 200 while the process answers: a restart cures nothing the database can't."""
        return Probe(status="live")

    @get(
        "/health/ready",
        media_type=MediaType.JSON,
        summary="Should this node get traffic? (database, schema at head, not shutting down)",
        responses={503: ResponseSpec(Probe, description='Not ready: {"status": "unready", "reason": ...}')},
    )
    async def ready(self, readiness: NamedDependency[NodeReadiness]) -> Response[Probe]:
        reason = await readiness.unready_reason()
        if reason is not None:
            return Response(Probe(status="unready", reason=reason), status_code=503)
        return Response(Probe(status="ready"))

    @get(
        "/info",
        media_type=MediaType.JSON,
        summary="Ready containers and pending job counts",
        responses=errors(RATE_LIMITED, DATABASE),
    )
    async def info(self, jobs: NamedDependency[JobService], containers: NamedDependency[ContainerStates]) -> NodeInfo:
        pending = await jobs.pending_counts()
        return NodeInfo(
            version=__version__,
            containers=[
                ContainerInfo(s.settings.id, s.settings.image, s.settings.external, s.settings.description)
                for s in containers.ready()
            ],
            pending=PendingCounts(**pending),
            chain=ChainInfo(enabled=False, address=""),
        )
