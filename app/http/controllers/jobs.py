"""``/api/jobs``: submit, batch, and read back a client's jobs.

Bodies and query strings are parsed here by hand (with msgspec) because their error
messages are part of the contract. ``submit_job`` and ``read_jobs`` are what the two
busiest requests do; ``app.http.controllers.jobs_endpoint`` serves them, and
``JobsReference`` describes them in the OpenAPI document.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
from litestar import Controller, MediaType, Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.datastructures import MultiDict
from litestar.di import NamedDependency
from litestar.openapi.spec import OpenAPI, Operation, Parameter, Schema
from litestar.params import JSONBody, QueryParameter

from app.config.settings import ServerSettings
from app.errors import (
    BATCH_TOO_LARGE,
    BODY_TOO_LARGE,
    EXPECTED_LIST,
    IDEMPOTENCY_KEY_REUSED,
    INVALID_JOB_ID,
    INVALID_PARAMETER,
    TOO_MANY_IDS,
    ClientError,
    spec_of,
)
from app.http import params
from app.http.identity import ClientIdentity
from app.http.openapi import (
    CROSS_SITE,
    DATABASE,
    JOB_BATCH_BODY,
    JOB_REQUEST,
    RATE_LIMITED,
    errors,
    with_idempotency_key,
)
from app.http.structs import ErrorBody, JobId, JobResult
from app.jobs.idempotency import IdempotencyKey, Submitted
from app.jobs.requests import JobRequest, decode_batch, decode_job_request
from app.jobs.service import JobService, UnknownCursor

MAX_PAGE = 100_000
#: The request header of an idempotent submit (SPEC §8), and the response header of a replay.
IDEMPOTENCY_KEY = "idempotency-key"
REPLAYED = {"Idempotent-Replayed": "true"}


def _flag(query: MultiDict[str], name: str) -> bool | None:
    value = query.get(name)
    return None if value is None else params.flag(name, value)


def _limit(query: MultiDict[str]) -> int | None:
    value = query.get("limit")
    return None if value is None else params.integer("limit", value, 1, MAX_PAGE)


def _wait(query: MultiDict[str], limit: float) -> float | None:
    value = query.get("wait")
    return None if value is None else params.decimal("wait", value, 0, limit)


def _after(query: MultiDict[str]) -> str | None:
    value = query.get("after")
    return None if value is None else params.uuid_param("after", value)


@dataclass(frozen=True, slots=True)
class JobsApi:
    """What the job endpoints need, injected as one dependency: Litestar resolves several
    dependencies of one handler in an anyio task group, which cost these, the busiest
    endpoints, about a tenth of the node's CPU."""

    jobs: JobService
    identity: ClientIdentity
    server: ServerSettings


async def submit_job(api: JobsApi, connection: ASGIConnection[Any, Any, Any, Any], body: bytes) -> dict[str, str]:
    """``POST /api/jobs``: the stored job's id, or a ``ClientError`` (``JobRejected``)."""
    job_request = decode_job_request(body, api.server.max_json_depth)
    (answer,) = await api.jobs.submit(api.identity.address(connection), [job_request])
    if "error" in answer:
        raise ClientError(spec_of(answer), answer.get("params"))
    return answer


async def submit_job_keyed(
    api: JobsApi, connection: ASGIConnection[Any, Any, Any, Any], body: bytes, key: str
) -> Submitted:
    """``POST /api/jobs`` with an ``Idempotency-Key`` (SPEC §8): the first answer again to
    the same body (``replayed``), a 409 to another."""
    keyed = IdempotencyKey.of(params.idempotency_key(key), "POST /api/jobs", body)
    job_request = decode_job_request(body, api.server.max_json_depth)
    submitted = await api.jobs.submit_keyed(api.identity.address(connection), [job_request], keyed, single=True)
    (answer,) = submitted.answers
    if "error" in answer:
        raise ClientError(spec_of(answer), answer.get("params"))
    return submitted


async def read_jobs(api: JobsApi, connection: ASGIConnection[Any, Any, Any, Any]) -> list[dict[str, Any]] | list[str]:
    """``GET /api/jobs``: results by id (optionally waiting for them), or this client's ids."""
    jobs, server = api.jobs, api.server
    query = connection.query_params
    raw_ids = query.getall("id", [])
    client = api.identity.address(connection)
    if raw_ids:
        if len(raw_ids) > server.max_ids:
            raise TOO_MANY_IDS.error({"limit": server.max_ids})
        ids = [params.job_id(value) for value in raw_ids]
        intermediate = _flag(query, "intermediate") or False
        wait = _wait(query, server.max_wait)
        return await jobs.results(client, ids, intermediate, wait, server.poll_hold)
    pending = _flag(query, "pending")
    limit, after = _limit(query), _after(query)
    try:
        return await jobs.job_ids(client, pending, after, limit)
    except UnknownCursor:
        raise INVALID_PARAMETER.error({"name": "after", "value": after}) from None


_KEYED_DESCRIPTION = (
    "With an `Idempotency-Key` header (1 to 255 visible ASCII characters, kept per client for "
    "`retention.idempotency_hours`), the same body again is answered as the first time, with "
    "`Idempotent-Replayed: true`, and stores nothing; another body under the key is a 409."
)
_SUBMIT_DESCRIPTION = "Answers once the job is committed. " + _KEYED_DESCRIPTION
_READ_DESCRIPTION = (
    "With `id`: `wait=<seconds>` (up to `server.max_wait`) answers once none of those jobs is running any "
    "more, or when the time is up. Without `wait`, a read of jobs that are all running on this node is "
    "held up to `server.poll_hold` seconds the same way."
)


