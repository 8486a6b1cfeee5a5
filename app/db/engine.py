"""Engines per dialect.

PostgreSQL gets one pooled engine. SQLite gets two: many readers (WAL lets them run
beside a writer) and a single writer connection whose transactions start with
``BEGIN IMMEDIATE``, so that writes queue in the pool instead of failing with
"database is locked" halfway through a read-then-write transaction. The hot writes
(``write_transaction``) have a writer connection of their own, each transaction one call to
its thread (``app.db.sqlite_writer``); a cold write takes its turn in that thread's queue.

Reads run in autocommit: every API read is one statement (a consistent snapshot by
itself), so a BEGIN/ROLLBACK pair would only add two round trips to each of them.
The pool has no pre-ping either (one more round trip per checkout): after a database
restart the first failing statement invalidates the whole pool, that one request gets
a 503, and the next ones reconnect.

The hot statements (``direct_read``/``direct_write``) run on PostgreSQL through an
asyncpg pool of ``pool_size`` connections (``app.db.direct``); SQLAlchemy's pool, for
everything else, is kept small.

Every call has a deadline (``statement_timeout``), so that a database that hangs (a
frozen proxy or network: connections open, no answer) gives 503 within seconds instead
of waiting for TCP to give up: waiting for a pooled connection, each statement and
COMMIT on the client (asyncpg's ``command_timeout``), the same on the server
(``statement_timeout``, which stops the work there too), and on SQLite the wait for another
process's lock (the writers' ``BEGIN IMMEDIATE`` tries, the readers' busy timeout). A
connection whose call timed out is terminated, never reset or rolled back: on a peer
that hangs, those would hang as well. ``None`` (migrations) means no deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import msgspec
from sqlalchemy import Engine, event
from sqlalchemy.engine import ExceptionContext, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.util import await_only

from app.db.direct import AsyncpgPool, DirectConnection, Lane, json_dumps, wrap
from app.db.sqlite_writer import SqliteWriter, begin_immediate, sqlite_writer

T = TypeVar("T")

#: SQLAlchemy's connections on PostgreSQL: operator reads, maintenance, migrations.
PG_COLD_POOL_SIZE = 4
#: Without a deadline (``statement_timeout=None``): how long to wait for a pooled
#: connection, and SQLite's busy timeout.
UNBOUNDED_WAIT_SECONDS = 30.0
#: Seconds between the cold writer's tries of ``BEGIN IMMEDIATE`` while another process
#: holds SQLite's write lock: the event loop's timers count whole milliseconds.
COLD_BUSY_PAUSE = 0.001
#: The client gives the server this much longer than its own ``statement_timeout``: a
#: server that answers cancels the statement itself and the connection stays usable.
CLIENT_MARGIN_SECONDS = 0.5


def _sqlite_pragmas(dbapi_connection: Any, busy_timeout_ms: int) -> None:
    cursor = dbapi_connection.cursor()
    for pragma in (
        "PRAGMA journal_mode=WAL",
        f"PRAGMA busy_timeout={busy_timeout_ms}",
        # FULL: a committed job survives a power cut too, not just a process crash.
        "PRAGMA synchronous=FULL",
        "PRAGMA foreign_keys=ON",
    ):
        cursor.execute(pragma)
    cursor.close()


def _take_over_begin(engine: Engine, busy_timeout_ms: int) -> None:
    """SQLAlchemy's documented recipe: the driver emits no BEGIN (every statement commits
    by itself, unless ``_begin_immediate`` begins the transaction)."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        _sqlite_pragmas(dbapi_connection, busy_timeout_ms)


def _begin_immediate(engine: Engine, busy_wait: float) -> None:
    """The cold writer's transactions begin with ``BEGIN IMMEDIATE``, tried again every
    ``COLD_BUSY_PAUSE`` while another process holds the write lock (its connection has no
    busy timeout), as the hot writer does: SQLite's busy handler sleeps up to 100 ms
    between tries, and rarely found the lock free between another process's hot
    transactions (``server.workers: 2``, 32 clients: an operator's cancel up to 2.2 s)."""

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        cursor = conn.connection.dbapi_connection.cursor()
        try:
            begin_immediate(cursor, busy_wait, (COLD_BUSY_PAUSE,), lambda pause: await_only(asyncio.sleep(pause)))
        finally:
            cursor.close()


