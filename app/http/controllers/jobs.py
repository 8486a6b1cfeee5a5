"""``/api/jobs``: submit, batch, and read back a client's jobs.

Bodies and query strings are parsed here by hand (with msgspec) because their error
messages are part of the contract.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from litestar import Controller, MediaType, Request, get, post
from litestar.di import NamedDependency
from litestar.datastructures import MultiDict

from app.config import ServerSettings
from app.http.client import ClientIdentity
from app.http.errors import ApiError
from app.http.openapi import DATABASE, JOB_REQUEST, RATE_LIMITED, errors
from app.http.structs import JobId, JobResult
from app.jobs.requests import JobRejected, decode_batch, decode_job_request
from app.jobs.service import JobService, UnknownCursor

MAX_PAGE = 100_000


def _flag(query: MultiDict[str], name: str) -> bool | None:
    value = query.get(name)
    if value is None:
        return None
    if value in ("true", "false"):
        return value == "true"
    raise ApiError(400, "Invalid parameter", {"name": name, "value": value})


def _job_id(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ApiError(400, "Invalid job id", {"id": value}) from None


def _limit(query: MultiDict[str]) -> int | None:
    value = query.get("limit")
    if value is None:
        return None
    if not value.isdigit() or not 1 <= int(value) <= MAX_PAGE:
        raise ApiError(400, "Invalid parameter", {"name": "limit", "value": value})
    return int(value)


def _wait(query: MultiDict[str], limit: float) -> float | None:
    value = query.get("wait")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= limit:  # also NaN
        raise ApiError(400, "Invalid parameter", {"name": "wait", "value": value})
    return seconds


def _after(query: MultiDict[str]) -> str | None:
    value = query.get("after")
    if value is None:
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ApiError(400, "Invalid parameter", {"name": "after", "value": value}) from None


@dataclass(frozen=True, slots=True)
class JobsApi:
    """What the job endpoints need, injected as one dependency: Litestar resolves several
    dependencies of one handler in an anyio task group, which cost these, the busiest
    endpoints, about a tenth of the node's CPU."""

    jobs: JobService
    identity: ClientIdentity
    server: ServerSettings


class JobsController(Controller):
    path = "/api/jobs"
    tags = ["jobs"]

    @post("/", media_type=MediaType.JSON, status_code=200, summary="Submit a job",
          responses=errors(JOB_REQUEST, RATE_LIMITED, DATABASE))
    async def submit(self, request: Request[Any, Any, Any], jobs_api: NamedDependency[JobsApi]) -> JobId:
        try:
            job_request = decode_job_request(await request.body())
        except JobRejected as rejected:
            raise ApiError(400, rejected.error, rejected.params) from None
        (answer,) = await jobs_api.jobs.submit(jobs_api.identity.address(request), [job_request])
        if "error" in answer:
            raise ApiError(400, answer["error"], answer.get("params"))
        return JobId(answer["id"])

    @post("/batch", media_type=MediaType.JSON, status_code=200, summary="Submit jobs in one transaction",
          responses=errors({400: ["Expected a list", "Batch too large"], 413: ["Request body too large"]},
                           RATE_LIMITED, DATABASE))
    async def batch(self, request: Request[Any, Any, Any], jobs_api: NamedDependency[JobsApi]) -> list[dict[str, Any]]:
        server = jobs_api.server
        try:
            requests = decode_batch(await request.body())
        except JobRejected as rejected:
            raise ApiError(400, rejected.error) from None
        if len(requests) > server.max_batch:
            raise ApiError(400, "Batch too large", {"limit": server.max_batch, "size": len(requests)})
        return await jobs_api.jobs.submit(jobs_api.identity.address(request), requests)

    @get("/", media_type=MediaType.JSON, summary="Results by id, or this client's job ids",
         responses=errors({400: ["Invalid job id", "Too many ids", "Invalid parameter"]}, RATE_LIMITED, DATABASE),
         description="With `id`: `wait=<seconds>` (up to `server.max_wait`) answers once none of those "
                     "jobs is running any more, or when the time is up. Without `wait`, a read of jobs that "
                     "are all running on this node is held up to `server.poll_hold` seconds the same way.")
    async def read(self, request: Request[Any, Any, Any], jobs_api: NamedDependency[JobsApi]) -> list[JobResult] | list[str]:
        jobs, server = jobs_api.jobs, jobs_api.server
        query = request.query_params
        raw_ids = query.getall("id", [])
        client = jobs_api.identity.address(request)
        if raw_ids:
            if len(raw_ids) > server.max_ids:
                raise ApiError(400, "Too many ids", {"limit": server.max_ids})
            ids = [_job_id(value) for value in raw_ids]
            intermediate = _flag(query, "intermediate") or False
            wait = _wait(query, server.max_wait)
            return await jobs.results(client, ids, intermediate, wait, server.poll_hold)  # type: ignore[return-value]
        pending = _flag(query, "pending")
        limit, after = _limit(query), _after(query)
        try:
            return await jobs.job_ids(client, pending, after, limit)
        except UnknownCursor:
            raise ApiError(400, "Invalid parameter", {"name": "after", "value": after}) from None
