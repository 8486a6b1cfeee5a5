"""``POST /api/jobs/stream`` and ``GET /resources``: the calls Infernet clients make that
go straight to a container."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, MediaType, Request, get, post
from litestar.di import NamedDependency
from litestar.params import QueryParameter
from litestar.response import Stream

from app.containers.resources import ResourceService
from app.errors import STREAM_NO_SUBSCRIPTIONS, STREAM_NO_WEBHOOKS, STREAM_ONE_CONTAINER
from app.http.identity import ClientIdentity
from app.http.openapi import BAD_REQUEST, CROSS_SITE, DATABASE, JOB_REQUEST, JOB_REQUEST_BODY, RATE_LIMITED, errors
from app.jobs.requests import decode_job_request
from app.jobs.stream import StreamService


class StreamController(Controller):
    tags = ["containers"]

    @post(
        "/api/jobs/stream",
        status_code=200,
        summary="Run a one-container job and stream its output",
        media_type=MediaType.TEXT,
        operation_class=JOB_REQUEST_BODY,
        responses=errors(
            JOB_REQUEST,
            STREAM_NO_SUBSCRIPTIONS,
            STREAM_NO_WEBHOOKS,
            STREAM_ONE_CONTAINER,
            CROSS_SITE,
            RATE_LIMITED,
            DATABASE,
        ),
    )
    async def stream(
        self,
        request: Request[Any, Any, Any],
        streams: NamedDependency[StreamService],
        identity: NamedDependency[ClientIdentity],
    ) -> Stream:
        job_request = decode_job_request(await request.body(), streams.max_json_depth)
        job = await streams.open(identity.address(request), job_request)
        return Stream(streams.run(job), media_type=MediaType.TEXT)

    @get(
        "/resources",
        media_type=MediaType.JSON,
        summary="Each container's service resources",
        responses=errors(BAD_REQUEST, RATE_LIMITED),
    )
    async def resources(
        self,
        resources: NamedDependency[ResourceService],
        model_id: Annotated[str | None, QueryParameter(description="Passed on to each container")] = None,
    ) -> dict[str, Any]:
        return await resources.collect(model_id)
