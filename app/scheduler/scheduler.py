"""Claim as much work as there is free capacity, run it, keep its leases alive.

Jobs submitted to this process while it has free capacity and nothing is waiting are
claimed by their INSERT and handed over at once (``app.jobs.handoff``). Everything else
is claimed by one loop (woken at once by a submit in this process or a NOTIFY from
another node, with a slow poll as the fallback, and at the time the earliest pending job
is due: a step retry waiting in the database); one renews leases. Reaping expired
leases, pruning old jobs and taking back orphans are not its work (``app.maintenance``).
A graceful stop stops claiming, lets running steps finish within the grace period and
hands the rest back to ``pending``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime
from typing import Any

from app import metrics
from app.clock import utcnow
from app.config.settings import Settings
from app.db.errors import describe, is_database_unavailable
from app.db.signal import JobSignal
from app.jobs.transitions import JobStore
from app.jobs.values import ClaimedJob, LeaseLost
from app.loops import Outages, every
from app.scheduler.chain import ChainRunner

log = logging.getLogger("jobnode.scheduler")


class Scheduler:
    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        runner: ChainRunner,
        signal: JobSignal,
    ) -> None:
        self.config = settings.scheduler
        self.store = store
        self.runner = runner
        self.signal = signal
        self.running: dict[str, asyncio.Task[None]] = {}
        self._loops: list[asyncio.Task[None]] = []
        self._stopping = False
        self._full = False
        #: Jobs the database may hold for this node to claim (pending, runnable): new jobs
        #: then queue behind them instead of being claimed by their INSERT.
        self._backlog = True
        #: Slots promised to submits whose INSERT claims their jobs, or to a claim under way.
        self._reserved = 0
        #: Counts the submits that left jobs pending: a claim that began before one of
        #: them may not have seen its jobs, so it cannot tell that nothing waits.
        self._queued = 0
        #: An outage is logged once per loop when it begins and once when it ends.
        self._outages = Outages(log)
        #: When the earliest pending job is due, as last read (``JobStore.next_due``) or
        #: learned from a step retry of this node: the claim loop wakes then.
        self._next_due: datetime | None = None
        runner.retry_scheduled = self._retry_scheduled

    async def start(self) -> None:
        """After the orphans are taken back (``app.maintenance.orphans``)."""
        # What waits is taken before the first request comes in: until a claim has found
        # out, new jobs queue behind whatever may be waiting (``_backlog``).
        claimed = await self._try_claim()
        self._loops = [
            asyncio.create_task(self._claim_loop(claimed), name="jobnode-claim"),
            asyncio.create_task(
                every("renew", self.config.lease_seconds / 3, self._renew, self._outages, self.signal.wait_leases),
                name="jobnode-lease",
            ),
        ]

    async def stop(self) -> None:
        # The claim loop is not cancelled but told to stop: a claim cancelled halfway would
        # leave its jobs claimed by nobody here (and, on SQLite, could strand the writer
        # connection inside its transaction).
        self._stopping = True
        self.signal.notify()
        if self._loops:
            await asyncio.gather(self._loops[0], return_exceptions=True)
        if self.running:
            log.info("waiting up to %g s for %d running jobs", self.config.shutdown_grace, len(self.running))
            await asyncio.wait(list(self.running.values()), timeout=self.config.shutdown_grace)
        unfinished = list(self.running)
        for task in self.running.values():
            task.cancel()
        await asyncio.gather(*self.running.values(), return_exceptions=True)
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        if unfinished:
            released = await self.store.release(unfinished)
            log.info("handed %d unfinished jobs back to pending", released)

    def _free(self) -> int:
        return self.config.max_concurrent_jobs - len(self.running) - self._reserved

    async def _claim(self) -> tuple[bool, int]:
        """Claim up to the free capacity (at most the store's ``max_claim``) and start what
        came: (full, how many). Full: more may be waiting."""
        free = min(self._free(), self.store.max_claim or self.config.max_concurrent_jobs)
        if free <= 0:
            return True, 0
        self._reserved += free
        queued = self._queued
        began = time.perf_counter()
        try:
            claimed = await self.store.claim(free)
        finally:
            self._reserved -= free
        metrics.CLAIM_DURATION.observe(time.perf_counter() - began)
        self._backlog = len(claimed) == free or self._queued != queued
        for job in claimed:
            self._spawn(job)
        return self._backlog, len(claimed)

    async def _try_claim(self) -> int | None:
        """``_claim``; None when it failed (logged), and the loop tries again after a poll."""
        try:
            self._full, claimed = await self._claim()
        except Exception as exc:
            if not is_database_unavailable(exc):
                log.exception("claim failed")
            else:
                self._outages.lost("claim", exc)
            return None
        self._outages.reached("claim")
        return claimed

    async def _claim_loop(self, claimed: int | None) -> None:
        """``claimed``: what the last claim took (None: it failed)."""
        timed_out = True
        while not self._stopping:
            if timed_out and claimed is not None:
                await self._read_next_due()
            timed_out = False
            if claimed is None:
                await asyncio.sleep(self.config.poll_interval)
            elif not (claimed and self._full):
                # Full: more may be waiting, so a finishing job wakes this loop; otherwise
                # only new jobs, the poll or a due retry do, and finishing jobs cost no
                # empty claims.
                timed_out = not await self.signal.wait(self._sleep_seconds())
            if not self._stopping:
                claimed = await self._try_claim()

    def _sleep_seconds(self) -> float:
        """Until the poll, or the earliest pending job's due time if sooner."""
        poll = self.config.poll_interval
        if self._next_due is None or self._full:  # full: a finishing job wakes the loop
            return poll
        due = (self._next_due - utcnow()).total_seconds()
        if due <= 0:
            # Due since the claim (a timer fires a little early; a claim and a read take a
            # few milliseconds), or claimed elsewhere meanwhile: claim now, read again.
            self._next_due = None
            return 0.0
        return min(poll, due)

    async def _read_next_due(self) -> None:
        """After a wake-up by time (the poll or a due time), not by a signal: a busy loop
        is woken by signals and reads nothing more than its claims. A due time learned
        from a step retry of this node while the read was under way (``_retry_scheduled``)
        is kept when it comes first: the read may have been answered before that retry
        was committed, and the retry would then wait for the poll."""
        self._next_due = None
        try:
            read = await self.store.next_due()
        except Exception as exc:
            if not is_database_unavailable(exc):
                log.exception("reading the next due time failed")
            return
        if read is not None and (self._next_due is None or read < self._next_due):
            self._next_due = read

    def _retry_scheduled(self, due: datetime) -> None:
        """A job of this node waits for a step retry: wake up for it, without a read."""
        if self._next_due is None or due < self._next_due:
            self._next_due = due
            self.signal.notify()

    # -- jobs claimed by their INSERT (``app.jobs.handoff.SubmitClaims``) ----------------
    def reserve(self, wanted: int) -> int:
        if self._stopping or self._backlog:
            return 0
        taken = max(0, min(wanted, self._free()))
        self._reserved += taken
        if taken < wanted:  # the rest is stored pending, for the claim loop
            self._backlog = True
            self._queued += 1
        return taken

    def claimed_columns(self, now: datetime) -> dict[str, Any]:
        return self.store.claimed_columns(now)

    def start_claimed(self, jobs: list[ClaimedJob], reserved: int) -> None:
        self._reserved -= reserved
        for job in jobs:
            self._spawn(job)

    def unreserve(self, reserved: int) -> None:
        self._reserved -= reserved

    def _spawn(self, job: ClaimedJob) -> None:
        task = asyncio.create_task(self._run(job), name=f"job-{job.id}")
        self.running[job.id] = task
        metrics.job_claimed(job)

    async def _run(self, job: ClaimedJob) -> None:
        try:
            await self.runner.run(job)
        except LeaseLost:
            metrics.job_abandoned(job.id, "lease lost: another node or a cancel took it over")
        except asyncio.CancelledError:
            if self._stopping:
                raise  # shutdown: stop() hands the job back
        except Exception as exc:
            # The job keeps its lease until it expires and is then retried (or failed) by the reaper.
            if is_database_unavailable(exc):
                log.warning(
                    "job %s: database unavailable, left for the reaper: %s",
                    job.id,
                    describe(exc),
                    extra={"job_id": job.id, "container": None},
                )
            else:
                log.exception("job %s: unexpected error", job.id, extra={"job_id": job.id, "container": None})
        finally:
            self.running.pop(job.id, None)
            if self._full:
                self.signal.notify()

    async def _renew(self) -> bool:
        held = list(self.running)
        if not held:
            return False  # nothing to renew: no database call
        still_held = await self.store.renew(held)
        for job_id in set(held) - still_held:
            task = self.running.get(job_id)
            if task is not None and not self.runner.committing(job_id):
                # cancelled, or taken over by another node: abandon its step
                metrics.job_abandoned(job_id, "no longer ours (cancelled or re-queued)")
                task.cancel()
        return True
