"""SQLite's hot write transactions, each in one call to a thread of its own.

SQLite has one writer at a time, and under load the node's SQLite writes queue for it: the
writer connection was held 94 % of a burst's time. Through the async engine most of that
hold was not SQLite's work but the event loop's: a transaction is a checkout, ``BEGIN``,
each statement's cursor, execute, fetch and close, ``COMMIT`` and the pool's rollback on
return, each a hand-over between aiosqlite's thread and the event loop, which answers it
when it gets round to it between requests (3.6 ms held per transaction on average, for
well under a millisecond of SQLite's work), and the next transaction waits for the
check-in. Here a hot transaction (submit, claim, step commit, lease renewal) is one
function run by one thread on a connection of its own, ``BEGIN IMMEDIATE`` to ``COMMIT``,
through a synchronous SQLAlchemy engine (the same statements, types and errors); the
transactions queue in that thread's FIFO, so the writer goes from one to the next without
waiting for the event loop.

The transaction's body is the same ``async`` function PostgreSQL runs
(``Database.write_transaction``): on this connection nothing in it ever suspends (every
statement is synchronous underneath), so the thread runs it to the end with one
``send``. Cold writes (maintenance, operator actions, submits with an idempotency key or
subscriptions) keep the async engine's own writer connection, and take their turn in this
thread's queue (``turn``): the thread stands aside, no transaction open, while one runs.
Through SQLite's lock and busy handler alone they waited for the lock to be free between
two hot transactions, which follow each other within microseconds under load, sleeping 1
to 100 ms between tries: with 32 clients on one process an operator's cancel took 36 ms at
the median and up to 1.1 s (2 workers: 39 ms, up to 1.6 s).

While another process holds SQLite's write lock (``server.workers``, a CLI command), the
hot writer's ``BEGIN IMMEDIATE`` is tried again after short pauses (``BUSY_PAUSES``) until
the lock is free or ``database.statement_timeout`` has passed. SQLite's own busy handler
sleeps 1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50 and 100 ms between its tries: between two
node processes that each take the lock for a millisecond at a time, a write that found it
taken slept tens of milliseconds after it was free again. Two workers on SQLite, 32
clients, alternately against SQLite's handler (3 rounds): submit to result p99 38–49
against 90–191 ms, 1,991 / 1,937 against 1,641 / 1,574 jobs/s, the same CPU a job (p50
14–16 against 10.5–13 ms: the lock now changes hands more often). One process the same.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import URL, Connection, Result
from sqlalchemy.sql import Executable

from app.db.batching import release
from app.db.direct import DirectConnection, wrap

T = TypeVar("T")

#: The commit of a write whose loss in a power cut harms nothing (``durable=False``: a
#: claim) is not flushed: its WAL frames reach the disk with the next flushed commit, as
#: with PostgreSQL's ``synchronous_commit`` off. A process crash loses nothing either way.
_UNFLUSHED, _FLUSHED = "PRAGMA synchronous=NORMAL", "PRAGMA synchronous=FULL"
#: Seconds between tries of ``BEGIN IMMEDIATE`` while another process holds the write lock
#: (the last repeats until the deadline): the lock changes hands within a millisecond.
BUSY_PAUSES = (0.0001, 0.0002, 0.0003)
#: Set while the task's cold write holds the writer's turn (until the event is set): a hot
#: write from inside it would wait for the turn its own caller holds.
_TURN: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar("sqlite_writer_turn", default=None)


class _Immediate:
    """A synchronous connection seen as ``AsyncConnection`` by ``app.db.direct.wrap``:
    its ``execute`` is awaitable and never suspends."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.dialect = connection.dialect

    async def execute(self, statement: Executable, parameters: Any = None) -> Result[Any]:
        return self.connection.execute(statement, parameters)


