"""Job requests as clients send them, and the checks of SPEC §1 in their order.

The body is decoded here rather than by Litestar because the error texts are part of
the contract: Litestar's own validation messages are not ours.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

import msgspec

from app.config import ContainerSettings, IpNetwork, Settings, parse_networks


class JobRequest(msgspec.Struct, kw_only=True):
    """``{"containers", "data", "requires_proof"?}``; other keys (``id``, ``ip``…) are ignored."""

    containers: list[str]
    data: dict[str, Any]
    requires_proof: bool = False


class JobRejected(Exception):
    """A request the node will not accept; ``error`` and ``params`` go to the client as they are."""

    def __init__(self, error: str, params: dict[str, Any] | None = None) -> None:
        super().__init__(error)
        self.error = error
        self.params = params

    def body(self) -> dict[str, Any]:
        return {"error": self.error} if self.params is None else {"error": self.error, "params": self.params}


def _invalid(exc: Exception) -> JobRejected:
    reason = str(exc).replace("$.", "").replace("`$`", "the body")
    return JobRejected("Invalid job request", {"reason": reason})


def decode_job_request(body: bytes | msgspec.Raw) -> JobRequest:
    try:
        return msgspec.json.decode(body, type=JobRequest)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise _invalid(exc) from None
    except RecursionError:  # msgspec's limit on nesting depth
        raise JobRejected("Invalid job request", {"reason": "JSON is nested too deeply"}) from None


def decode_batch(body: bytes) -> list[JobRequest | JobRejected]:
    """Each item decoded, or rejected, on its own. A batch of valid items is decoded in one
    call (most batches); only a batch with an invalid item is decoded again item by item."""
    try:
        return msgspec.json.decode(body, type=list[JobRequest])  # type: ignore[return-value]
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        pass
    try:
        items = msgspec.json.decode(body, type=list[msgspec.Raw])
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        raise JobRejected("Expected a list") from None
    requests: list[JobRequest | JobRejected] = []
    for item in items:
        try:
            requests.append(decode_job_request(item))
        except JobRejected as rejected:
            requests.append(rejected)
    return requests


@dataclass(frozen=True, slots=True)
class _Container:
    settings: ContainerSettings
    allowed: tuple[IpNetwork, ...]

    def allows(self, address: str) -> bool:
        if not self.allowed:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.allowed if network.version == ip.version)


class ContainerCatalog:
    """The configured containers, with their allow-lists parsed once."""

    def __init__(self, settings: Settings) -> None:
        self._containers = {
            c.id: _Container(c, tuple(parse_networks(c.allowed_ips, f"containers[{c.id}].allowed_ips")))
            for c in settings.containers
        }

    def get(self, container_id: str) -> ContainerSettings | None:
        entry = self._containers.get(container_id)
        return entry.settings if entry else None

    def check(self, request: JobRequest, client: str) -> None:
        """Raise the first rejection of SPEC §1's table, in its order."""
        if not request.containers:
            raise JobRejected("No containers specified")
        entries = []
        for container_id in request.containers:
            entry = self._containers.get(container_id)
            if entry is None:
                raise JobRejected("Container not supported", {"container": container_id})
            entries.append(entry)
        if not entries[0].settings.external:
            raise JobRejected("First container must be external", {"first_container": request.containers[0]})
        if request.requires_proof and not entries[-1].settings.generates_proofs:
            raise JobRejected("Container does not generate proof", {"container": request.containers[-1]})
        for entry in entries:
            if not entry.allows(client):
                raise JobRejected(
                    "Container not allowed for address", {"container": entry.settings.id, "address": client}
                )
