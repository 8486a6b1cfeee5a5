"""The hot statements' short path to the driver, and the shapes a statement takes.

Every job passes through a handful of statements (submit, claim, step commit, result
read) several times a second per client. Run through SQLAlchemy's execution layer, each
costs several times the CPU of the same statement on a raw asyncpg connection (cache key,
parameter processing, greenlet hop, pool events). So on PostgreSQL these statements are
still written in Core, compiled once per shape by SQLAlchemy, and run by asyncpg from a
pool of its own (asyncpg prepares and caches them per connection). On SQLite the same
Core statements run through SQLAlchemy as usual: there the database's single writer,
not the Python layer, is the limit.

Lists bound to ``expanding`` parameters (``IN``) are padded to a power of two with their
last element, so a statement has a few shapes (and prepared statements), not one per
list length.

The statements themselves live in ``app.db.statements``; ``Shapes``, ``PerDialect`` and
``RowsInsert`` here are the forms they take there besides a plain ``Statement``.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, Protocol, TypeVar

import asyncpg
import msgspec
from sqlalchemy import Table, bindparam, func, insert, literal_column, select
from sqlalchemy.dialects.postgresql import asyncpg as pg_asyncpg
from sqlalchemy.engine import URL, CursorResult
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import ClauseElement, Executable
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnClause

if TYPE_CHECKING:
    from app.db.engine import Database

Row = Sequence[Any]
P = ParamSpec("P")
T = TypeVar("T")

_PG_DIALECT = pg_asyncpg.dialect()  # type: ignore[no-untyped-call]


class _Slot:
    """Stands in for one parameter value while a shape is compiled: where it lands in the
    positional parameters tells where each value of a call goes."""

    __slots__ = ("field", "item", "name")

    def __init__(self, name: str, item: int | None = None, field: int | None = None) -> None:
        self.name, self.item, self.field = name, item, field

    def pick(self, params: dict[str, Any]) -> Any:
        value = params[self.name]
        if self.item is not None:
            value = value[self.item]
            if self.field is not None:
                value = value[self.field]
        return value


def _padded(values: Sequence[Any]) -> list[Any]:
    if not values:
        return list(values)
    size = 1
    while size < len(values):
        size *= 2
    return [*values, *[values[-1]] * (size - len(values))]


def _slots(name: str, value: Any) -> Any:
    if isinstance(value, list):
        return [
            tuple(_Slot(name, i, j) for j in range(len(item))) if isinstance(item, tuple) else _Slot(name, i)
            for i, item in enumerate(value)
        ]
    return _Slot(name)


class Statement:
    """A Core statement with named ``bindparam``\\ s, compiled for asyncpg once per shape.

    A list parameter is an ``expanding`` one (the list of an ``IN``); other values go as
    they are."""

    def __init__(self, statement: Executable) -> None:
        self.statement = statement
        self._compiled: SQLCompiler | None = None
        self._shapes: dict[tuple[Any, ...], tuple[str, list[Any]]] = {}

    def sqlalchemy_params(self, params: dict[str, Any]) -> dict[str, Any]:
        return {k: _padded(v) if isinstance(v, list) else v for k, v in params.items()}

    async def run(self, connection: AsyncConnection, params: dict[str, Any] | None = None) -> CursorResult[Any]:
        """Run on a SQLAlchemy connection: the cold paths (operator reads, maintenance), where
        the execution layer's cost does not matter and its ORM conveniences do."""
        return await connection.execute(self.statement, self.sqlalchemy_params(params or {}))

    def _pg_compiled(self) -> SQLCompiler:
        if self._compiled is None:
            compiled = _clause(self.statement).compile(dialect=_PG_DIALECT)
            assert isinstance(compiled, SQLCompiler)
            self._compiled = compiled
        return self._compiled

    def asyncpg_args(self, params: dict[str, Any]) -> tuple[str, list[Any]]:
        """The SQL text of this call's shape and its positional arguments."""
        params = self.sqlalchemy_params(params)
        key = tuple(
            (name, len(v), len(v[0]) if v and isinstance(v[0], tuple) else 0)
            for name, v in params.items()
            if isinstance(v, list)
        )
        shape = self._shapes.get(key)
        if shape is None:
            state = self._pg_compiled().construct_expanded_state({k: _slots(k, v) for k, v in params.items()})
            shape = self._shapes[key] = (state.statement, list(state.positional_parameters))
        sql, slots = shape
        return sql, [slot.pick(params) if isinstance(slot, _Slot) else slot for slot in slots]


