"""Response shapes of the compatible surface, for the OpenAPI document."""

from __future__ import annotations

import uuid
from typing import Any, Literal

import msgspec

#: How the compatible surface shows a job: pending and running jobs are both ``running``.
ApiStatus = Literal["running", "success", "failed"]


class ErrorBody(msgspec.Struct):
    error: str
    params: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET


class JobId(msgspec.Struct):
    id: uuid.UUID


class JobResult(msgspec.Struct):
    id: uuid.UUID
    status: ApiStatus
    result: dict[str, Any] | None
    intermediate_results: list[dict[str, Any]] | msgspec.UnsetType = msgspec.UNSET


class ContainerInfo(msgspec.Struct):
    id: str
    image: str
    external: bool
    description: str


class PendingCounts(msgspec.Struct):
    offchain: int
    onchain: int


class ChainInfo(msgspec.Struct):
    enabled: bool
    address: str


class NodeInfo(msgspec.Struct):
    version: str
    containers: list[ContainerInfo]
    pending: PendingCounts
    chain: ChainInfo


class Health(msgspec.Struct):
    status: Literal["healthy", "unhealthy"]
    database: str | msgspec.UnsetType = msgspec.UNSET
    containers: dict[str, str] | msgspec.UnsetType = msgspec.UNSET


class Probe(msgspec.Struct):
    """``/health/live`` and ``/health/ready``: ``reason`` says why a node is not ready."""

    status: str
    reason: str | msgspec.UnsetType = msgspec.UNSET
