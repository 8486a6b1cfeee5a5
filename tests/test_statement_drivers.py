"""The statements' scenario (``tests/statement_scenario.py``) through the three ways the node
runs a statement (``app.db.direct``): asyncpg's pool, SQLAlchemy on PostgreSQL and
SQLAlchemy on SQLite. Each must give the same answers."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql

from app.db import direct
from app.db.direct import DirectConnection, RowsInsert
from app.db.engine import Database
from app.db.models import Job, JobStatus, JobStep
from app.db.signal import CHANNEL, ENDED_CHANNEL
from app.db.statements import claims
from tests.statement_scenario import (
    ENDED,
    J5,
    LEASE,
    NODE,
    SCENARIO,
    A,
    Example,
    at,
    job_row,
    owned_params,
    registry,
    step_row,
)
from tests.support import create_pg_database, drop_pg_database, migrated, unavailable


@dataclass
class Driver:
    dialect: str
    database: Database
    #: A transaction on a connection of this driver.
    connect: Callable[[], AbstractAsyncContextManager[DirectConnection]]


@pytest.fixture(
    params=[
        pytest.param("asyncpg", marks=pytest.mark.postgres),
        pytest.param("sqlalchemy-postgresql", marks=pytest.mark.postgres),
        "sqlalchemy-sqlite",
    ]
)
async def driver(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Driver]:
    """A fresh migrated database, seen through one of the three drivers."""
    postgresql = request.param != "sqlalchemy-sqlite"
    if postgresql:
        try:
            url = await create_pg_database()
        except Exception as exc:
            unavailable("PostgreSQL", f"{type(exc).__name__}: {exc}")
    else:
        url = f"sqlite+aiosqlite:///{tmp_path / 'conformance.db'}"
    database = Database(url)
    try:
        await migrated(url)
        if request.param == "asyncpg":
            assert database.direct_pool is not None
            connect = database.direct_pool.transaction
        else:

            @asynccontextmanager
            async def connect() -> AsyncIterator[DirectConnection]:
                async with database.write() as conn:
                    yield direct.wrap(conn)

        yield Driver("postgresql" if postgresql else "sqlite", database, connect)
    finally:
        await database.dispose()
        if postgresql:
            await drop_pg_database(url)


def _plain(value: Any) -> Any:
    """A value as the domain reads it: ids as text (asyncpg gives ``UUID`` objects)."""
    return str(value) if isinstance(value, uuid.UUID) else value


async def _run(driver: Driver, example: Example) -> list[tuple[Any, ...]] | None:
    statement = registry()[example.name]
    async with driver.connect() as conn:
        if isinstance(statement, RowsInsert):
            await conn.insert_many(statement, example.params, notify=example.notify)
            return None
        if example.rows is None:
            await conn.execute(statement, example.params)
            return None
        rows = await conn.fetch(statement, example.params)
    answer = [tuple(_plain(value) for value in row) for row in rows]
    return answer if example.ordered else sorted(answer, key=repr)


@asynccontextmanager
async def _listening(driver: Driver) -> AsyncIterator[list[tuple[str, str]]]:
    """The notifications another session receives (none off PostgreSQL)."""
    received: list[tuple[str, str]] = []
    if driver.dialect != "postgresql":
        yield received
        return
    url = driver.database.url.set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(url)
    try:
        for channel in (CHANNEL, ENDED_CHANNEL):
            await conn.add_listener(channel, lambda _c, _pid, channel, payload: received.append((channel, payload)))
        yield received
    finally:
        await conn.close()


async def test_every_statement_answers_the_same_through_each_driver(driver: Driver):
    """The whole scenario: inserts (JSON, None, unicode), the claim and step commit with
    their RETURNING rows, the reads; and a notification riding in an insert reaches another
    session once committed (PostgreSQL)."""
    async with _listening(driver) as received:
        for example in SCENARIO:
            if example.dialect in (None, driver.dialect):
                answer = await _run(driver, example)
                if example.rows is not None:
                    expected = example.rows if example.ordered else sorted(example.rows, key=repr)
                    assert answer == expected, example.name
        if driver.dialect == "postgresql":
            for _ in range(100):
                if len(received) >= 2:
                    break
                await asyncio.sleep(0.05)
            assert received == [(CHANNEL, "sender ✓"), ENDED]
    async with driver.database.read() as conn:
        # None is SQL NULL (J2's failed step), never a JSON null, whichever driver wrote it.
        nulls = select(func.count()).select_from(JobStep).where(JobStep.output.is_(None))
        assert (await conn.execute(nulls)).scalar_one() == 1
        released = select(Job.status, Job.attempts, Job.lease_owner).where(Job.id == J5)
        assert tuple((await conn.execute(released)).one()) == (JobStatus.PENDING, 0, None)


@pytest.mark.parametrize("count", [1, 3, 5])
async def test_expanding_lists_answer_each_item_once(driver: Driver, count: int):
    """Lists are padded with their last item (to 1, 4, 8 on asyncpg); the padding never
    shows in an answer."""
    ids = [str(uuid.UUID(int=100 + n, version=4)) for n in range(count)]
    rows = [
        job_row(job_id, A, 1, status=JobStatus.RUNNING, attempts=1, lease_owner=NODE, lease_expires_at=LEASE)
        for job_id in ids
    ]
    await _run(driver, Example("submits.INSERT_JOBS", rows))
    held = sorted((job_id, 1, at(1)) for job_id in ids)
    renew, extend = (f"claims.{name}.{driver.dialect}" for name in ("RENEW", "EXTEND_OWNED"))
    for example in (
        Example("reads.RESULTS", {"ids": ids}, sorted((i, A, JobStatus.RUNNING, None, None, None) for i in ids)),
        Example(extend, owned_params(held, NODE, lease_until=LEASE), held),
        Example(renew, {"ids": ids, "node": NODE, "lease_until": LEASE}, sorted((i,) for i in ids)),
        Example("claims.COMMITTED_STEPS", {"ids": ids}, []),
    ):
        assert await _run(driver, example) == example.rows, example.name


#: Step outputs whose shape a JSON document could lose on its way to a JSONB column
#: (asyncpg's pool sends a ``RowsInsert``'s rows as one document): strings that look like
#: JSON or need escaping, bare scalars, nested nulls, and None (SQL NULL, not JSON null).
AWKWARD_OUTPUTS: list[Any] = [
    'say "hi"\\n\n\t✓ \u00e9',
    "null",
    "",
    0,
    -1.5,
    2**53 + 1,
    True,
    [None, [], {}],
    {"k": None, '"q"': ["\\", "✗"]},
    None,
]


async def test_json_values_keep_their_shape_through_each_driver(driver: Driver):
    """What a step stored is what is read back, exactly: outputs of every JSON shape, the
    job's input, and timestamps to the microsecond."""
    ids = [str(uuid.UUID(int=200 + n, version=4)) for n in range(len(AWKWARD_OUTPUTS))]
    fine = datetime(2026, 12, 5, 8, 1, 2, 345678, tzinfo=UTC)
    jobs = [
        job_row(job_id, A, 1, input={"v": output}, created_at=fine)
        for job_id, output in zip(ids, AWKWARD_OUTPUTS, strict=True)
    ]
    await _run(driver, Example("submits.INSERT_JOBS", jobs))
    steps = [
        {**step_row(job_id, 0, output), "started_at": fine, "finished_at": fine}
        for job_id, output in zip(ids, AWKWARD_OUTPUTS, strict=True)
    ]
    await _run(driver, Example("claims.INSERT_STEPS", steps))
    expected = sorted(((i, 0, o, None) for i, o in zip(ids, AWKWARD_OUTPUTS, strict=True)), key=repr)
    assert await _run(driver, Example("claims.COMMITTED_STEPS", {"ids": ids}, expected)) == expected
    async with driver.database.read() as conn:
        read = select(Job.id, Job.input, Job.created_at, JobStep.started_at, JobStep.output.is_(None)).join(
            JobStep, JobStep.job_id == Job.id
        )
        rows = {str(row[0]): tuple(row[1:]) for row in await conn.execute(read)}
    assert rows == {i: ({"v": o}, fine, fine, o is None) for i, o in zip(ids, AWKWARD_OUTPUTS, strict=True)}


