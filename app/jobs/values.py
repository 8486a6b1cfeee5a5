"""What the scheduler, the store and the API pass each other about a running job."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from app.clock import utcnow
from app.db.models import JobStatus

CANCELLED_ERROR = "cancelled"


class LeaseLost(Exception):
    """This node no longer owns the job (its lease expired, or it was cancelled)."""


@dataclass(frozen=True, slots=True)
class CommittedStep:
    position: int
    output: Any
    error: str | None


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    id: str
    containers: list[str]
    input: dict[str, Any]
    requires_proof: bool
    attempts: int
    #: When the job was (re)queued (its ``run_after``): part of the claim's identity,
    #: and the start of its queued-to-started time.
    queued_at: datetime
    #: Steps committed before this claim (a resumed job continues after them).
    steps: tuple[CommittedStep, ...] = ()
    client: str = ""
    #: Failed attempts so far by step position (a container's ``retry``); empty for a job
    #: never retried, which never reads them.
    step_retries: dict[int, int] = field(default_factory=dict)

    @classmethod
    def inserted(cls, row: dict[str, Any]) -> ClaimedJob:
        """A job claimed by the INSERT that stored it (``app.jobs.handoff``), from that row."""
        return cls(
            row["id"],
            row["containers"],
            row["input"],
            row["requires_proof"],
            row["attempts"],
            row["run_after"],
            client=row["client"],
        )


@dataclass(frozen=True, slots=True)
class StepRetry:
    """A failed call of a step that will be tried again at ``retry_at`` (``retry``)."""

    job: ClaimedJob
    position: int
    #: 1-based, this step's.
    attempt: int
    error: str
    reason: str
    started_at: datetime
    finished_at: datetime
    retry_at: datetime


@dataclass(frozen=True, slots=True)
class StepResult:
    """One finished container call, to be committed."""

    job: ClaimedJob
    position: int
    started_at: datetime
    output: Any = None
    error: str | None = None
    #: When the call ended (the commit may come a little later, with others).
    finished_at: datetime = field(default_factory=utcnow)

    @property
    def claim(self) -> tuple[str, int, datetime]:
        return self.job.id, self.job.attempts, self.job.queued_at

    @property
    def ends_job_as(self) -> str | None:
        """The status the job ends in with this step, or None when the chain goes on."""
        if self.error is not None:
            return JobStatus.FAILED
        return JobStatus.SUCCESS if self.position == len(self.job.containers) - 1 else None