def _terminate_on_timeout(engine: AsyncEngine) -> None:
    """A statement or COMMIT that timed out leaves its connection waiting for an answer
    (and asyncpg for a cancel request) from a server that may hang: terminate it at once
    and have SQLAlchemy drop it (and the pool's other connections, likely just as stuck)
    instead of rolling it back on the same dead socket."""

    @event.listens_for(engine.sync_engine, "handle_error")
    def _timed_out(context: ExceptionContext) -> None:
        if isinstance(context.original_exception, TimeoutError) and context.connection is not None:
            with contextlib.suppress(Exception):
                context.connection.connection.driver_connection.terminate()  # type: ignore[union-attr]
            context.is_disconnect = True


class Database:
    """The node's handle on its database: ``read()`` and ``write()`` connections."""

    def __init__(
        self, url: str, *, pool_size: int = 10, connect_timeout: float = 5.0, statement_timeout: float | None = 5.0
    ) -> None:
        self.url = make_url(url)
        self.dialect = self.url.get_backend_name()
        self.connect_timeout = connect_timeout
        self.statement_timeout = statement_timeout
        #: Waiting for a pooled connection is a database call like any other.
        wait = UNBOUNDED_WAIT_SECONDS if statement_timeout is None else statement_timeout
        # hide_parameters: bound values (job inputs and outputs) stay out of the texts of
        # SQLAlchemy's exceptions, and so out of the error logs.
        common: dict[str, Any] = {
            "json_serializer": json_dumps,
            "json_deserializer": msgspec.json.decode,
            "hide_parameters": True,
        }
        self.direct_pool: AsyncpgPool | None = None
        self.sqlite_writer: SqliteWriter | None = None
        if self.dialect == "sqlite":
            busy_ms = int(wait * 1000)
            self.writer = create_async_engine(self.url, pool_size=1, max_overflow=0, pool_timeout=wait, **common)
            # The writers wait for another process's write lock their own way.
            _take_over_begin(self.writer.sync_engine, 0)
            _begin_immediate(self.writer.sync_engine, wait)
            self.reader = create_async_engine(
                self.url, pool_size=pool_size, max_overflow=0, pool_timeout=wait, **common
            )
            _take_over_begin(self.reader.sync_engine, busy_ms)
            self.sqlite_writer = sqlite_writer(self.url, statement_timeout, busy_wait=wait, **common)
            _take_over_begin(self.sqlite_writer.engine, 0)
        else:
            connect_args: dict[str, Any] = {}
            if self.url.get_driver_name() == "asyncpg":
                connect_args = asyncpg_timeouts(connect_timeout, statement_timeout)
                # A fixed pool: overflow connections would be opened and closed under load, each
                # paying a connect and re-preparing its statements.
                self.direct_pool = AsyncpgPool(self.url, pool_size, connect_args, wait)
                pool_size = min(pool_size, PG_COLD_POOL_SIZE)
            self.writer = create_async_engine(
                self.url,
                pool_size=pool_size,
                max_overflow=0,
                pool_timeout=wait,
                connect_args=connect_args,
                **common,
            )
            _terminate_on_timeout(self.writer)
            self.reader = self.writer.execution_options(isolation_level="AUTOCOMMIT")

    @property
    def is_postgresql(self) -> bool:
        return self.dialect == "postgresql"

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """One write transaction, committed on exit. On SQLite it takes its turn among the
        hot writer's transactions (``SqliteWriter.turn``)."""
        if self.sqlite_writer is None:
            async with self.writer.begin() as conn:
                yield conn
        else:
            async with self.sqlite_writer.turn(), self.writer.begin() as conn:
                yield conn

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads; each statement sees its own snapshot (autocommit)."""
        async with self.reader.connect() as conn:
            yield conn

    def lane(self) -> Lane:
        """For a serial user of the hot statements (``direct_read``, ``direct_write``):
        on PostgreSQL its statements keep one connection (``app.db.direct.Lane``)."""
        return Lane() if self.direct_pool is None else self.direct_pool.lane()

    @asynccontextmanager
    async def direct_read(self, lane: Lane | None = None) -> AsyncIterator[DirectConnection]:
        """A connection for the hot reads (autocommit, like ``read``)."""
        if self.direct_pool is not None:
            async with self.direct_pool.autocommit(lane) as direct:
                yield direct
        else:
            async with self.read() as conn:
                yield wrap(conn)

    @asynccontextmanager
    async def direct_write(
        self, *, one_statement: bool = False, durable: bool = True, lane: Lane | None = None
    ) -> AsyncIterator[DirectConnection]:
        """One write transaction for the hot writes. ``one_statement``: the caller runs a
        single statement, which PostgreSQL runs as a transaction of its own (no BEGIN and
        COMMIT round trips). ``durable=False``: a write whose loss in a crash of the server
        harms nothing, which PostgreSQL commits without waiting for the disk (SQLite as
        any other: its ``synchronous`` is the connection's); a single such statement turns
        the wait off itself (as the claim does: ``statements.claims.UNFLUSHED``)."""
        if self.direct_pool is not None and one_statement:
            async with self.direct_pool.autocommit(lane) as direct:
                yield direct
        elif self.direct_pool is not None:
            async with self.direct_pool.transaction(flush=durable, lane=lane) as direct:
                yield direct
        else:
            async with self.write() as conn:
                yield wrap(conn)

    async def write_transaction(
        self,
        body: Callable[[DirectConnection], Awaitable[T]],
        *,
        one_statement: bool = False,
        durable: bool = True,
        lane: Lane | None = None,
    ) -> T:
        """``body`` in one hot write transaction (``direct_write``'s, with its options), its
        answer returned once committed. On SQLite the whole transaction is one call to the
        hot writer's thread (``app.db.sqlite_writer``): ``body`` must await nothing but
        the connection's statements."""
        if self.sqlite_writer is not None:
            return await self.sqlite_writer.run(body, durable)
        async with self.direct_write(one_statement=one_statement, durable=durable, lane=lane) as conn:
            return await body(conn)

    async def dispose(self) -> None:
        """Close every connection; on a database that hangs, drop them after a deadline
        (closing politely would wait for answers that never come)."""
        if self.direct_pool is not None:
            await self.direct_pool.close()
        if self.sqlite_writer is not None:
            await self.sqlite_writer.close()
        engines = [self.writer]
        if self.reader.sync_engine.pool is not self.writer.sync_engine.pool:
            engines.append(self.reader)
        for engine in engines:
            try:
                await asyncio.wait_for(engine.dispose(), self.connect_timeout)
            except TimeoutError:
                await engine.dispose(close=False)


def asyncpg_timeouts(connect_timeout: float, statement_timeout: float | None) -> dict[str, Any]:
    """asyncpg's connect arguments for these deadlines: ``timeout`` to connect,
    ``command_timeout`` per call on the client, ``statement_timeout`` on the server."""
    if statement_timeout is None:
        return {"timeout": connect_timeout, "command_timeout": None}
    return {
        "timeout": connect_timeout,
        "command_timeout": statement_timeout + CLIENT_MARGIN_SECONDS,
        "server_settings": {"statement_timeout": str(max(1, int(statement_timeout * 1000))), **SERVER_KEEPALIVES},
    }


#: A connection this node gave up on (terminated while the network hung) can live on at
#: the server, holding what it held: row locks of a transaction under way, the leader's
#: advisory lock. The server's keep-alives end such a session within about half a minute
#: of the network answering again (or of its silence), instead of hours (the OS default).
SERVER_KEEPALIVES = {"tcp_keepalives_idle": "10", "tcp_keepalives_interval": "5", "tcp_keepalives_count": "3"}