def _run_to_end(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (its every await is ``_Immediate``'s)."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coroutine.close()
    raise RuntimeError("a SQLite write transaction waited for the event loop in the writer's thread")


class SqliteWriter:
    """One connection and one thread for the hot write transactions (opened at first use,
    in that thread: a SQLite connection stays in the thread that opened it)."""

    def __init__(self, engine: Engine, queue_timeout: float | None, busy_wait: float) -> None:
        self.engine = engine
        #: How long a transaction waits for a write lock held by another process.
        self.busy_wait = busy_wait
        #: A transaction still queued this long after it was asked for is not started: its
        #: caller has its error (as a pool checkout's deadline gives), never a write it was
        #: told failed. One that started runs to its end (``busy_wait`` bounds its wait for
        #: the lock).
        self.queue_timeout = queue_timeout
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jobnode-sqlite-writer")
        self._used = False
        #: Hot transactions asked for and not yet ended (queued or running).
        self._asked = 0

    async def run(self, body: Callable[[DirectConnection], Awaitable[T]], durable: bool) -> T:
        held = _TURN.get()
        if held is not None and not held.is_set():
            raise RuntimeError("a hot SQLite write inside a cold write transaction would wait for itself")
        asked = time.monotonic()
        self._used = True
        self._asked += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._thread, self._transaction, body, durable, asked
            )
        finally:
            self._asked -= 1

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """While hot transactions are queued or running, the thread stands aside, with no
        transaction open, until the caller's write on another connection has ended: that
        write waits behind the hot transactions asked for before it, as a hot one would, and
        those asked for after it wait for it. While none are, the caller goes at once (a
        hot transaction asked for meanwhile waits for the lock as for another process's):
        standing aside costs a round trip to the thread, which halved the rate of submits
        with an idempotency key (cold writes) on a node running nothing else. The wait for
        the turn has the deadline of a queued transaction (``queue_timeout``); the thread
        goes on by itself after ``busy_wait`` (as long as its own transactions wait for a
        lock)."""
        over = threading.Event()
        token = _TURN.set(over)
        try:
            if self._asked:
                await self._stand_aside(over)
            yield
        finally:
            over.set()
            _TURN.reset(token)

    async def _stand_aside(self, over: threading.Event) -> None:
        """Once the thread has reached this in its queue: it then waits until ``over``."""
        loop = asyncio.get_running_loop()
        standing: asyncio.Future[None] = loop.create_future()

        def stand_aside() -> None:
            if not over.is_set():
                loop.call_soon_threadsafe(release, standing)
                over.wait(self.busy_wait)

        loop.run_in_executor(self._thread, stand_aside)
        try:
            await asyncio.wait_for(standing, self.queue_timeout)
        except TimeoutError:
            raise TimeoutError("the SQLite writer was busy for longer than database.statement_timeout") from None

    def _transaction(self, body: Callable[[DirectConnection], Awaitable[T]], durable: bool, asked: float) -> T:
        if self.queue_timeout is not None and time.monotonic() - asked > self.queue_timeout:
            raise TimeoutError("the SQLite writer was busy for longer than database.statement_timeout")
        with self.engine.connect() as connection:
            driver = connection.connection.driver_connection  # outside SQLAlchemy's autobegin
            assert driver is not None
            if not durable:
                driver.execute(_UNFLUSHED)
            try:
                with connection.begin():
                    begin_immediate(driver, self.busy_wait, BUSY_PAUSES, time.sleep)
                    coroutine = body(wrap(_Immediate(connection)))  # type: ignore[arg-type]
                    return _run_to_end(coroutine)  # type: ignore[arg-type]
            finally:
                if not durable:
                    driver.execute(_FLUSHED)

    async def close(self) -> None:
        """Close the connection in its own thread (none was opened, and no thread started,
        on a node that wrote nothing: the CLI's reads), then the thread."""
        if self._used:
            await asyncio.get_running_loop().run_in_executor(self._thread, self.engine.dispose)
        self._thread.shutdown(wait=False)


def begin_immediate(driver: Any, busy_wait: float, pauses: Sequence[float], sleep: Callable[[float], object]) -> None:
    """``BEGIN IMMEDIATE`` on a connection without a busy timeout (``driver``: anything
    with the DB-API's ``execute``), tried again after each of ``pauses`` (the last
    repeating) while another process holds the write lock, until ``busy_wait`` has passed."""
    give_up = time.monotonic() + busy_wait
    for attempt in itertools.count():
        try:
            driver.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY:
                raise
        pause = pauses[min(attempt, len(pauses) - 1)]
        if time.monotonic() + pause > give_up:
            break
        sleep(pause)
    raise TimeoutError("another process held the SQLite write lock for longer than database.statement_timeout")


def sqlite_writer(url: URL, queue_timeout: float | None, busy_wait: float, **engine_options: Any) -> SqliteWriter:
    """The writer for an ``sqlite+aiosqlite`` URL: the same file through the standard driver."""
    engine = create_engine(url.set(drivername="sqlite"), pool_size=1, max_overflow=0, **engine_options)
    return SqliteWriter(engine, queue_timeout, busy_wait)