class RowsStatement(Statement):
    """A PostgreSQL statement whose parameters are bound whole, never expanded: a list of
    rows (dicts) goes as one JSON document (the pool's ``json`` codec, msgspec) for
    ``json_to_recordset`` to read, so there is one shape and one plan for any number of
    rows, and no array per column (``_RecordsetInsert`` says why)."""

    def __init__(self, statement: Executable) -> None:
        super().__init__(statement)
        self._sql: tuple[str, tuple[str, ...]] | None = None
        self._bound: dict[str, Any] = {}

    def sqlalchemy_params(self, params: dict[str, Any]) -> dict[str, Any]:
        return params

    def asyncpg_args(self, params: dict[str, Any]) -> tuple[str, list[Any]]:
        """The call's parameters by name; a parameter the statement binds a value to itself
        (``bindparam(None, value)``) takes that value."""
        if self._sql is None:
            compiled = self._pg_compiled()
            state = compiled.construct_expanded_state(dict.fromkeys(params))
            assert state.positiontup is not None
            self._sql = state.statement, tuple(state.positiontup)
            self._bound = {name: bind.effective_value for name, bind in compiled.binds.items() if name not in params}
        sql, names = self._sql
        bound = self._bound
        return sql, [params[name] if name in params else bound[name] for name in names]


def _clause(statement: Executable) -> ClauseElement:
    """Every Core statement is a ``ClauseElement`` too (``Executable`` does not say so)."""
    assert isinstance(statement, ClauseElement)
    return statement


class Shapes(Generic[P]):
    """A cached factory of a statement's few shapes (``functools.cache``) that can list
    them all, so that ``tests/test_statements.py`` EXPLAINs and runs every one."""

    def __init__(self, build: Callable[P, Statement], shapes: Iterable[tuple[Any, ...]]) -> None:
        self._build = functools.cache(build)
        self.shapes = tuple(shapes)
        functools.update_wrapper(self, build)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Statement:
        return self._build(*args, **kwargs)  # type: ignore[arg-type]

    def all(self) -> dict[tuple[Any, ...], Statement]:
        return {args: self._build(*args) for args in self.shapes}


def shapes(args: Iterable[tuple[Any, ...]]) -> Callable[[Callable[P, Statement]], Shapes[P]]:
    """``@shapes([(…), …])`` over a factory: its arguments, one tuple per shape."""
    return lambda build: Shapes(build, args)


@dataclass(frozen=True, slots=True)
class PerDialect(Generic[T]):
    """One statement in the form each database needs, side by side in the registry:
    the domain runs ``STATEMENT.pick(database)`` and never asks which database it is."""

    postgresql: T
    sqlite: T

    def pick(self, database: Database) -> T:
        return self.postgresql if database.is_postgresql else self.sqlite


class RowsInsert:
    """Rows of a table inserted together (``DirectConnection.insert_many``), with fixed
    columns: every row is a dict of exactly these keys. On PostgreSQL it is one
    ``INSERT … SELECT … FROM json_populate_recordset(…)`` (two shapes: with and without a
    NOTIFY in it)."""

    def __init__(self, table: Table, columns: Iterable[str]) -> None:
        self.table = table
        self.columns = tuple(columns)
        self._statements = {notify: _RecordsetInsert(table, self.columns, notify) for notify in (False, True)}

    def recordset(self, notify: bool) -> _RecordsetInsert:
        return self._statements[notify]

    def all(self) -> dict[tuple[Any, ...], Statement]:
        return {(notify,): statement for notify, statement in self._statements.items()}


class DirectConnection(Protocol):
    """What the hot paths need of a connection, on either database."""

    postgresql: bool

    async def fetch(self, statement: Statement, params: dict[str, Any]) -> list[Row]: ...

    async def execute(self, statement: Statement, params: dict[str, Any]) -> None: ...

    async def insert_many(
        self, into: RowsInsert, rows: list[dict[str, Any]], notify: tuple[str, str] | None = None
    ) -> None:
        """Insert the rows and, on PostgreSQL, ``pg_notify(*notify)`` in the same statement."""

    async def notify(self, channel: str, payload: str) -> None:
        """``pg_notify`` (delivered at commit); a no-op off PostgreSQL."""


