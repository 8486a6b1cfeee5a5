"""Job events as they happen (``GET /api/jobs/events``, SPEC §9): a ``step`` event per
committed step, a ``job`` event when the job ended, for a stream that names several jobs.

Event ids come from stored rows, so that any node can serve a reconnect. A job's events
are numbered by what came before them: its step ``i`` is its event ``i + 1`` and its end
is the event after its last step. A stream's ``id:`` is its progress: how many events of
each named job were sent, in the order the query named the jobs (``Progress``). A
reconnect with ``Last-Event-ID`` sends, per job, the events after its count, read from
the job's row and its step rows: no global order, no log of events.

Where events come from (``EventFeed``, one per node):

* A job this node runs: ``app.jobs.live`` calls the feed the moment a step is committed
  and when the job ended, so a step goes out without a database read.
* Any other job (queued, run by another node or worker, or given up here): one shared
  reader re-reads ALL such watched jobs in one statement (``reads.RESULTS``) every
  ``RECHECK_SECONDS`` while streams watch them, and at once when a job ended elsewhere
  (the end NOTIFY of PostgreSQL, heard from the reader's first read on: ``LiveJobs.
  hear_elsewhere``) or a stream starts. Never a statement per stream.

The reader is a loop of the feed rather than a service of ``app.maintenance``: it runs
only while a stream watches a job that is not running here, and stops with the last.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from app.db.engine import Database
from app.db.errors import is_database_unavailable
from app.db.models import JobStatus
from app.db.statements import reads
from app.jobs.live import LiveJobs
from app.jobs.results import job_result, step_result
from app.loops import Outages

log = logging.getLogger("jobnode.events")

#: How often the jobs that are not running on this node are re-read while watched.
RECHECK_SECONDS = 0.2
#: Ids per statement: PostgreSQL takes at most 32,767 parameters.
READ_CHUNK = 1024
_COUNT = re.compile(r"[0-9]{1,9}")


class Progress:
    """A stream's ``id:``: per named job, how many of its events were sent, as decimal
    counts joined by dots in the order of the query's ids (``2.0.3``). Clients treat it
    as opaque; it only has to come back as ``Last-Event-ID``."""

    @staticmethod
    def parse(value: str, jobs: int) -> list[int] | None:
        """The counts of a ``Last-Event-ID`` for a stream of ``jobs`` jobs, or None when it
        is not one."""
        parts = value.split(".")
        if len(parts) != jobs or any(_COUNT.fullmatch(part) is None for part in parts):
            return None
        return [int(part) for part in parts]

    @staticmethod
    def format(counts: Sequence[int]) -> str:
        return ".".join(map(str, counts))


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A job as last seen: its owner (None: no such job), stored status and committed
    steps in chain order (``step_result`` bodies)."""

    client: str | None
    status: str
    steps: list[dict[str, Any]]

    @property
    def ended(self) -> bool:
        return self.status in JobStatus.FINISHED

    @property
    def progress(self) -> int:
        """How many of the job's events this snapshot holds."""
        return len(self.steps) + self.ended


MISSING = Snapshot(None, "", [])


@dataclass(frozen=True, slots=True)
class Event:
    name: str
    id: str
    data: dict[str, Any]


class Watch:
    """One stream's jobs: the newest snapshot of each that it has not handled yet."""

    def __init__(self, client: str, job_ids: list[str]) -> None:
        self.client = client
        self.job_ids = job_ids
        self.changed = asyncio.Event()
        self.news: dict[str, Snapshot] = {}
        #: Jobs of which nothing was seen yet; the stream answers once none is left.
        self.unseen = set(job_ids)
        self.seen = asyncio.Event()
        self.failure: BaseException | None = None
        self.closed = False

    def update(self, job_id: str, snapshot: Snapshot) -> None:
        old = self.news.get(job_id)
        if old is None or snapshot.progress >= old.progress:
            self.news[job_id] = snapshot
        self.changed.set()
        if self.unseen:
            self.unseen.discard(job_id)
            if not self.unseen:
                self.seen.set()

    def fail(self, exc: BaseException) -> None:
        """The first read of its jobs failed: the request is answered with it."""
        if self.unseen and self.failure is None:
            self.failure = exc
            self.seen.set()

    def take(self) -> dict[str, Snapshot]:
        news, self.news = self.news, {}
        self.changed.clear()
        return news

    async def first_seen(self) -> None:
        """Until every job was seen once; raises what made the database read fail."""
        await self.seen.wait()
        if self.failure is not None:
            raise self.failure


