"""A new job's row, as a submit and a stream store it (``INSERT_JOBS``'s columns)."""

from __future__ import annotations

import logging
import os
from datetime import datetime
from typing import Any

from app.db.errors import is_database_unavailable, refused_value
from app.db.models import JobStatus
from app.errors import DATABASE_UNAVAILABLE, INTERNAL_ERROR, INVALID_JOB_REQUEST, could_not_be_stored
from app.jobs.requests import JobRequest

log = logging.getLogger("jobnode.jobs")


def new_job_id() -> str:
    """A random (version 4) UUID as text: ``str(uuid.uuid4())`` without the UUID object,
    which was a sixth of the node's time in batch ingest."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40
    raw[8] = raw[8] & 0x3F | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def pending_row(request: JobRequest, client: str, now: datetime, job_id: str | None = None) -> dict[str, Any]:
    """A new job waiting for a claim: its columns, in ``INSERT_JOBS``'s order (a new id
    unless ``job_id`` is given)."""
    return {
        "id": job_id or new_job_id(),
        "client": client,
        "source": "offchain",
        "containers": request.containers,
        "input": request.data,
        "requires_proof": request.requires_proof,
        "status": JobStatus.PENDING,
        "attempts": 0,
        "stream": False,
        "lease_owner": None,
        "lease_expires_at": None,
        "run_after": now,
        "created_at": now,
        "started_at": None,
        "webhook": request.webhook,
    }


def refused_answer(job_id: str, exc: BaseException) -> dict[str, Any]:
    """A batch item's answer when its job alone could not be stored."""
    reason = refused_value(exc)
    if reason is not None:
        return INVALID_JOB_REQUEST.body({"reason": f"data {could_not_be_stored(reason)}"})
    if is_database_unavailable(exc):
        return DATABASE_UNAVAILABLE.body()
    log.error("job %s of a batch could not be stored", job_id, exc_info=exc)
    return INTERNAL_ERROR.body()
