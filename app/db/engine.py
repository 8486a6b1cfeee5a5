"""Engines per dialect.

PostgreSQL gets one pooled engine. SQLite gets two: many readers (WAL lets them run
beside a writer) and a single writer connection whose transactions start with
``BEGIN IMMEDIATE``, so that writes queue in the pool instead of failing with
"database is locked" halfway through a read-then-write transaction.

Reads run in autocommit: every API read is one statement (a consistent snapshot by
itself), so a BEGIN/ROLLBACK pair would only add two round trips to each of them.
The pool has no pre-ping either (one more round trip per checkout): after a database
restart the first failing statement invalidates the whole pool, that one request gets
a 503, and the next ones reconnect.

The hot statements (``direct_read``/``direct_write``) run on PostgreSQL through an
asyncpg pool of ``pool_size`` connections (``app.db.direct``); SQLAlchemy's pool, for
everything else, is kept small.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from app.db.direct import AsyncpgPool, DirectConnection, json_dumps, wrap

SQLITE_BUSY_TIMEOUT_MS = 30_000
#: SQLAlchemy's connections on PostgreSQL: operator reads, maintenance, migrations.
PG_COLD_POOL_SIZE = 4
#: How long a request may wait for a free pooled connection (busy, not an outage).
POOL_WAIT_SECONDS = 30.0


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    for pragma in (
        "PRAGMA journal_mode=WAL",
        f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}",
        # FULL: a committed job survives a power cut too, not just a process crash.
        "PRAGMA synchronous=FULL",
        "PRAGMA foreign_keys=ON",
    ):
        cursor.execute(pragma)
    cursor.close()


def _take_over_begin(engine: AsyncEngine, begin_sql: str | None) -> None:
    """SQLAlchemy's documented recipe: let us emit BEGIN instead of the driver
    (``None``: emit nothing, every statement commits by itself)."""

    @event.listens_for(engine.sync_engine, "connect")
    def _connect(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None
        _sqlite_pragmas(dbapi_connection, record)

    if begin_sql is not None:

        @event.listens_for(engine.sync_engine, "begin")
        def _begin(conn: Any) -> None:
            conn.exec_driver_sql(begin_sql)


class Database:
    """The node's handle on its database: ``read()`` and ``write()`` connections."""

    def __init__(self, url: str, *, pool_size: int = 10, connect_timeout: float = 5.0) -> None:
        self.url = make_url(url)
        self.dialect = self.url.get_backend_name()
        # hide_parameters: bound values (job inputs and outputs) stay out of the texts of
        # SQLAlchemy's exceptions, and so out of the error logs.
        common: dict[str, Any] = {"json_serializer": json_dumps, "json_deserializer": msgspec.json.decode,
                                  "hide_parameters": True}
        self.direct_pool: AsyncpgPool | None = None
        if self.dialect == "sqlite":
            self.writer = create_async_engine(self.url, pool_size=1, max_overflow=0, **common)
            _take_over_begin(self.writer, "BEGIN IMMEDIATE")
            self.reader = create_async_engine(self.url, pool_size=pool_size, max_overflow=0, **common)
            _take_over_begin(self.reader, None)
        else:
            connect_args: dict[str, Any] = {}
            if self.url.get_driver_name() == "asyncpg":
                connect_args = {"timeout": connect_timeout, "command_timeout": 60}
            # A fixed pool: overflow connections would be opened and closed under load, each
            # paying a connect and re-preparing its statements.
            if self.url.get_driver_name() == "asyncpg":
                self.direct_pool = AsyncpgPool(self.url, pool_size, connect_timeout, POOL_WAIT_SECONDS)
                pool_size = min(pool_size, PG_COLD_POOL_SIZE)
            self.writer = create_async_engine(
                self.url,
                pool_size=pool_size,
                max_overflow=0,
                pool_timeout=POOL_WAIT_SECONDS,
                connect_args=connect_args,
                **common,
            )
            self.reader = self.writer.execution_options(isolation_level="AUTOCOMMIT")

    @property
    def is_postgresql(self) -> bool:
        return self.dialect == "postgresql"

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """One write transaction, committed on exit."""
        async with self.writer.begin() as conn:
            yield conn

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads; each statement sees its own snapshot (autocommit)."""
        async with self.reader.connect() as conn:
            yield conn

    @asynccontextmanager
    async def direct_read(self) -> AsyncIterator[DirectConnection]:
        """A connection for the hot reads (autocommit, like ``read``)."""
        if self.direct_pool is not None:
            async with self.direct_pool.autocommit() as direct:
                yield direct
        else:
            async with self.read() as conn:
                yield wrap(conn)

    @asynccontextmanager
    async def direct_write(self, *, one_statement: bool = False) -> AsyncIterator[DirectConnection]:
        """One write transaction for the hot writes. ``one_statement``: the caller runs a
        single statement, which PostgreSQL runs as a transaction of its own (no BEGIN and
        COMMIT round trips)."""
        if self.direct_pool is not None and one_statement:
            async with self.direct_pool.autocommit() as direct:
                yield direct
        elif self.direct_pool is not None:
            async with self.direct_pool.transaction() as direct:
                yield direct
        else:
            async with self.write() as conn:
                yield wrap(conn)

    async def dispose(self) -> None:
        if self.direct_pool is not None:
            await self.direct_pool.close()
        await self.writer.dispose()
        if self.reader.sync_engine.pool is not self.writer.sync_engine.pool:
            await self.reader.dispose()
