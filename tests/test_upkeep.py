"""PostgreSQL's upkeep of the jobs table: a node says at start when nothing will vacuum it
(``app.db.upkeep``), since every claim then costs more than the last, for good."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import asyncpg
import pytest

from app.db.engine import Database
from app.db.upkeep import never_vacuumed, warn_if_never_vacuumed
from tests.support import migrated, node_settings, serve_node


@pytest.mark.parametrize(
    ("server_setting", "table_options", "reason"),
    [
        ("on", None, None),
        ("on", ["fillfactor=90"], None),
        ("on", ["autovacuum_enabled=true"], None),
        ("off", None, "PostgreSQL's autovacuum setting is off"),
        ("off", ["autovacuum_enabled=on"], "PostgreSQL's autovacuum setting is off"),
        ("on", ["fillfactor=90", "autovacuum_enabled=false"], "the jobs table's autovacuum_enabled=false"),
        ("on", ["autovacuum_enabled=OFF"], "the jobs table's autovacuum_enabled=OFF"),
        ("on", ["autovacuum_enabled=0"], "the jobs table's autovacuum_enabled=0"),
        ("off", ["autovacuum_enabled=no"], "the jobs table's autovacuum_enabled=no"),
        # Not autovacuum_enabled: another parameter whose name it begins.
        ("on", ["autovacuum_enabled_x=false"], None),
    ],
)
def test_why_nothing_vacuums_the_jobs_table(
    server_setting: str, table_options: list[str] | None, reason: str | None
) -> None:
    assert never_vacuumed(server_setting, table_options) == reason


async def _set(url: str, statement: str) -> str:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute(statement)
        return str(await conn.fetchval("SELECT current_setting('autovacuum')"))
    finally:
        await conn.close()


@pytest.mark.postgres
async def test_a_node_says_at_start_when_nothing_will_vacuum_its_jobs(
    pg_fresh_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The table's own setting is the test's to turn off; the server's is read beside the
    node (on this project's CI machines PostgreSQL runs with autovacuum off)."""
    await migrated(pg_fresh_url)
    server = await _set(pg_fresh_url, "ALTER TABLE jobs RESET (autovacuum_enabled)")
    database = Database(pg_fresh_url)
    try:
        expected = None if server == "on" else "PostgreSQL's autovacuum setting is off"
        assert await warn_if_never_vacuumed(database) == expected

        await _set(pg_fresh_url, "ALTER TABLE jobs SET (autovacuum_enabled = off, fillfactor = 100)")
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="jobnode.db"):
            assert await warn_if_never_vacuumed(database) == "the jobs table's autovacuum_enabled=off"
        (warning,) = [r for r in caplog.records if r.name == "jobnode.db"]
        assert warning.levelno == logging.WARNING
        assert warning.getMessage().startswith("the jobs table's autovacuum_enabled=off: nothing will vacuum")
        assert "VACUUM jobs" in warning.getMessage()
    finally:
        await database.dispose()

    # A node starting on that database says it once, before it serves.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="jobnode.db"):
        async with serve_node(node_settings(pg_fresh_url, {"scheduler": {"enabled": False}})) as running:
            async with running.client() as client:
                assert (await client.get("/health")).status_code == 200
    said = [r.getMessage() for r in caplog.records if "nothing will vacuum the jobs table" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("the jobs table's autovacuum_enabled=off"), said


async def test_sqlite_has_no_vacuum_to_miss(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """SQLite frees a row's old index entries in the statement that replaces it."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'upkeep.db'}"
    await migrated(url)
    database = Database(url)
    try:
        with caplog.at_level(logging.WARNING, logger="jobnode.db"):
            assert await warn_if_never_vacuumed(database) is None
        assert not [r for r in caplog.records if r.name == "jobnode.db"]
    finally:
        await database.dispose()


async def _claimed_then_vacuumed(url: str) -> str:
    """20,000 finished jobs and 300 pending, claimed (their pending versions now dead, on a
    few pages of the table: far fewer than 2 %), then a VACUUM: what it told."""
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    said: list[str] = []
    try:
        await conn.execute("TRUNCATE jobs CASCADE")
        await conn.execute(
            "INSERT INTO jobs (id, client, source, containers, input, requires_proof, status, attempts, stream, "
            "run_after, created_at, finished_at) SELECT gen_random_uuid(), 'c', 'offchain', '[\"echo\"]', "
            "jsonb_build_object('n', i), false, CASE WHEN i > 20000 THEN 'pending' ELSE 'success' END, 0, false, "
            "now(), now(), CASE WHEN i > 20000 THEN NULL ELSE now() END FROM generate_series(1, 20300) AS i"
        )
        await conn.execute("VACUUM (ANALYZE) jobs")
        await conn.execute("UPDATE jobs SET status = 'running', attempts = 1 WHERE status = 'pending'")
        conn.add_log_listener(lambda _conn, message: said.append(str(message)))
        await conn.execute("VACUUM (VERBOSE) jobs")
        await asyncio.sleep(0.1)  # the last messages
    finally:
        await conn.close()
    return "\n".join(said)


@pytest.mark.postgres
async def test_every_vacuum_takes_the_claimed_jobs_out_of_the_claim_index(pg_fresh_url: str) -> None:
    """PostgreSQL skips a table's indexes when its dead rows sit on under 2 % of its pages
    ("index scan bypassed"), which leaves the claim walking past every job claimed since;
    migration 0009 makes every VACUUM of ``jobs`` clean them. Without it, the same claims
    and VACUUM leave the indexes alone: the scenario is one PostgreSQL would skip."""
    await migrated(pg_fresh_url)
    told = await _claimed_then_vacuumed(pg_fresh_url)
    assert "index scan bypassed" not in told, told
    assert 'index "ix_jobs_claim"' in told, told

    await _set(pg_fresh_url, "ALTER TABLE jobs RESET (vacuum_index_cleanup)")  # as before 0009
    told = await _claimed_then_vacuumed(pg_fresh_url)
    assert "index scan bypassed" in told, told
