"""How stored rows read on the compatible surface (``JobResult`` of SPEC §1)."""

from __future__ import annotations

from typing import Any

from app.db.models import JobStatus

_API_STATUS = {
    JobStatus.PENDING: "running",
    JobStatus.RUNNING: "running",
    JobStatus.SUCCESS: "success",
    JobStatus.FAILED: "failed",
    JobStatus.CANCELLED: "failed",
}


def api_status(status: str) -> str:
    return _API_STATUS[status]


def step_result(container: str, output: Any, error: str | None) -> dict[str, Any]:
    """A ``ContainerOutput`` or a ``ContainerError``; a step row holds one of the two."""
    if error is not None:
        return {"container": container, "error": error}
    return {"container": container, "output": output}


def job_result(job_id: str, status: str, steps: list[dict[str, Any]], intermediate: bool) -> dict[str, Any]:
    """``steps`` are the job's committed steps in chain order.

    A finished job's last step row is its result (a failure is always recorded as a
    step with an error); while running there is no result and every committed step
    is intermediate.
    """
    finished = status in JobStatus.FINISHED
    result = steps[-1] if finished and steps else None
    body: dict[str, Any] = {"id": job_id, "status": api_status(status), "result": result}
    if intermediate:
        body["intermediate_results"] = steps[:-1] if finished else steps
    return body
