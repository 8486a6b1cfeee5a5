"""Operator endpoints: one job in full, cancel, re-queue, the containers' live state.

Guarded by ``operator_guard`` (token or loopback, see ``app.http.operator_auth``); the
compatible surface of ``/api/jobs`` stays open to clients as before.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Controller, MediaType, delete, get, post
from litestar.di import NamedDependency
from litestar.params import PathParameter

from app.errors import (
    INVALID_JOB_ID,
    JOB_ALREADY_FINISHED,
    JOB_HAS_NO_WEBHOOK,
    JOB_NOT_ENDED,
    JOB_NOT_FAILED,
    JOB_NOT_FOUND,
)
from app.http import params
from app.http.openapi import DATABASE, OPERATOR, OPERATOR_SECURITY, RATE_LIMITED, errors
from app.http.operator_auth import operator_guard
from app.http.operator_structs import ContainerLiveState, JobDetail
from app.jobs.actions import JobActions, JobConflict
from app.jobs.container_report import ContainerReport
from app.jobs.inspection import JobInspection, JobNotFound

#: Parsed by ``params.job_id`` (its 400 is part of the contract), documented as a UUID.
JobIdPath = Annotated[str, PathParameter(format="uuid", description="The job's id (a UUID)")]

_READ = errors(INVALID_JOB_ID, JOB_NOT_FOUND, OPERATOR, RATE_LIMITED, DATABASE)
_CANCEL = errors(INVALID_JOB_ID, JOB_NOT_FOUND, JOB_ALREADY_FINISHED, OPERATOR, RATE_LIMITED, DATABASE)
_RETRY = errors(INVALID_JOB_ID, JOB_NOT_FOUND, JOB_NOT_FAILED, OPERATOR, RATE_LIMITED, DATABASE)
_RESEND = errors(INVALID_JOB_ID, JOB_NOT_FOUND, JOB_HAS_NO_WEBHOOK, JOB_NOT_ENDED, OPERATOR, RATE_LIMITED, DATABASE)


async def _detail(action: object) -> JobDetail:
    try:
        detail = await action  # type: ignore[misc]
    except JobNotFound:
        raise JOB_NOT_FOUND.error() from None
    except JobConflict as conflict:
        raise conflict.spec.error() from None
    return msgspec.convert(detail, JobDetail)


class OperatorJobsController(Controller):
    path = "/api/jobs/{job_id:str}"
    tags = ["operator"]
    guards = [operator_guard]
    security = OPERATOR_SECURITY

    @get("/", media_type=MediaType.JSON, summary="One job in full: input, steps, timings, attempts", responses=_READ)
    async def show(self, job_id: JobIdPath, inspection: NamedDependency[JobInspection]) -> JobDetail:
        return await _detail(inspection.job(params.job_id(job_id)))

    @delete(
        "/", media_type=MediaType.JSON, status_code=200, summary="Cancel a job that has not finished", responses=_CANCEL
    )
    async def remove(self, job_id: JobIdPath, actions: NamedDependency[JobActions]) -> JobDetail:
        return await _detail(actions.cancel(params.job_id(job_id)))

    @post(
        "/cancel",
        media_type=MediaType.JSON,
        status_code=200,
        summary="Cancel a job that has not finished",
        description="The same as DELETE /api/jobs/{job_id}: the job ends `cancelled` (shown as `failed` with "
        'error "cancelled" on the compatible surface); its running step is abandoned.',
        responses=_CANCEL,
    )
    async def cancel(self, job_id: JobIdPath, actions: NamedDependency[JobActions]) -> JobDetail:
        return await _detail(actions.cancel(params.job_id(job_id)))

    @post(
        "/retry",
        media_type=MediaType.JSON,
        status_code=200,
        summary="Re-queue a failed or cancelled job",
        description="It resumes at the step that failed: steps that succeeded are not run again.",
        responses=_RETRY,
    )
    async def retry(self, job_id: JobIdPath, actions: NamedDependency[JobActions]) -> JobDetail:
        return await _detail(actions.retry(params.job_id(job_id)))

    @post(
        "/webhook",
        media_type=MediaType.JSON,
        status_code=200,
        summary="Send an ended job's result to its webhook again",
        description="A new delivery (a new `Jobnode-Delivery` id), retried like any other; the job in full, "
        "the new delivery last among `webhook.deliveries`.",
        responses=_RESEND,
    )
    async def resend_webhook(self, job_id: JobIdPath, actions: NamedDependency[JobActions]) -> JobDetail:
        return await _detail(actions.resend_webhook(params.job_id(job_id)))


class ContainersController(Controller):
    tags = ["operator"]
    guards = [operator_guard]
    security = OPERATOR_SECURITY

    @get(
        "/api/containers",
        media_type=MediaType.JSON,
        summary="Each container's live state on this node",
        description="Readiness, restarts, last error, calls in flight, done and failed counts since the node "
        "started, and the mean and p95 duration of its last calls (in-memory samples of this node).",
        responses=errors(OPERATOR, RATE_LIMITED),
    )
    async def containers(self, container_report: NamedDependency[ContainerReport]) -> list[ContainerLiveState]:
        return msgspec.convert(container_report.states(), list[ContainerLiveState])
