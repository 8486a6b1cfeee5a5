"""``Database.write_transaction``: a hot write transaction as one body, on SQLite one call to
the writer's thread (``app.db.sqlite_writer``). What a caller sees: the body's answer once
committed; a body that fails writes nothing and the next one goes through; on SQLite a
transaction its caller was told failed (queued past its deadline) is never written, and a
cold write (``Database.write``: maintenance, operator actions) takes its turn among the hot
ones and waits for another process's lock as they do."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from app.db.direct import DirectConnection, Statement, wrap
from app.db.engine import Database
from app.db.models import Job
from app.db.statements.submits import INSERT_JOBS
from tests.statement_scenario import job_row
from tests.support import migrated


async def _opened(url: str, statement_timeout: float) -> AsyncIterator[Database]:
    await migrated(url)
    database = Database(url, statement_timeout=statement_timeout)
    try:
        yield database
    finally:
        await database.dispose()


@pytest.fixture
async def database(fresh_url: str) -> AsyncIterator[Database]:
    async for database in _opened(fresh_url, 1.0):
        yield database


async def _stored(database: Database) -> int:
    async with database.read() as conn:
        return int((await conn.execute(select(func.count()).select_from(Job))).scalar_one())


def _row() -> dict[str, object]:
    return job_row(str(uuid.uuid4()), "client-a", 1)


async def test_commits_and_answers(database: Database) -> None:
    rows = [_row(), _row()]

    async def insert(conn: DirectConnection) -> int:
        await conn.insert_many(INSERT_JOBS, rows)
        return len(rows)

    assert await database.write_transaction(insert) == 2
    assert await _stored(database) == 2


async def test_a_failing_body_writes_nothing_and_the_next_goes_through(database: Database) -> None:
    async def insert_then_fail(conn: DirectConnection) -> None:
        await conn.insert_many(INSERT_JOBS, [_row()])
        raise ValueError("the body's own error")

    with pytest.raises(ValueError, match="the body's own error"):
        await database.write_transaction(insert_then_fail)
    assert await _stored(database) == 0
    duplicate = _row()
    with pytest.raises(Exception, match=r"UNIQUE|unique|duplicate"):  # the database refuses the second row
        await database.write_transaction(lambda conn: conn.insert_many(INSERT_JOBS, [duplicate, duplicate]))
    assert await _stored(database) == 0
    await database.write_transaction(lambda conn: conn.insert_many(INSERT_JOBS, [_row()]))
    assert await _stored(database) == 1


async def test_concurrent_transactions_all_commit(database: Database) -> None:
    """Many callers at once (the writer's queue on SQLite, the pool on PostgreSQL), a claim's
    unflushed commit among them: every row is stored."""
    rows = [_row() for _ in range(40)]
    await asyncio.gather(
        *(
            database.write_transaction(lambda conn, row=row: conn.insert_many(INSERT_JOBS, [row]), durable=i % 2 == 0)
            for i, row in enumerate(rows)
        )
    )
    assert await _stored(database) == 40


@pytest.fixture
async def sqlite_database(tmp_path: Path) -> AsyncIterator[Database]:
    async for database in _opened(f"sqlite+aiosqlite:///{tmp_path / 'writer.db'}", 0.2):
        yield database


async def test_sqlite_unflushed_commit_restores_full_sync(sqlite_database: Database) -> None:
    """A claim's commit is not flushed; the writer's next commits are, as before."""
    await sqlite_database.write_transaction(lambda conn: conn.insert_many(INSERT_JOBS, [_row()]), durable=False)

    async def synchronous(conn: DirectConnection) -> int:
        return int((await conn.fetch(Statement(text("PRAGMA synchronous")), {}))[0][0])

    assert await sqlite_database.write_transaction(synchronous) == 2  # FULL
    assert await _stored(sqlite_database) == 1


async def test_sqlite_a_transaction_queued_past_its_deadline_is_not_written(sqlite_database: Database) -> None:
    async def slow(conn: DirectConnection) -> None:
        await conn.insert_many(INSERT_JOBS, [_row()])
        time.sleep(0.5)  # the writer's thread busy past the 0.2 s deadline

    late = _row()
    first = asyncio.ensure_future(sqlite_database.write_transaction(slow))
    await asyncio.sleep(0.05)
    with pytest.raises(TimeoutError):
        await sqlite_database.write_transaction(lambda conn: conn.insert_many(INSERT_JOBS, [late]))
    await first
    assert await _stored(sqlite_database) == 1


async def test_sqlite_a_body_that_waits_for_the_loop_is_refused(sqlite_database: Database) -> None:
    async def waits(conn: DirectConnection) -> None:
        await conn.insert_many(INSERT_JOBS, [_row()])
        await asyncio.sleep(0)

    with pytest.raises(RuntimeError, match="waited for the event loop"):
        await sqlite_database.write_transaction(waits)
    assert await _stored(sqlite_database) == 0


async def _cold_insert(database: Database, row: dict[str, object] | None = None) -> None:
    async with database.write() as conn:
        await wrap(conn).insert_many(INSERT_JOBS, [row or _row()])


async def _hot_insert(database: Database) -> None:
    await database.write_transaction(lambda conn: conn.insert_many(INSERT_JOBS, [_row()]))


WRITES = {"hot": _hot_insert, "cold": _cold_insert}


async def test_sqlite_a_cold_write_takes_its_turn_among_the_hot_ones(tmp_path: Path) -> None:
    """Hot transactions back to back, each holding the lock 10 ms: a cold write asked among
    them runs after those asked before it and before those asked after it (through SQLite's
    busy handler it found the lock free only once they had all ended)."""
    order: list[int | str] = []

    def hot(n: int) -> Callable[[DirectConnection], Awaitable[None]]:
        async def body(conn: DirectConnection) -> None:
            await conn.insert_many(INSERT_JOBS, [_row()])
            time.sleep(0.01)
            order.append(n)

        return body

    async def cold(database: Database) -> None:
        async with database.write() as conn:
            await wrap(conn).insert_many(INSERT_JOBS, [_row()])
            order.append("cold")

    async for database in _opened(f"sqlite+aiosqlite:///{tmp_path / 'turns.db'}", 5.0):
        writes = [asyncio.ensure_future(database.write_transaction(hot(n))) for n in range(3)]
        writes.append(asyncio.ensure_future(cold(database)))
        writes += [asyncio.ensure_future(database.write_transaction(hot(n))) for n in range(3, 6)]
        await asyncio.wait_for(asyncio.gather(*writes), 10)
        assert order == [0, 1, 2, "cold", 3, 4, 5]
        assert await _stored(database) == 7


async def test_sqlite_a_cold_write_waits_its_turn_only_until_its_deadline(sqlite_database: Database) -> None:
    """The hot writer busy past the 0.2 s deadline: the cold write fails (503), writes
    nothing, and goes through once the writer is free."""

    async def slow(conn: DirectConnection) -> None:
        await conn.insert_many(INSERT_JOBS, [_row()])
        time.sleep(0.5)

    first = asyncio.ensure_future(sqlite_database.write_transaction(slow))
    await asyncio.sleep(0.05)
    with pytest.raises(TimeoutError, match="writer was busy"):
        await _cold_insert(sqlite_database)
    await first
    assert await _stored(sqlite_database) == 1
    await _cold_insert(sqlite_database)
    assert await _stored(sqlite_database) == 2


async def test_sqlite_a_hot_write_inside_a_cold_one_is_refused(sqlite_database: Database) -> None:
    """It would wait for the turn its own caller holds: refused at once, nothing written."""
    with pytest.raises(RuntimeError, match="wait for itself"):
        async with sqlite_database.write() as conn:
            await wrap(conn).insert_many(INSERT_JOBS, [_row()])
            await _hot_insert(sqlite_database)
    assert await _stored(sqlite_database) == 0
    await _hot_insert(sqlite_database)
    assert await _stored(sqlite_database) == 1


def _hold_write_lock(database: Database) -> sqlite3.Connection:
    """Another process's write transaction (a worker, a CLI command): the lock, held."""
    holder = sqlite3.connect(database.url.database or "", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    return holder


@pytest.mark.parametrize("kind", WRITES)
async def test_sqlite_a_write_waits_for_a_lock_another_process_holds(sqlite_database: Database, kind: str) -> None:
    """Held for a while (under the 0.2 s deadline), then released: the write goes through."""
    holder = _hold_write_lock(sqlite_database)
    write = asyncio.ensure_future(WRITES[kind](sqlite_database))
    await asyncio.sleep(0.1)
    assert not write.done()  # waiting for the lock
    holder.execute("ROLLBACK")
    holder.close()
    await asyncio.wait_for(write, 5)
    assert await _stored(sqlite_database) == 1


@pytest.mark.parametrize("kind", WRITES)
async def test_sqlite_a_lock_held_past_the_deadline_fails_the_write_and_writes_nothing(
    sqlite_database: Database, kind: str
) -> None:
    """A ``TimeoutError`` (the node answers 503), and the writer goes on once it is free
    (SQLite's busy handler gave the cold writer "database is locked")."""
    holder = _hold_write_lock(sqlite_database)
    try:
        with pytest.raises(TimeoutError, match="write lock"):
            await WRITES[kind](sqlite_database)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert await _stored(sqlite_database) == 0
    await WRITES[kind](sqlite_database)
    assert await _stored(sqlite_database) == 1
