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
``send``. Cold writes (maintenance, operator actions) keep the async engine's own writer
connection; the two take turns through SQLite's lock and its busy timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import URL, Connection, Result
from sqlalchemy.sql import Executable

from app.db.direct import DirectConnection, wrap

T = TypeVar("T")

#: The commit of a write whose loss in a power cut harms nothing (``durable=False``: a
#: claim) is not flushed: its WAL frames reach the disk with the next flushed commit, as
#: with PostgreSQL's ``synchronous_commit`` off. A process crash loses nothing either way.
_UNFLUSHED, _FLUSHED = "PRAGMA synchronous=NORMAL", "PRAGMA synchronous=FULL"


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

    def __init__(self, engine: Engine, queue_timeout: float | None) -> None:
        self.engine = engine
        #: A transaction still queued this long after it was asked for is not started: its
        #: caller has its error (as a pool checkout's deadline gives), never a write it was
        #: told failed. One that started runs to its end (SQLite's busy timeout bounds it).
        self.queue_timeout = queue_timeout
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jobnode-sqlite-writer")
        self._used = False

    async def run(self, body: Callable[[DirectConnection], Awaitable[T]], durable: bool) -> T:
        asked = time.monotonic()
        self._used = True
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._transaction, body, durable, asked)

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


def sqlite_writer(url: URL, queue_timeout: float | None, **engine_options: Any) -> SqliteWriter:
    """The writer for an ``sqlite+aiosqlite`` URL: the same file through the standard driver."""
    engine = create_engine(url.set(drivername="sqlite"), pool_size=1, max_overflow=0, **engine_options)
    return SqliteWriter(engine, queue_timeout)
