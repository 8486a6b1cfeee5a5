"""Job requests as clients send them, and the checks of SPEC §1 in their order.

The body is decoded here rather than by Litestar because the error texts are part of
the contract: Litestar's own validation messages are not ours.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec

from app import storable
from app.config.settings import ContainerSettings, Settings
from app.config.values import IpNetwork, parse_networks
from app.errors import (
    CONTAINER_NOT_ALLOWED,
    CONTAINER_NOT_SUPPORTED,
    EXPECTED_LIST,
    FIRST_CONTAINER_NOT_EXTERNAL,
    INVALID_JOB_REQUEST,
    NO_CONTAINERS,
    NO_PROOF,
    WEBHOOK_NOT_ALLOWED,
    ClientError,
    lone_surrogate_reason,
    nested_too_deep,
)
from app.formatting import clipped
from app.jobs.webhook_policy import AllowList, WebhookInvalid
from app.storable import DEFAULT_MAX_DEPTH


class SubscriptionRequest(msgspec.Struct, kw_only=True):
    """A job request's schedule (SPEC §7); ``active_at`` defaults to now."""

    period: int
    frequency: int
    active_at: int | None = None


class JobRequest(msgspec.Struct, kw_only=True):
    """``{"containers", "data", "requires_proof"?, "subscription"?, "webhook"?}``; other
    keys (``id``, ``ip``…) are ignored."""

    containers: list[str]
    data: dict[str, Any]
    requires_proof: bool = False
    subscription: SubscriptionRequest | None = None
    #: Where the job's result is POSTed when it ends (``app.maintenance.webhooks``).
    webhook: Annotated[
        str | None,
        msgspec.Meta(
            description="An http(s) URL (at most 2,048 characters) the job's JobResult, with intermediate_results, "
            "is POSTed to when the job ends; its host must be in webhooks.allowed_hosts."
        ),
    ] = None


class JobRejected(ClientError):
    """A request the node will not accept: a catalogue entry (``app.errors``) and its
    params, which go to the client as they are (a batch answers it in the item's place)."""


def with_subscriptions(requests: Sequence[JobRequest | JobRejected]) -> bool:
    """Whether any request asks for a subscription: such submits count the client's quota
    in their transaction, so they do not join the group commit of plain jobs."""
    return any(isinstance(request, JobRequest) and request.subscription is not None for request in requests)


def _invalid_data(reason: str) -> JobRejected:
    return JobRejected(INVALID_JOB_REQUEST, {"reason": f"data {reason}"})


def _invalid(exc: Exception, body: bytes | msgspec.Raw) -> JobRejected:
    reason = str(exc).replace("$.", "").replace("`$`", "the body")
    if isinstance(exc, msgspec.DecodeError):
        # msgspec reports a lone surrogate escape as "Input data was truncated".
        surrogate = lone_surrogate(bytes(body))
        if surrogate is not None:
            reason = lone_surrogate_reason(surrogate)
    return JobRejected(INVALID_JOB_REQUEST, {"reason": reason})


#: A ``\uXXXX`` escape: after an odd run of backslashes (``\\u0041`` is a literal backslash).
_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u([0-9a-fA-F]{4})")


def lone_surrogate(body: bytes) -> str | None:
    """The first ``\\uD800``-``\\uDFFF`` escape of ``body`` that is not half of a pair, as
    written; only read for a body that failed to decode."""
    high: re.Match[bytes] | None = None
    for match in _ESCAPE.finditer(body):
        code = int(match.group(1), 16)
        if high is not None:
            if 0xDC00 <= code <= 0xDFFF and match.end() - 6 == high.end():
                high = None
                continue
            break
        if 0xD800 <= code <= 0xDBFF:
            high = match
        elif 0xDC00 <= code <= 0xDFFF:
            return "\\u" + match.group(1).decode()
    return None if high is None else "\\u" + high.group(1).decode()


def _too_deep(max_depth: int, what: str) -> JobRejected:
    return JobRejected(INVALID_JOB_REQUEST, {"reason": f"{what} {nested_too_deep(max_depth)}"})


def _storable(request: JobRequest, raw: bytes, max_depth: int) -> JobRequest:
    """The request, if its ``data`` can be stored and read back (``app.storable``: NUL,
    nesting); checked before the job joins a statement shared with others' jobs. The
    fast paths are inlined: every submit passes here."""
    if storable.NUL_ESCAPE in raw or storable.may_be_deeper(raw, max_depth):
        why = storable.check_raw(raw, request.data, max_depth)
        if why is not None:
            raise _invalid_data(why)
    return request


