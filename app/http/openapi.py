"""Error responses for the OpenAPI document: every handler lists the catalogue entries
(``app.errors``) it can answer, e.g. ``responses=errors(JOB_NOT_FOUND, OPERATOR)``, and the
document shows each as an example ``{"error", "params"?}`` body under its status."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from litestar import Litestar
from litestar.di import Provide
from litestar.enums import ParamType
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.spec import (
    Components,
    Example,
    OpenAPIMediaType,
    OpenAPIType,
    Operation,
    Parameter,
    Reference,
    RequestBody,
    Schema,
    SecurityRequirement,
    SecurityScheme,
)
from litestar.types import ControllerRouterHandler

from app import errors as catalogue
from app.errors import ErrorSpec
from app.http.structs import ErrorBody

_TITLES = {
    400: catalogue.BAD_REQUEST.message,
    401: "Operator token missing or wrong",
    403: "Not allowed for this client",
    404: catalogue.NOT_FOUND.message,
    409: "Conflict with the job's state or an earlier request",
    413: catalogue.BODY_TOO_LARGE.message,
    421: "Host is not the node's (DNS rebinding)",
    429: "Too many requests (see Retry-After)",
    503: catalogue.DATABASE_UNAVAILABLE.message,
}

#: A group of entries several endpoints answer; ``errors`` takes groups and single entries.
ErrorGroup = tuple[ErrorSpec, ...]

#: What every endpoint that reads or writes the database can also answer.
DATABASE: ErrorGroup = (catalogue.DATABASE_UNAVAILABLE,)
RATE_LIMITED: ErrorGroup = (catalogue.TOO_MANY_REQUESTS,)
#: A job request's body (``app.jobs.requests``), its checks in their order.
JOB_REQUEST: ErrorGroup = (
    catalogue.INVALID_JOB_REQUEST,
    catalogue.NO_CONTAINERS,
    catalogue.CONTAINER_NOT_SUPPORTED,
    catalogue.FIRST_CONTAINER_NOT_EXTERNAL,
    catalogue.NO_PROOF,
    catalogue.CONTAINER_NOT_ALLOWED,
    catalogue.WEBHOOK_NOT_ALLOWED,
    catalogue.INVALID_SUBSCRIPTION,
    catalogue.TOO_MANY_SUBSCRIPTIONS,
    catalogue.BODY_TOO_LARGE,
)
OPERATOR: ErrorGroup = (
    catalogue.OPERATOR_TOKEN_REQUIRED,
    catalogue.OPERATOR_TOKEN_INVALID,
    catalogue.LOOPBACK_ONLY,
    catalogue.CROSS_ORIGIN,
    catalogue.MISDIRECTED,
)
#: What every state-changing endpoint can also answer (``app.http.origin``).
CROSS_SITE: ErrorGroup = (catalogue.CROSS_ORIGIN,)
#: What Litestar answers for a parameter or body it could not parse (app.http.errors).
BAD_REQUEST: ErrorGroup = (catalogue.BAD_REQUEST,)

#: ``security=`` of the operator endpoints (app.http.operator_auth).
OPERATOR_SECURITY: list[SecurityRequirement] = [{"operator": []}]


def components() -> Components:
    """``OpenAPIConfig(components=…)``: the operator token's scheme. A new object per app,
    since Litestar adds the app's schemas to it."""
    return Components(
        security_schemes={
            "operator": SecurityScheme(
                type="http",
                scheme="bearer",
                description="`server.operator_token` as `Authorization: Bearer <token>`. Without a configured token, "
                "operator endpoints answer loopback clients only (403 otherwise). The dashboard also takes "
                "the token once as `?token=` and then a cookie, for reads.",
            )
        }
    )


def errors(*entries: ErrorSpec | ErrorGroup) -> dict[int, ResponseSpec]:
    """``responses=`` for a route handler that can answer ``entries`` (catalogue entries
    and groups of them): one response per status, its entries in the order given."""
    merged: dict[int, list[str]] = {}
    for entry in entries:
        for spec in (entry,) if isinstance(entry, ErrorSpec) else entry:
            messages = merged.setdefault(spec.status, [])
            if spec.message not in messages:
                messages.append(spec.message)
    return {
        status: ResponseSpec(
            ErrorBody,
            generate_examples=False,
            description=f"{_TITLES.get(status, 'Error')}: " + "; ".join(f'"{m}"' for m in messages),
            examples=[Example(summary=message, value={"error": message}) for message in messages],
        )
        for status, messages in sorted(merged.items())
    }


#: ``app.jobs.requests.JobRequest``, whose schema ``JobsReference.submit`` (``data: JobRequest``) puts
#: in the document.
JOB_REQUEST_SCHEMA = Reference(ref="#/components/schemas/JobRequest")


def json_body(schema: Schema | Reference) -> type[Operation]:
    """``operation_class=`` for a handler that decodes its JSON body itself (``request.body()``,
    so that its error messages are the node's, not Litestar's): Litestar documents a body
    only from a ``data`` argument, which it would decode."""

    @dataclass
    class WithJsonBody(Operation):
        def __post_init__(self) -> None:
            self.request_body = RequestBody(
                content={"application/json": OpenAPIMediaType(schema=schema)}, required=True
            )

    return WithJsonBody


#: The optional ``Idempotency-Key`` request header of the submits (SPEC §8).
IDEMPOTENCY_KEY_HEADER = Parameter(
    name="Idempotency-Key",
    param_in=ParamType.HEADER,
    required=False,
    description="Sent again with the same body: the first answer again, no new job (`Idempotent-Replayed: true`).",
    schema=Schema(type=OpenAPIType.STRING, min_length=1, max_length=255, pattern="^[!-~]+$"),
)


def with_idempotency_key(base: type[Operation]) -> type[Operation]:
    """``operation_class=`` of a submit: ``base``'s, with the ``Idempotency-Key`` header."""

    @dataclass
    class Keyed(base):  # type: ignore[valid-type,misc]
        def __post_init__(self) -> None:
            base_init = getattr(super(), "__post_init__", None)
            if base_init is not None:
                base_init()
            operation: Operation = self
            operation.parameters = [*(operation.parameters or []), IDEMPOTENCY_KEY_HEADER]

    return Keyed


#: ``operation_class=`` of the handlers that take one job request, and a batch of them.
JOB_REQUEST_BODY = json_body(JOB_REQUEST_SCHEMA)
JOB_BATCH_BODY = json_body(Schema(type=OpenAPIType.ARRAY, items=JOB_REQUEST_SCHEMA))


def document_handlers(
    app: Litestar, route_handlers: Sequence[ControllerRouterHandler], dependencies: Mapping[str, Provide]
) -> None:
    """Add to ``app``'s OpenAPI document the operations of ``route_handlers``: HTTP
    handlers that describe paths ``app`` serves through ASGI routes, which Litestar leaves
    out of its document. They are registered on a documentation-only app, so the
    description is generated from their types and ``responses`` like every other one."""
    assert app.openapi_config is not None
    reference = Litestar(
        route_handlers=list(route_handlers),
        dependencies=dict(dependencies),
        openapi_config=OpenAPIConfig(title=app.openapi_config.title, version=app.openapi_config.version),
        logging_config=None,
    ).openapi_schema
    document = app.openapi_schema
    document.paths = {**(document.paths or {}), **(reference.paths or {})}
    schemas = document.components.schemas
    for name, schema in reference.components.schemas.items():
        schemas.setdefault(name, schema)
