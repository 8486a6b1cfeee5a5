"""One dedicated asyncpg connection per node on PostgreSQL, for two things a pool cannot do:

* ``LISTEN`` for new jobs submitted on other nodes (their submit sends ``NOTIFY``), for
  cancels made on other nodes, for subscriptions added or cancelled on other nodes (the
  ticker), and, while a read or stream here waits for a job that does not run here, for
  jobs that other nodes ended (``hear_ended``);
* a session-level advisory lock that elects the one node running the reaper and pruner.
  When that node dies its connection closes, PostgreSQL frees the lock, and another
  node takes it at its next try.

It reconnects by itself; while it is down the scheduler still polls and no node leads
(maintenance simply waits), so losing it costs latency, never correctness.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import asyncpg

from app.db.engine import Database, asyncpg_timeouts
from app.db.errors import describe
from app.db.signal import CHANNEL, ENDED_CHANNEL, LEASE_CHANNEL, SUBSCRIPTIONS_CHANNEL, WEBHOOKS_CHANNEL, JobSignal

log = logging.getLogger("jobnode.db")

#: Advisory lock key of the maintenance leader ("jobnode-leader" in spirit).
LEADER_LOCK_KEY = 0x6A6E6C656164
#: How long the node goes on hearing of jobs ended elsewhere after the last read or
#: stream here that waited for one: a LISTEN and an UNLISTEN per waiting read would cost
#: more than the notifications heard meanwhile.
ENDED_LINGER_SECONDS = 10.0


class NodeConnection:
    def __init__(
        self,
        database: Database,
        signal: JobSignal,
        retry_seconds: float = 1.0,
        on_ended: Callable[[list[str]], None] | None = None,
    ) -> None:
        self.dsn = database.url.set(drivername="postgresql").render_as_string(hide_password=False)
        #: The node's deadlines: a keep-alive or leader check without an answer fails in
        #: seconds, and the connection is replaced.
        self.timeouts = asyncpg_timeouts(database.connect_timeout, database.statement_timeout)
        self.signal = signal
        self.on_ended = on_ended
        self.retry_seconds = retry_seconds
        self._conn: asyncpg.Connection | None = None
        self._leader = False
        self._task: asyncio.Task[None] | None = None
        #: One query at a time on the connection: the keep-alive and the leader check
        #: would otherwise meet ("another operation is in progress").
        self._querying = asyncio.Lock()
        #: Set once LISTEN is in place; until ``start`` returns, a new connection wakes no
        #: claim loop, since the scheduler's first claim comes after it.
        self._listening = asyncio.Event()
        self._started = False
        #: ``LISTEN`` on ``ENDED_CHANNEL`` is in place: only while something here waits for
        #: a job run elsewhere. Every node's step commits announce the jobs they end, and
        #: each announcement heard cost a node 61-77 µs of CPU (``tests/bench/crosstalk.py``)
        #: though nobody here waited for it.
        self._hearing_ended = False
        self._ended_wanted_at = -ENDED_LINGER_SECONDS
        self._ended_listen: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Waits for the first LISTEN, up to the connect deadline: a wake-up sent on
        connecting would start a second claim just after the scheduler's first one, and
        the first submits would find every free slot held by it (their jobs then wait
        for that claim to end instead of being claimed by their INSERT)."""
        self._task = asyncio.create_task(self._keep_connected(), name="jobnode-listen")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.timeouts["timeout"]):
                await self._listening.wait()
        self._started = True

    async def stop(self) -> None:
        for task in (self._task, self._ended_listen):
            if task:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._close()

    async def is_leader(self) -> bool:
        """True while this node holds the maintenance lock; tries to take it when free."""
        conn = self._conn
        if conn is None or conn.is_closed():
            self._leader = False
            return False
        if not self._leader:
            try:
                async with self._querying:
                    self._leader = bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", LEADER_LOCK_KEY))
            except (asyncpg.PostgresError, OSError):
                self._leader = False
        return self._leader

    @property
    def hearing_ended(self) -> bool:
        return self._hearing_ended

    async def hear_ended(self) -> bool:
        """Something here waits for a job that runs elsewhere: hear of jobs ended elsewhere
        from now on, until ``ENDED_LINGER_SECONDS`` after the last such call. True when the
        ``LISTEN`` was not in place as this was called and is now: a read made before it
        may have missed the end, so the caller reads again before it waits. False when it
        was in place already, or could not be put in place (the caller's re-reads cover)."""
        self._ended_wanted_at = time.monotonic()
        if self._hearing_ended or self.on_ended is None:
            return False
        if self._ended_listen is None or self._ended_listen.done():
            self._ended_listen = asyncio.create_task(self._listen_ended(), name="jobnode-listen-ended")
        await asyncio.shield(self._ended_listen)  # a caller that gives up leaves it running
        return self._hearing_ended

    async def _listen_ended(self) -> None:
        async with self._querying:
            conn = self._conn
            if self._hearing_ended or conn is None or conn.is_closed():
                return
            try:
                await conn.add_listener(ENDED_CHANNEL, self._on_notify)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                return  # the connection's own loop notices and reconnects
            except Exception:  # never the waiting read's failure: its re-reads cover
                log.exception("LISTEN %s failed", ENDED_CHANNEL)
                return
            self._hearing_ended = True

    async def _unlisten_ended(self, conn: asyncpg.Connection) -> None:
        """Under ``_querying``: stop hearing once nothing waited for a linger."""
        if self._hearing_ended and time.monotonic() - self._ended_wanted_at > ENDED_LINGER_SECONDS:
            self._hearing_ended = False  # before the UNLISTEN: a read arriving now listens again
            await conn.remove_listener(ENDED_CHANNEL, self._on_notify)

    def _on_notify(self, _conn: Any, _pid: int, channel: str, sender: str) -> None:
        if channel == ENDED_CHANNEL:
            if self.on_ended is not None:
                self.on_ended(self.signal.ended_ids(sender))
        elif sender != self.signal.sender:  # (its own: woken in-process already)
            self.signal.wake_from_elsewhere(channel)

    async def _keep_connected(self) -> None:
        lost = False  # logged once per outage, not at every retry
        while True:
            try:
                self._conn = await asyncpg.connect(self.dsn, **self.timeouts)
                await self._conn.add_listener(CHANNEL, self._on_notify)
                await self._conn.add_listener(LEASE_CHANNEL, self._on_notify)
                await self._conn.add_listener(SUBSCRIPTIONS_CHANNEL, self._on_notify)
                await self._conn.add_listener(WEBHOOKS_CHANNEL, self._on_notify)
                log.info("listening for new jobs on %s", CHANNEL)
                lost = False
                self._listening.set()
                if self._started:  # jobs may have arrived while we were not listening
                    self.signal.notify()
                self.signal.subscriptions_changed()  # and subscriptions
                self.signal.webhooks_changed()  # and webhook deliveries
                if time.monotonic() - self._ended_wanted_at <= ENDED_LINGER_SECONDS:
                    await self._listen_ended()  # reads were waiting for jobs run elsewhere
                while not self._conn.is_closed():
                    await asyncio.sleep(self.retry_seconds)
                    async with self._querying:
                        await self._conn.execute("SELECT 1")
                        await self._unlisten_ended(self._conn)
            except asyncio.CancelledError:
                self._leader = False
                raise  # stop() closes the connection
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                if not lost:
                    log.warning("listen connection lost (%s); retrying every %g s", describe(exc), self.retry_seconds)
                lost = True
            self._leader = False
            self._drop()
            await asyncio.sleep(self.retry_seconds)

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)

    def _drop(self) -> None:
        """A lost connection is terminated, not closed: closing waits for the server."""
        conn, self._conn = self._conn, None
        self._hearing_ended = False
        if conn is not None:
            conn.terminate()