def decode_job_request(body: bytes | msgspec.Raw, max_depth: int = DEFAULT_MAX_DEPTH) -> JobRequest:
    """The request in ``body``, or ``JobRejected`` (``Invalid job request``) for a body that
    is not one, or whose ``data`` could not be stored or read back (``server.max_json_depth``)."""
    try:
        request = msgspec.json.decode(body, type=JobRequest)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise _invalid(exc, body) from None
    except RecursionError:  # deeper than Python's recursion limit allows to decode
        raw = body if isinstance(body, bytes) else bytes(body)
        raise _too_deep(max_depth, clipped(storable.too_deep_key(raw, max_depth) or "JSON")) from None
    return _storable(request, body if isinstance(body, bytes) else bytes(body), max_depth)


def decode_batch(body: bytes, max_depth: int = DEFAULT_MAX_DEPTH) -> list[JobRequest | JobRejected]:
    """Each item decoded, or rejected, on its own. A batch of valid items is decoded in one
    call (most batches); only a batch with an invalid item is decoded again item by item."""
    try:
        requests: list[JobRequest | JobRejected] = msgspec.json.decode(body, type=list[JobRequest])
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        pass
    else:
        return _storable_items(requests, body, max_depth)
    try:
        items = msgspec.json.decode(body, type=list[msgspec.Raw])
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        raise JobRejected(EXPECTED_LIST) from None
    decoded: list[JobRequest | JobRejected] = []
    for item in items:
        try:
            decoded.append(decode_job_request(item, max_depth))
        except JobRejected as rejected:
            decoded.append(rejected)
    return decoded


def _storable_items(
    requests: list[JobRequest | JobRejected], body: bytes, max_depth: int
) -> list[JobRequest | JobRejected]:
    """``_storable`` for each item of a batch decoded at once. The fast paths run on the
    whole body first; when they do not clear it (a batch of a hundred small jobs has more
    brackets than 64), on each item's text (``msgspec.Raw``, about a third of the cost of
    walking each item's data), and only an item that fails them is walked. An item that
    cannot be stored is rejected alone."""
    if not (storable.NUL_ESCAPE in body or storable.may_be_deeper(body, max_depth)):
        return requests
    raws = msgspec.json.decode(body, type=list[msgspec.Raw])
    for i, (request, raw) in enumerate(zip(requests, raws, strict=True)):
        assert isinstance(request, JobRequest)
        why = storable.check_raw(bytes(raw), request.data, max_depth)
        if why is not None:
            requests[i] = _invalid_data(why)
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
    """The configured containers, with their allow-lists parsed once (and the webhooks'
    allow-list: a request's webhook is checked here too)."""

    def __init__(self, settings: Settings) -> None:
        self._containers = {
            c.id: _Container(c, tuple(parse_networks(c.allowed_ips, f"containers[{c.id}].allowed_ips")))
            for c in settings.containers
        }
        self.webhooks = AllowList.parse(settings.webhooks.allowed_hosts)

    def get(self, container_id: str) -> ContainerSettings | None:
        entry = self._containers.get(container_id)
        return entry.settings if entry else None

    def check(self, request: JobRequest, client: str) -> None:
        """Raise the first rejection of SPEC §1's table, in its order (a webhook that is no
        URL is an invalid request, first; one the allow-list refuses comes last)."""
        allowed = True
        if request.webhook is not None:
            try:
                allowed = self.webhooks.allows_url(request.webhook)
            except WebhookInvalid as exc:
                raise JobRejected(INVALID_JOB_REQUEST, {"reason": f"webhook {exc}"}) from None
        if not request.containers:
            raise JobRejected(NO_CONTAINERS)
        entries = []
        for container_id in request.containers:
            entry = self._containers.get(container_id)
            if entry is None:
                raise JobRejected(CONTAINER_NOT_SUPPORTED, {"container": clipped(container_id)})
            entries.append(entry)
        if not entries[0].settings.external:
            raise JobRejected(FIRST_CONTAINER_NOT_EXTERNAL, {"first_container": request.containers[0]})
        if request.requires_proof and not entries[-1].settings.generates_proofs:
            raise JobRejected(NO_PROOF, {"container": request.containers[-1]})
        for entry in entries:
            if not entry.allows(client):
                raise JobRejected(CONTAINER_NOT_ALLOWED, {"container": entry.settings.id, "address": client})
        if not allowed:
            raise JobRejected(WEBHOOK_NOT_ALLOWED, {"url": clipped(request.webhook or "")})