class _AsyncpgConnection:
    postgresql = True

    def __init__(self, connection: asyncpg.Connection) -> None:
        self.connection = connection

    async def fetch(self, statement: Statement, params: dict[str, Any]) -> list[Row]:
        sql, args = statement.asyncpg_args(params)
        return await self.connection.fetch(sql, *args)  # type: ignore[no-any-return]

    async def execute(self, statement: Statement, params: dict[str, Any]) -> None:
        sql, args = statement.asyncpg_args(params)
        await self.connection.fetch(sql, *args)

    async def insert_many(
        self, into: RowsInsert, rows: list[dict[str, Any]], notify: tuple[str, str] | None = None
    ) -> None:
        """One ``INSERT … SELECT … FROM json_populate_recordset($1)``: one statement and one
        plan for any number of rows (and the NOTIFY in it, as a SELECT beside it)."""
        statement = into.recordset(notify is not None)
        sql, args = statement.asyncpg_args({"rows": rows})
        await self.connection.fetch(sql, *args, *(notify or ()))

    async def notify(self, channel: str, payload: str) -> None:
        await self.execute(_NOTIFY, {"channel": channel, "payload": payload})


_NOTIFY = Statement(select(func.pg_notify(bindparam("channel"), bindparam("payload"))))


class _RecordsetInsert(Statement):
    """``INSERT … SELECT … FROM json_populate_recordset(NULL::<table>, $1::json)``: the
    rows travel as one JSON document (encoded by msgspec through the pool's ``json``
    codec), each column typed by the table's own row type. Sent as one array per column
    (``unnest``), every value went through asyncpg's array encoder, which asks each
    element whether it is itself a sequence (a Python-level ABC check per value): 0.4 ms
    of the node's CPU for an INSERT of 16 jobs, against 0.15 ms this way. With ``notify``
    it is the CTE of ``SELECT pg_notify(channel, payload)``, the second and third
    parameters."""

    def __init__(self, table: Table, columns: tuple[str, ...], notify: bool) -> None:
        rows = func.json_populate_recordset(
            literal_column(f"NULL::{table.name}"), literal_column("$1::json")
        ).table_valued(*columns)
        statement: Any = insert(table).from_select(
            list(columns), select(*(rows.c[name] for name in columns)), include_defaults=False
        )
        if notify:
            channel: ColumnClause[Any] = literal_column("$2::text")
            payload: ColumnClause[Any] = literal_column("$3::text")
            statement = select(func.pg_notify(channel, payload)).add_cte(statement.cte("inserted"))
        super().__init__(statement)
        self._sql = str(_clause(self.statement).compile(dialect=_PG_DIALECT))

    def asyncpg_args(self, params: dict[str, Any]) -> tuple[str, list[Any]]:
        """``params["rows"]``: the rows, dicts of the statement's columns."""
        return self._sql, [params["rows"]]


class _SqlAlchemyConnection:
    def __init__(self, connection: AsyncConnection) -> None:
        self.connection = connection
        self.postgresql = connection.dialect.name == "postgresql"

    async def fetch(self, statement: Statement, params: dict[str, Any]) -> list[Row]:
        result = await self.connection.execute(statement.statement, statement.sqlalchemy_params(params))
        return list(result.all())

    async def execute(self, statement: Statement, params: dict[str, Any]) -> None:
        await self.connection.execute(statement.statement, statement.sqlalchemy_params(params))

    async def insert_many(
        self, into: RowsInsert, rows: list[dict[str, Any]], notify: tuple[str, str] | None = None
    ) -> None:
        await self.connection.execute(insert(into.table), rows)
        if notify is not None:
            await self.notify(*notify)

    async def notify(self, channel: str, payload: str) -> None:
        if self.postgresql:
            await self.execute(_NOTIFY, {"channel": channel, "payload": payload})


def json_dumps(value: Any) -> str:
    """JSON columns are written by msgspec, through SQLAlchemy and asyncpg alike."""
    return msgspec.json.encode(value).decode()