class EventFeed:
    """The node's source of job events, shared by every stream (see the module docstring)."""

    def __init__(self, database: Database, live: LiveJobs, recheck: float = RECHECK_SECONDS) -> None:
        self.database = database
        self.live = live
        self.recheck = recheck
        self._watches: dict[str, set[Watch]] = {}
        #: Jobs whose next read goes to every watch of them (a stream started, or the job
        #: left this node), changed or not.
        self._fresh: set[str] = set()
        #: (status, steps) of each job at its last read: unchanged jobs wake nobody.
        self._seen: dict[str, tuple[str, int]] = {}
        self._poke = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._outages = Outages(log)
        self.streams = 0
        self.closing = False

    def watch(self, client: str, job_ids: list[str]) -> Watch:
        """Start watching; a job running here is seen at once, the others at the next read."""
        watch = Watch(client, job_ids)
        self.streams += 1
        for job_id in job_ids:
            watches = self._watches.get(job_id)
            if watches is None:
                watches = self._watches[job_id] = set()
                self.live.listen(job_id, self._heard)
            watches.add(watch)
            running = self.live.peek(job_id)
            if running is not None:
                watch.update(job_id, Snapshot(running.client, JobStatus.RUNNING, running.steps))
            else:
                self._fresh.add(job_id)
        if self.closing:  # the node is stopping: this stream ends at once
            watch.seen.set()
        self._wake_reader()
        return watch

    def release(self, watch: Watch, job_id: str) -> None:
        """The stream has nothing more to send for this job."""
        watches = self._watches.get(job_id)
        if watches is None:
            return
        watches.discard(watch)
        if not watches:
            del self._watches[job_id]
            self.live.unlisten(job_id)
            self._seen.pop(job_id, None)
            self._fresh.discard(job_id)

    def unwatch(self, watch: Watch) -> None:
        """The stream ended or its client went away (idempotent)."""
        if watch.closed:
            return
        watch.closed = True
        self.streams -= 1
        for job_id in watch.job_ids:
            self.release(watch, job_id)

    def watched_jobs(self) -> int:
        return len(self._watches)

    def close(self) -> None:
        """The node is stopping: streams end now (clients reconnect elsewhere). Called from
        a signal handler too, hence the streams are woken by the loop, not from here."""
        self.closing = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        loop.call_soon_threadsafe(self._end_streams)

    def _end_streams(self) -> None:
        for watches in list(self._watches.values()):
            for watch in watches:
                watch.changed.set()

    async def stop(self) -> None:
        self.close()
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    def _heard(self, job_id: str, client: str | None, status: str | None, steps: list[dict[str, Any]] | None) -> None:
        """From ``LiveJobs``: a step committed or the job ended here; or read it again."""
        if client is None or status is None or steps is None:
            self._fresh.add(job_id)
            self._wake_reader()
            return
        snapshot = Snapshot(client, status, steps)
        for watch in self._watches.get(job_id, ()):
            watch.update(job_id, snapshot)

    def _wake_reader(self) -> None:
        self._poke.set()
        if self._reader is None and not self.closing:
            self._reader = asyncio.create_task(self._read_loop(), name="jobnode-events")

    async def _read_loop(self) -> None:
        try:
            while self._watches:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.recheck):
                        await self._poke.wait()
                self._poke.clear()
                await self._read_once()
        finally:
            if self._reader is asyncio.current_task():
                self._reader = None

    async def _read_once(self) -> None:
        fresh, self._fresh = self._fresh, set()
        job_ids: list[str] = []
        for job_id in self._watches:
            running = self.live.peek(job_id)
            if running is None:
                job_ids.append(job_id)
            elif job_id in fresh:  # started here since: its steps are those of memory
                snapshot = Snapshot(running.client, JobStatus.RUNNING, running.steps)
                for watch in list(self._watches[job_id]):
                    watch.update(job_id, snapshot)
        if not job_ids:
            return
        with contextlib.suppress(TimeoutError):  # their end heard of before they are read
            async with asyncio.timeout(self.recheck):
                await self.live.hear_elsewhere()
        try:
            snapshots = await self._read(job_ids)
        except Exception as exc:
            self._fresh |= fresh
            self._failed(fresh, exc)
            return
        self._outages.reached("event feed")
        for job_id in job_ids:
            watches = self._watches.get(job_id)
            if not watches:
                continue
            snapshot = snapshots.get(job_id, MISSING)
            state = (snapshot.status, len(snapshot.steps))
            if job_id in fresh or self._seen.get(job_id) != state:
                self._seen[job_id] = state
                for watch in list(watches):
                    watch.update(job_id, snapshot)

    def _failed(self, fresh: set[str], exc: Exception) -> None:
        if is_database_unavailable(exc):
            self._outages.lost("event feed", exc)
        else:
            log.error("event feed: reading the watched jobs failed", exc_info=exc)
        for job_id in fresh:
            for watch in list(self._watches.get(job_id, ())):
                watch.fail(exc)

    async def _read(self, job_ids: list[str]) -> dict[str, Snapshot]:
        """Every job in one statement per ``READ_CHUNK`` (a job and its steps in one)."""
        found: dict[str, tuple[str, str, list[dict[str, Any]]]] = {}
        async with self.database.direct_read() as conn:
            for start in range(0, len(job_ids), READ_CHUNK):
                chunk = job_ids[start : start + READ_CHUNK]
                for job_id, client, status, container, output, error in await conn.fetch(reads.RESULTS, {"ids": chunk}):
                    key = str(job_id)
                    entry = found.get(key)
                    if entry is None:
                        entry = found[key] = (client, status, [])
                    if container is not None:
                        entry[2].append(step_result(container, output, error))
        return {job_id: Snapshot(client, status, steps) for job_id, (client, status, steps) in found.items()}

    async def events(self, watch: Watch, counts: list[int], keepalive: float) -> AsyncIterator[Event | None]:
        """The stream's events after ``counts`` (its ``Last-Event-ID``, or zeros), then one
        per step and per end as they happen; None every ``keepalive`` seconds of silence.
        Ends when every job of the client ended (others' and unknown ids are left out)."""
        try:
            async for event in self._events(watch, counts, keepalive):
                yield event
        finally:
            self.unwatch(watch)

    async def _events(self, watch: Watch, counts: list[int], keepalive: float) -> AsyncIterator[Event | None]:
        position = {job_id: i for i, job_id in enumerate(watch.job_ids)}
        open_jobs = set(watch.job_ids)
        while open_jobs and not self.closing:
            if not watch.changed.is_set():
                try:
                    async with asyncio.timeout(keepalive):
                        await watch.changed.wait()
                except TimeoutError:
                    yield None
                    continue
            for job_id, snapshot in watch.take().items():
                if job_id not in open_jobs:
                    continue
                i = position[job_id]
                if snapshot.client != watch.client:
                    open_jobs.discard(job_id)  # another client's, or no such job: left out
                    self.release(watch, job_id)
                    continue
                for index in range(counts[i], len(snapshot.steps)):
                    counts[i] = index + 1
                    yield Event(
                        "step", Progress.format(counts), {"id": job_id, "index": index, **snapshot.steps[index]}
                    )
                if snapshot.ended:
                    if counts[i] <= len(snapshot.steps):
                        counts[i] = len(snapshot.steps) + 1
                        result = job_result(job_id, snapshot.status, snapshot.steps, intermediate=True)
                        yield Event("job", Progress.format(counts), result)
                    open_jobs.discard(job_id)
                    self.release(watch, job_id)
