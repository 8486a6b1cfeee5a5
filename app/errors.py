"""The error catalogue: every error a client can be answered, defined once.

Each entry is an ``ErrorSpec``: the HTTP status, the message (the ``error`` of the body,
part of the contract: clients match on it) and the keys of its ``params`` when it has
them. Code raises from an entry (``raise INVALID_PARAMETER.error({"name": …, "value": …})``),
``app.http.errors`` turns what is raised into ``{"error", "params"?}``, the OpenAPI
document lists each endpoint's entries (``app.http.openapi.errors``), and
``tests/test_error_catalogue.py`` holds the README, the document and the code to this
module: a message written anywhere else is a second copy that can drift.

The domain (``app.jobs``) keeps its own exception types (``JobRejected``, ``JobConflict``)
because callers catch them by kind; they carry an entry of this catalogue, not a text.
The reasons below (``NUL_REFUSED``, ``nested_too_deep``…) are the variable part of an
``Invalid job request`` and of a step's error, and are client-facing too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from app.db.errors import describe, is_database_unavailable


@dataclass(frozen=True, slots=True)
class ErrorSpec:
    """One client-facing error: its status, its message and the keys of its params."""

    status: int
    message: str
    params: tuple[str, ...] = ()

    def body(self, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``{"error"}``, or ``{"error", "params"}`` when there are params."""
        return {"error": self.message} if params is None else {"error": self.message, "params": dict(params)}

    def error(self, params: Mapping[str, Any] | None = None, headers: Mapping[str, str] | None = None) -> ClientError:
        """The exception to raise for this error."""
        return ClientError(self, params, headers)