async def _init_connection(connection: asyncpg.Connection) -> None:
    for json_type in ("json", "jsonb"):
        await connection.set_type_codec(json_type, encoder=json_dumps, decoder=msgspec.json.decode, schema="pg_catalog")


async def _reset(connection: asyncpg.Connection) -> None:
    """The hot statements leave no session state behind (no LISTEN, no SET, no temp
    tables), so asyncpg's RESET ALL round trip on every release is skipped; only a
    transaction left open (a task cancelled mid-COMMIT) is rolled back."""
    if connection.is_in_transaction():
        await connection.execute("ROLLBACK")


#: Every hot statement is an index lookup by design (``tests/test_statements.py`` EXPLAINs
#: each, with these settings). asyncpg keeps a prepared statement for the connection's
#: life, and its generic plan (below), once planned while a fresh database was still
#: empty, would scan ``job_steps`` for good as it grows; without sequential scans it is
#: always planned on the indexes. And a hot statement that orders its rows reads them in an index's order
#: where one has it (a sort only where no index has that order): the claim (``ORDER BY
#: run_after, seq LIMIT``) was planned, with 10 M jobs stored and 10,000 pending, as a read
#: of every pending job through ``ix_jobs_unfinished_source`` and a sort of them all (5–8 ms),
#: not as the ordered read of ``ix_jobs_claim`` that stops at the LIMIT (0.2 ms): the
#: planner costs each row of the ordered read as a random page, the other read as
#: sequential (``tests/bench/claimplan.py``); without sorts, the ordered read is the only
#: plan left, whatever the backlog and the statistics. No JIT: with a million jobs pending
#: the claim's generic plan is costed above ``jit_above_cost``, and compiling it took
#: 9–10 ms of every claim of 256 jobs (whose own work takes 7–12 ms).
#:
#: Generic plans, always: PostgreSQL plans a prepared statement anew at each execution
#: (a custom plan) as long as its generic plan is costed dearer than the custom ones, as
#: the claim's is (a LIMIT and a cursor whose values it then knows): each claim was planned
#: again, most of a claim's fixed cost. Measured alone (13 M stored, nothing else running),
#: a claim of one job took 0.55–0.61 → 0.18–0.29 ms of PostgreSQL's CPU. The generic plan
#: is the one ``tests/test_statements.py`` checks.
_SESSION = {"enable_seqscan": "off", "enable_sort": "off", "jit": "off", "plan_cache_mode": "force_generic_plan"}


#: A transaction whose COMMIT returns before its WAL is flushed: a crash of the server may
#: lose it, nothing else (it is written in order: any later flushed commit makes it durable).
_BEGIN_UNFLUSHED = "BEGIN; SET LOCAL synchronous_commit TO off"


class Lane:
    """One serial user of the hot statements (a group commit's flushes, the claim loop),
    which keeps a connection of the pool between its statements instead of acquiring one
    for each (``AsyncpgPool``)."""

    __slots__ = ("busy", "kept", "source")

    def __init__(self) -> None:
        self.kept: asyncpg.Connection | None = None
        #: The pool ``kept`` goes back to (a node's pool is opened again after a close).
        self.source: asyncpg.Pool | None = None
        #: A statement is under way on ``kept``: another one meanwhile (the lane's owner
        #: is serial by design, this is the net) takes a connection from the pool.
        self.busy = False


def _dropped(connection: asyncpg.Connection) -> bool:
    """The connection was closed (by the server, or the network), or taken back by the pool
    for that reason."""
    try:
        return bool(connection.is_closed())
    except asyncpg.InterfaceError:  # the pool's proxy, which the pool took back
        return True


