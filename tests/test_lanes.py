"""A lane keeps one connection of the hot pool between its statements (``app.db.direct.Lane``):
what its owner sees is a statement answered as through the pool, also after an error, after
the server dropped its connection, and while another statement of it is under way; the
pool's other users always find connections."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy import Integer, bindparam, func, select

from app.db.direct import Lane, Statement, _dropped
from app.db.engine import Database
from tests.support import migrated

pytestmark = pytest.mark.postgres

_PID = Statement(select(func.pg_backend_pid()))
_SLEEP_PID = Statement(select(func.pg_backend_pid(), func.pg_sleep(bindparam("seconds"))))
_DIVIDE = Statement(select(1 / bindparam("by", type_=Integer)))


@pytest.fixture
async def database(pg_fresh_url: str) -> AsyncIterator[Database]:
    await migrated(pg_fresh_url)
    database = Database(pg_fresh_url, pool_size=4)
    try:
        yield database
    finally:
        await database.dispose()


async def _pid(database: Database, lane: Lane | None) -> int:
    async with database.direct_read(lane) as conn:
        ((pid,),) = await conn.fetch(_PID, {})
    return int(pid)


async def test_a_lane_runs_its_statements_on_one_connection(database: Database) -> None:
    lane = database.lane()
    kept = await _pid(database, lane)
    # The pool hands out its most recently released connection first: were the lane's
    # given back after each statement, this one would be it.
    async with database.direct_read() as other:
        assert (await other.fetch(_PID, {}))[0][0] != kept
        assert await _pid(database, lane) == kept
        # a transaction on it as well, and a statement that is its own transaction
        for one_statement in (False, True):
            rows = await database.write_transaction(
                lambda conn: conn.fetch(_PID, {}), one_statement=one_statement, lane=lane
            )
            assert rows[0][0] == kept


async def test_a_statement_while_the_lane_is_busy_takes_another_connection(database: Database) -> None:
    lane = database.lane()
    kept = await _pid(database, lane)

    async def slow() -> int:
        async with database.direct_read(lane) as conn:
            return int((await conn.fetch(_SLEEP_PID, {"seconds": 0.3}))[0][0])

    busy = asyncio.create_task(slow())
    await asyncio.sleep(0.1)
    meanwhile = await _pid(database, lane)
    assert await busy == kept
    assert meanwhile != kept
    assert await _pid(database, lane) == kept


async def test_after_an_error_the_lane_answers_again(database: Database) -> None:
    lane = database.lane()
    await _pid(database, lane)
    with pytest.raises(asyncpg.DivisionByZeroError):
        async with database.direct_read(lane) as conn:
            await conn.fetch(_DIVIDE, {"by": 0})
    with pytest.raises(asyncpg.DivisionByZeroError):
        await database.write_transaction(lambda conn: conn.fetch(_DIVIDE, {"by": 0}), lane=lane)
    async with database.direct_read(lane) as conn:
        assert (await conn.fetch(_DIVIDE, {"by": 1}))[0][0] == 1
    assert (await database.write_transaction(lambda conn: conn.fetch(_DIVIDE, {"by": 1}), lane=lane))[0][0] == 1


async def test_a_connection_the_server_dropped_is_replaced_before_the_next_statement(database: Database) -> None:
    lane = database.lane()
    kept = await _pid(database, lane)
    async with database.read() as conn:
        await conn.execute(select(func.pg_terminate_backend(kept)))
    deadline = time.monotonic() + 5
    while lane.kept is not None and not _dropped(lane.kept) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)  # the connection learns it was dropped
    assert await _pid(database, lane) != kept


async def test_lanes_keep_at_most_half_the_pool(database: Database) -> None:
    lanes = [database.lane() for _ in range(4)]
    for lane in lanes:
        await _pid(database, lane)
    assert sum(lane.kept is not None for lane in lanes) == 2
    # the other half stays free for everyone else, at once
    async with database.direct_read() as first, database.direct_read() as second:
        assert (await first.fetch(_PID, {}))[0][0] != (await second.fetch(_PID, {}))[0][0]


async def test_closing_the_database_closes_the_lanes_connections_at_once(database: Database, pg_fresh_url: str) -> None:
    lane = database.lane()
    kept = await _pid(database, lane)
    began = time.monotonic()
    await database.dispose()
    assert time.monotonic() - began < 1  # not the pool's close waiting for a connection never released
    observer = await asyncpg.connect(pg_fresh_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        deadline = time.monotonic() + 5
        while await observer.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", kept):
            assert time.monotonic() < deadline, "the lane's session outlived the node's database"
            await asyncio.sleep(0.02)
    finally:
        await observer.close()
