"""Run one claimed job's chain, resuming after its last committed step (SPEC §3, §5)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from app import metrics
from app.clock import utcnow
from app.containers.client import CONNECTION, ContainerClient, StepFailed
from app.containers.state import ContainerState, ContainerStates
from app.db.batching import GroupCommit
from app.db.errors import is_database_unavailable, refused_value, short_message
from app.db.models import JobStatus
from app.errors import could_not_be_stored
from app.jobs.live import LiveJobs
from app.jobs.results import step_result
from app.jobs.transitions import JobStore
from app.jobs.values import ClaimedJob, LeaseLost, StepResult, StepRetry
from app.scheduler.backoff import retry_delay

log = logging.getLogger("jobnode.scheduler")

DATABASE_RETRY_SECONDS = 0.5
T = TypeVar("T")


class ChainRunner:
    def __init__(
        self, store: JobStore, states: ContainerStates, client: ContainerClient, live: LiveJobs | None = None
    ) -> None:
        self.store = store
        self.states = states
        self.client = client
        #: Polls of a running job are answered from here (``app.jobs.live``).
        self.live = live or LiveJobs()
        #: Steps finishing together (many jobs at once) share one transaction.
        self._commit: GroupCommit[StepResult, LeaseLost | None] = GroupCommit(store.record_steps)
        #: Jobs whose step is being committed (see ``committing``).
        self._committing: set[str] = set()
        #: Told when a job waits for a step retry (the claim loop's next due time).
        self.retry_scheduled: Callable[[datetime], None] | None = None
        # Each container's ``concurrency`` bounds the calls in flight to it.
        self._slots = {state.settings.id: asyncio.Semaphore(state.settings.concurrency) for state in states}

    async def run(self, job: ClaimedJob) -> None:
        """Raises ``LeaseLost`` when another node (or a cancel) took the job over. A job
        handed back for a step retry leaves without an outcome: a read waiting for it reads
        it again (``pending``, shown ``running``) and goes on waiting."""
        committed = [step_result(job.containers[s.position], s.output, s.error) for s in job.steps]
        self.live.started(job.id, job.client, committed)
        outcome = None
        try:
            outcome = await self._run_chain(job)
        finally:
            self.live.ended(job.id, outcome)

    async def _run_chain(self, job: ClaimedJob) -> str | None:
        """The status the job ended in (committed); None when it waits for a step retry."""
        data: Any = job.steps[-1].output if job.steps else job.input
        for position in range(len(job.steps), len(job.containers)):
            container_id = job.containers[position]
            state = self.states.get(container_id)
            started = utcnow()
            try:
                if state is None:
                    raise StepFailed(f"container {container_id} is not configured on this node", delivered=False)
                async with self._slots[container_id]:
                    if state.holds_jobs:
                        await self._wait_ready(state)
                    started = utcnow()
                    data = await self._call(state, job, data)
            except StepFailed as failed:
                metrics.step_failed(job, position, container_id, state, failed, started)
                retry = self._retry(job, position, state, failed, started)
                if retry is not None:
                    await self._record_retry(retry)
                    return None
                await self._record(job, position, started, error=failed.error)
                metrics.job_finished(job, "failed", container_id)
                return JobStatus.FAILED
            metrics.step_done(job, position, state, started)
            if await self._record(job, position, started, output=data) is not None:
                metrics.job_finished(job, "failed", container_id)
                return JobStatus.FAILED
        metrics.job_finished(job, "success")
        return JobStatus.SUCCESS

    async def _record(self, job: ClaimedJob, position: int, started: datetime, **result: Any) -> str | None:
        """Commit the step; the error it was committed with instead when its output could
        not be stored (the job then ends failed), else None."""
        step = StepResult(job, position, started, **result)
        self._committing.add(job.id)
        try:
            try:
                await self._outlasting_outages(job, lambda: self._commit_step(step))
            except LeaseLost:
                raise
            except Exception as exc:
                if step.error is not None or is_database_unavailable(exc):
                    raise
                step = self._refused(step, exc)
                await self._outlasting_outages(job, lambda: self._commit_step(step))
        finally:
            self._committing.discard(job.id)
        self.live.step_committed(job.id, job.containers[position], step.output, step.error)
        return step.error

    @staticmethod
    def _retry(
        job: ClaimedJob, position: int, state: ContainerState | None, failed: StepFailed, started: datetime
    ) -> StepRetry | None:
        """The step's next attempt, when its failure may be retried and its container's
        ``retry`` has attempts left; None: the job fails on this error."""
        if state is None or failed.retry_reason is None:
            return None
        made = job.step_retries.get(position, 0)
        if made >= state.settings.retry.attempts:
            return None
        finished = utcnow()
        delay = retry_delay(state.settings.retry, made, failed.retry_after)
        return StepRetry(
            job,
            position,
            made + 1,
            failed.error,
            failed.retry_reason,
            started,
            finished,
            finished + timedelta(seconds=delay),
        )

    async def _record_retry(self, retry: StepRetry) -> None:
        """Commit the wait: the job is pending until its retry is due, for any node."""
        self._committing.add(retry.job.id)
        try:
            await self._outlasting_outages(retry.job, lambda: self.store.record_retry(retry))
        finally:
            self._committing.discard(retry.job.id)
        metrics.step_retried(retry.job.containers[retry.position], retry.reason)
        log.info(
            "job %s: step %d: %s; attempt %d failed, the next at %s",
            retry.job.id,
            retry.position,
            retry.error,
            retry.attempt,
            retry.retry_at.isoformat(),
            extra={"job_id": retry.job.id, "container": retry.job.containers[retry.position]},
        )
        if self.retry_scheduled is not None:
            self.retry_scheduled(retry.retry_at)

    async def _commit_step(self, step: StepResult) -> None:
        lost = await self._commit(step)
        if lost is not None:
            raise lost

    @staticmethod
    def _refused(step: StepResult, exc: Exception) -> StepResult:
        """The step again, as a ``ContainerError``, when the database refused its output
        (committed alone: ``GroupCommit`` isolated it). The checks of ``app.storable``
        turn known cases away before; this is the net for the rest. Left to the reaper,
        the job would run again, calling its container again, for the same refusal."""
        reason = refused_value(exc) or f"{type(exc).__name__}: {short_message(exc)}"
        error = f"output {could_not_be_stored(reason.replace(chr(0), ''))}"
        log.warning(
            "job %s: step %d: %s",
            step.job.id,
            step.position,
            error,
            exc_info=exc,
            extra={"job_id": step.job.id, "container": step.job.containers[step.position]},
        )
        return StepResult(step.job, step.position, step.started_at, error=error, finished_at=step.finished_at)

    def committing(self, job_id: str) -> bool:
        """The job's step is being committed: the commit itself tells whether the job is
        still this node's (``LeaseLost``), and the job may already have ended by it. A
        lease renewal that finds the job no longer running must not take that for a loss."""
        return job_id in self._committing

    async def _outlasting_outages(self, job: ClaimedJob, action: Callable[[], Awaitable[T]]) -> T:
        """Wait out a database outage rather than give the job up (or call a container again).

        Writes are guarded by lease ownership, not by the clock: if another node's reaper
        re-queued the job meanwhile, the write fails with ``LeaseLost`` and writes nothing.
        """
        deadline = time.monotonic() + 2 * self.store.lease.total_seconds()
        while True:
            try:
                return await action()
            except Exception as exc:
                if not is_database_unavailable(exc) or time.monotonic() > deadline:
                    raise
                log.warning(
                    "job %s: database unavailable, retrying: %s",
                    job.id,
                    type(exc).__name__,
                    extra={"job_id": job.id, "container": None},
                )
                await asyncio.sleep(DATABASE_RETRY_SECONDS)

    async def _call(self, state: ContainerState, job: ClaimedJob, data: Any) -> Any:
        state.in_flight += 1
        try:
            output = await self.client.call(state.settings, state.base_url, data, job.requires_proof)
        except StepFailed:
            state.failed += 1
            raise
        finally:
            state.in_flight -= 1
        state.done += 1
        return output

    @staticmethod
    async def _wait_ready(state: ContainerState) -> None:
        """A container being (re)started is waited for, within its startup timeout, not called."""
        if not await state.wait_ready(state.settings.startup_timeout):
            reason = f": {state.last_error}" if state.last_error else ""
            error = f"container not ready ({state.readiness.value}{reason})"
            raise StepFailed(error, delivered=False, retry_reason=CONNECTION)