class AsyncpgPool:
    """asyncpg's own pool for the hot statements, opened at first use.

    ``connect_args``: asyncpg's timeouts (``app.db.engine.asyncpg_timeouts``). A
    connection whose call timed out is terminated before it goes back: releasing it would
    wait for the server's answer to the cancel request, and rolling it back for an answer
    to the ROLLBACK, from a server that may hang.

    A ``Lane`` keeps its connection: acquiring and releasing one of asyncpg's pool cost the
    node 0.13 ms of CPU (a timeout, a task for the release), more than a statement's own
    0.08 ms, and the busy statements run in a few serial users (the submits' and the step
    commits' flushes, the result reads', the claim loop), a flush or a claim at a time. So
    that the others always find connections, lanes keep at most half the pool; a lane's
    connection goes back to the pool after any error (the pool knows how to clean it up,
    and the next statement takes a fresh one)."""

    def __init__(self, url: URL, size: int, connect_args: dict[str, Any], acquire_timeout: float) -> None:
        self.dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        self.size = size
        self.connect_args = connect_args
        self.acquire_timeout = acquire_timeout
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()
        self._lanes: list[Lane] = []

    async def _open(self) -> asyncpg.Pool:
        if self._pool is None:
            async with self._opening:
                if self._pool is None:
                    server_settings = {**_SESSION, **self.connect_args.get("server_settings", {})}
                    self._pool = await asyncpg.create_pool(
                        self.dsn,
                        min_size=0,
                        max_size=self.size,
                        init=_init_connection,
                        reset=_reset,
                        **{**self.connect_args, "server_settings": server_settings},
                    )
        return self._pool

    def lane(self) -> Lane:
        lane = Lane()
        self._lanes.append(lane)
        return lane

    def _may_keep(self) -> bool:
        return sum(lane.kept is not None for lane in self._lanes) < self.size // 2

    @asynccontextmanager
    async def _connection(self, lane: Lane | None) -> AsyncIterator[asyncpg.Connection]:
        """A connection of the pool, or ``lane``'s own (taken from the pool the first time)."""
        pool = await self._open()
        if lane is None or lane.busy or (lane.kept is None and not self._may_keep()):
            async with pool.acquire(timeout=self.acquire_timeout) as connection:
                yield connection
            return
        lane.busy = True
        try:
            if lane.kept is not None and _dropped(lane.kept):
                await self._give_back(lane)
            if lane.kept is None:
                lane.kept, lane.source = await pool.acquire(timeout=self.acquire_timeout), pool
            try:
                yield lane.kept
            except BaseException:
                await self._give_back(lane)
                raise
        finally:
            lane.busy = False

    @staticmethod
    async def _give_back(lane: Lane) -> None:
        connection, source, lane.kept, lane.source = lane.kept, lane.source, None, None
        if connection is None or source is None or source.is_closing():
            return  # a closed pool closed its connections
        try:
            await source.release(connection)
        except Exception:  # never in place of the error that brought it back
            connection.terminate()

    @asynccontextmanager
    async def autocommit(self, lane: Lane | None = None) -> AsyncIterator[DirectConnection]:
        """Each statement is its own transaction."""
        async with self._connection(lane) as connection:
            try:
                yield _AsyncpgConnection(connection)
            except TimeoutError:
                connection.terminate()
                raise

    @asynccontextmanager
    async def transaction(self, *, flush: bool = True, lane: Lane | None = None) -> AsyncIterator[DirectConnection]:
        """``flush=False``: the COMMIT does not wait for the WAL to reach the disk
        (``synchronous_commit`` off for this transaction alone; ``BEGIN`` and the setting go
        in one round trip)."""
        async with self._connection(lane) as connection:
            try:
                await connection.execute("BEGIN" if flush else _BEGIN_UNFLUSHED)
                try:
                    yield _AsyncpgConnection(connection)
                except TimeoutError:
                    raise  # terminated below
                except BaseException:
                    try:
                        await connection.execute("ROLLBACK")
                    except BaseException:
                        connection.terminate()  # never back in the pool mid-transaction
                    raise
                await connection.execute("COMMIT")
            except TimeoutError:
                connection.terminate()  # a statement, BEGIN or COMMIT without an answer
                raise

    async def close(self) -> None:
        """Close the connections; those that do not close in time are dropped."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(self._close(pool), self.connect_args.get("timeout"))
            except TimeoutError:
                pool.terminate()

    async def _close(self, pool: asyncpg.Pool) -> None:
        """The lanes' connections back first: the pool's close waits for every one."""
        for lane in self._lanes:
            if not lane.busy:
                await self._give_back(lane)
        await pool.close()


def wrap(connection: AsyncConnection) -> DirectConnection:
    """A SQLAlchemy connection seen through the direct interface (SQLite)."""
    return _SqlAlchemyConnection(connection)