class ClientError(Exception):
    """An error the client is answered with as it is: ``spec``'s status and message, with
    ``params`` and response ``headers`` (``WWW-Authenticate``, ``Allow``) of this case."""

    def __init__(
        self, spec: ErrorSpec, params: Mapping[str, Any] | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(spec.message)
        self.spec = spec
        self.params = None if params is None else dict(params)
        self.headers = None if headers is None else dict(headers)

    @property
    def message(self) -> str:
        return self.spec.message

    def body(self) -> dict[str, Any]:
        return self.spec.body(self.params)


# Job requests (SPEC §1), in the order they are checked (app.jobs.requests).
INVALID_JOB_REQUEST = ErrorSpec(400, "Invalid job request", ("reason",))
NO_CONTAINERS = ErrorSpec(400, "No containers specified")
CONTAINER_NOT_SUPPORTED = ErrorSpec(400, "Container not supported", ("container",))
FIRST_CONTAINER_NOT_EXTERNAL = ErrorSpec(400, "First container must be external", ("first_container",))
NO_PROOF = ErrorSpec(400, "Container does not generate proof", ("container",))
CONTAINER_NOT_ALLOWED = ErrorSpec(400, "Container not allowed for address", ("container", "address"))
#: A webhook whose host ``webhooks.allowed_hosts`` does not list, after the other checks.
WEBHOOK_NOT_ALLOWED = ErrorSpec(400, "Webhook not allowed", ("url",))
#: A subscription's own checks (SPEC §7), after those of a job.
INVALID_SUBSCRIPTION = ErrorSpec(400, "Invalid subscription", ("field", "reason"))
TOO_MANY_SUBSCRIPTIONS = ErrorSpec(400, "Too many subscriptions", ("limit",))
#: ``POST /api/jobs/batch``.
EXPECTED_LIST = ErrorSpec(400, "Expected a list")
BATCH_TOO_LARGE = ErrorSpec(400, "Batch too large", ("limit", "size"))
#: ``POST /api/jobs/stream``.
STREAM_ONE_CONTAINER = ErrorSpec(400, "Streaming supports one container")
STREAM_NO_SUBSCRIPTIONS = ErrorSpec(400, "Streaming does not support subscriptions")
#: ``Idempotency-Key`` of a submit (SPEC §8) held for another request (another body).
IDEMPOTENCY_KEY_REUSED = ErrorSpec(409, "Idempotency key reused", ("key",))
STREAM_NO_WEBHOOKS = ErrorSpec(400, "Streaming does not support webhooks")
#: ``/api/subscriptions/{id}``: another client's is the same as an unknown one.
SUBSCRIPTION_NOT_FOUND = ErrorSpec(404, "Subscription not found")

# Reads and parameters (app.http.params).
INVALID_JOB_ID = ErrorSpec(400, "Invalid job id", ("id",))
TOO_MANY_IDS = ErrorSpec(400, "Too many ids", ("limit",))
INVALID_PARAMETER = ErrorSpec(400, "Invalid parameter", ("name", "value"))
#: ``GET /api/jobs/events``: the node serves ``server.max_event_streams`` already.
TOO_MANY_EVENT_STREAMS = ErrorSpec(503, "Too many event streams", ("limit",))

# Operator actions (app.jobs.actions).
JOB_NOT_FOUND = ErrorSpec(404, "Job not found")
JOB_ALREADY_FINISHED = ErrorSpec(409, "Job already finished")
JOB_NOT_FAILED = ErrorSpec(409, "Job is not failed")
#: ``POST /api/jobs/{id}/webhook``: a re-send needs a webhook and an ended job.
JOB_HAS_NO_WEBHOOK = ErrorSpec(409, "Job has no webhook")
JOB_NOT_ENDED = ErrorSpec(409, "Job has not ended")

# Operator access (app.http.operator_auth) and browsers (app.http.origin).
OPERATOR_TOKEN_REQUIRED = ErrorSpec(401, "Operator token required")
OPERATOR_TOKEN_INVALID = ErrorSpec(401, "Invalid operator token")
LOOPBACK_ONLY = ErrorSpec(403, "Operator endpoints answer loopback clients only", ("address",))
CROSS_ORIGIN = ErrorSpec(403, "Cross-origin request refused")
MISDIRECTED = ErrorSpec(421, "Misdirected request")

# Requests the HTTP server refuses before routing (app.http.wire): no endpoint documents them.
INVALID_HTTP_REQUEST = ErrorSpec(400, "Invalid HTTP request")
HEADERS_TOO_LARGE = ErrorSpec(431, "Request header fields too large", ("limit",))

# Litestar's own answers, in the node's shape (app.http.errors).
BAD_REQUEST = ErrorSpec(400, "Bad request")
UNAUTHORIZED = ErrorSpec(401, "Unauthorized")
FORBIDDEN = ErrorSpec(403, "Forbidden")
NOT_FOUND = ErrorSpec(404, "Not found")
METHOD_NOT_ALLOWED = ErrorSpec(405, "Method not allowed")
BODY_TOO_LARGE = ErrorSpec(413, "Request body too large", ("limit",))
TOO_MANY_REQUESTS = ErrorSpec(429, "Too many requests")
INTERNAL_ERROR = ErrorSpec(500, "Internal server error")
#: While the database cannot be reached (``database_outage``): retry later.
DATABASE_UNAVAILABLE = ErrorSpec(503, "Database unavailable")

#: Litestar's answer by status, for an ``HTTPException`` of its own; any other status
#: below 500 is ``Bad request``.
LITESTAR_GENERIC: Mapping[int, ErrorSpec] = {
    spec.status: spec for spec in (BAD_REQUEST, UNAUTHORIZED, FORBIDDEN, NOT_FOUND, METHOD_NOT_ALLOWED)
}
#: Answered by the HTTP server, not by an endpoint.
WIRE = (INVALID_HTTP_REQUEST, HEADERS_TOO_LARGE)

#: Every entry by message (messages are unique: clients tell errors apart by them).
CATALOGUE: Mapping[str, ErrorSpec] = {
    value.message: value for value in list(globals().values()) if isinstance(value, ErrorSpec)
}
assert len(CATALOGUE) == sum(isinstance(value, ErrorSpec) for value in list(globals().values())), "a message twice"


def spec_of(body: Mapping[str, Any]) -> ErrorSpec:
    """The entry of an error body made by ``ErrorSpec.body`` (a batch item's answer)."""
    return CATALOGUE[body["error"]]


# Reasons: the end of a sentence whose subject is ``data`` (a job's input) or ``output``
# (a container's), in an ``Invalid job request``'s ``reason`` or a step's error.
NUL_REFUSED = "contains a NUL character, which cannot be stored"


def nested_too_deep(limit: int) -> str:
    return f"is nested deeper than {limit} levels"


def could_not_be_stored(reason: str) -> str:
    """The database refused the value (``app.db.errors.refused_value``)."""
    return f"could not be stored: {reason}"


def lone_surrogate_reason(escape: str) -> str:
    """A body with a ``\\uD800``-``\\uDFFF`` escape that is half of no pair (msgspec calls
    it "truncated")."""
    return (
        f"JSON is malformed: {escape} is half of a UTF-16 surrogate pair without its other "
        "half, which is not a character"
    )


def database_outage(exc: BaseException) -> str | None:
    """Why the database cannot be reached, for the log, when that is what ``exc`` means
    (the client is answered ``DATABASE_UNAVAILABLE``); None for anything else. Here so
    that the HTTP layer maps exceptions to answers without knowing the database's."""
    return describe(exc) if is_database_unavailable(exc) else None