class JobsController(Controller):
    path = "/api/jobs"
    tags = ["jobs"]

    @post(
        "/batch",
        media_type=MediaType.JSON,
        status_code=200,
        summary="Submit jobs in one transaction",
        description='Each item is answered in place: `{"id"}`, or the `{"error", "params"?}` of a '
        "rejected job request. " + _KEYED_DESCRIPTION,
        operation_class=with_idempotency_key(JOB_BATCH_BODY),
        responses=errors(
            EXPECTED_LIST,
            BATCH_TOO_LARGE,
            INVALID_PARAMETER,
            IDEMPOTENCY_KEY_REUSED,
            BODY_TOO_LARGE,
            CROSS_SITE,
            RATE_LIMITED,
            DATABASE,
        ),
    )
    async def batch(
        self, request: Request[Any, Any, Any], jobs_api: NamedDependency[JobsApi]
    ) -> list[JobId | ErrorBody]:
        server = jobs_api.server
        key = request.headers.get(IDEMPOTENCY_KEY)
        keyed = None if key is None else params.idempotency_key(key)
        body = await request.body()
        requests = decode_batch(body, server.max_json_depth)
        if len(requests) > server.max_batch:
            raise BATCH_TOO_LARGE.error({"limit": server.max_batch, "size": len(requests)})
        client = jobs_api.identity.address(request)
        if keyed is None:
            return await jobs_api.jobs.submit(client, requests)  # type: ignore[return-value]
        submitted = await jobs_api.jobs.submit_keyed(
            client, requests, IdempotencyKey.of(keyed, "POST /api/jobs/batch", body), single=False
        )
        if submitted.replayed:
            return Response(submitted.answers, headers=REPLAYED)  # type: ignore[return-value]
        return submitted.answers  # type: ignore[return-value]


class JobsReference(Controller):
    """``GET`` and ``POST /api/jobs`` as the OpenAPI document shows them.

    Clients send these two requests for every job, so they are served by a plain ASGI
    route (``jobs_endpoint``) that skips Litestar's per-request handler machinery;
    Litestar documents only its HTTP handlers, hence these, registered on a
    documentation-only app (``app.http.openapi.document_handlers``). They run the same
    functions as the served route.
    """

    path = "/api/jobs"
    tags = ["jobs"]

    @post(
        "/",
        media_type=MediaType.JSON,
        status_code=200,
        summary="Submit a job",
        description=_SUBMIT_DESCRIPTION,
        operation_class=with_idempotency_key(Operation),
        responses=errors(JOB_REQUEST, INVALID_PARAMETER, IDEMPOTENCY_KEY_REUSED, CROSS_SITE, RATE_LIMITED, DATABASE),
    )
    async def submit(
        self, request: Request[Any, Any, Any], data: JSONBody[JobRequest], jobs_api: NamedDependency[JobsApi]
    ) -> JobId:
        """``data`` is there for the document (it puts ``JobRequest`` in it, which
        ``JOB_REQUEST_BODY`` refers to): the body is decoded by ``submit_job``."""
        return msgspec.convert(await submit_job(jobs_api, request, await request.body()), JobId)

    @get(
        "/",
        media_type=MediaType.JSON,
        summary="Results by id, or this client's job ids",
        responses=errors(INVALID_JOB_ID, TOO_MANY_IDS, INVALID_PARAMETER, RATE_LIMITED, DATABASE),
        description=_READ_DESCRIPTION,
    )
    async def read(
        self,
        request: Request[Any, Any, Any],
        jobs_api: NamedDependency[JobsApi],
        ids: Annotated[
            list[uuid.UUID],
            QueryParameter(
                name="id",
                required=False,
                description="A job's id; repeat it for several jobs (up to `server.max_ids`).",
            ),
        ],
        intermediate: Annotated[
            bool,
            QueryParameter(
                required=False, description="With `id`: also each step's output, as `intermediate_results`."
            ),
        ],
        wait: Annotated[
            float,
            QueryParameter(
                required=False,
                ge=0,
                description="With `id`: seconds to wait for the jobs to finish (up to `server.max_wait`).",
            ),
        ],
        pending: Annotated[
            bool,
            QueryParameter(
                required=False, description="Without `id`: only unfinished jobs (`true`) or finished ones (`false`)."
            ),
        ],
        limit: Annotated[
            int,
            QueryParameter(
                required=False, ge=1, le=MAX_PAGE, description="Without `id`: at most this many ids, oldest first."
            ),
        ],
        after: Annotated[
            uuid.UUID,
            QueryParameter(
                required=False, description="Without `id`: the ids after this one (the last id of the previous page)."
            ),
        ],
    ) -> list[JobResult | uuid.UUID]:
        """With ``id``, a list of results; without, a list of ids. The query is parsed by
        ``read_jobs`` (its 400s are part of the contract); the parameters are for the document."""
        return await read_jobs(jobs_api, request)  # type: ignore[return-value]


def document_read_limits(document: OpenAPI, server: ServerSettings) -> None:
    """The configured bounds of ``GET /api/jobs`` in ``document``: annotations are fixed
    when the module loads, ``server.max_ids`` and ``server.max_wait`` only per node."""
    assert document.paths is not None
    operation = document.paths["/api/jobs"].get
    assert operation is not None and operation.parameters is not None
    for parameter in operation.parameters:
        assert isinstance(parameter, Parameter) and isinstance(parameter.schema, Schema)
        if parameter.name == "id":
            parameter.schema.max_items = server.max_ids
        elif parameter.name == "wait":
            parameter.schema.maximum = server.max_wait