_SYNCHRONOUS_COMMIT = direct.Statement(select(func.current_setting("synchronous_commit")))
_SETTING_IN_UNFLUSHED = direct.Statement(select(func.current_setting("synchronous_commit")).where(claims.UNFLUSHED))


@pytest.mark.postgres
async def test_only_a_write_said_not_durable_commits_without_waiting_for_the_disk():
    """A claim commits without waiting for the WAL flush (``durable=False``); every other
    hot write keeps waiting, also on the same pooled connection afterwards."""
    try:
        url = await create_pg_database()
    except Exception as exc:
        unavailable("PostgreSQL", f"{type(exc).__name__}: {exc}")
    database = Database(url, pool_size=1)  # one connection: a setting left behind would show
    try:
        await migrated(url)

        async def setting(**how: bool) -> str:
            async with database.direct_write(**how) as conn:
                ((value,),) = await conn.fetch(_SYNCHRONOUS_COMMIT, {})
            return str(value)

        assert await setting(one_statement=True) == "on"
        assert await setting(durable=False) == "off"
        assert await setting() == "on"
        # A single statement said not durable turns the wait off itself, for its own
        # transaction (one round trip): the claim reads ``claims.UNFLUSHED`` for that.
        async with database.direct_write(one_statement=True, durable=False) as conn:
            ((value,),) = await conn.fetch(_SETTING_IN_UNFLUSHED, {})
        assert value == "off"
        assert await setting(one_statement=True) == "on"  # nothing left behind on the connection
        claim = str(claims.CLAIM.postgresql.statement.compile(dialect=postgresql.dialect()))
        assert "set_config(" in claim
    finally:
        await database.dispose()
        await drop_pg_database(url)
