"""Alembic owns the schema (SPEC §6): migrations produce the models exactly, and the CLI
applies them idempotently (``tests/test_statements.py`` checks that each statement is
served by an index)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect, text

from app.db import migrate
from app.db.engine import Database
from app.db.models import Base
from tests.conftest import BACKENDS
from tests.helpers import fresh_database

BIN = Path(sys.executable).parent
TABLES = {"jobs", "job_steps", "subscriptions", "step_attempts", "webhook_deliveries", "webhook_attempts"}


@pytest.fixture(params=BACKENDS)
async def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with fresh_database(request.param, tmp_path) as url:
        yield url


def run(args: list[str], url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBNODE_")}
    env["JOBNODE_DATABASE_URL"] = url
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=cwd, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


async def schema_diff(url: str) -> list:
    def diff(connection: Connection) -> list:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, Base.metadata)

    database = Database(url)
    try:
        async with database.reader.connect() as connection:
            return await connection.run_sync(diff)
    finally:
        await database.dispose()


async def table_names(url: str) -> set[str]:
    database = Database(url)
    try:
        async with database.reader.connect() as connection:
            return set(await connection.run_sync(lambda c: inspect(c).get_table_names()))
    finally:
        await database.dispose()


async def downgrade_to_base(url: str) -> None:
    database = Database(url)
    config = migrate.alembic_config()

    def _downgrade(connection: Connection) -> None:
        config.attributes["connection"] = connection
        command.downgrade(config, "base")

    try:
        async with database.writer.connect() as connection:
            await connection.run_sync(_downgrade)
            await connection.commit()
    finally:
        await database.dispose()


async def test_alembic_upgrade_from_empty_matches_the_models(empty_url, root):
    run([str(BIN / "alembic"), "upgrade", "head"], empty_url, root)
    assert TABLES <= await table_names(empty_url)
    assert await schema_diff(empty_url) == []

    await downgrade_to_base(empty_url)
    assert not TABLES & await table_names(empty_url)

    # jobnode db upgrade: from base again, then once more with nothing to do.
    for _ in range(2):
        done = run([str(BIN / "jobnode"), "db", "upgrade"], empty_url, root)
        assert f"database at revision {migrate.head_revision()}" in done.stdout
    assert await schema_diff(empty_url) == []


async def test_postgresql_column_types(postgresql_url):
    database = Database(postgresql_url)
    try:
        async with database.reader.connect() as connection:
            rows = await connection.execute(
                text(
                    "SELECT table_name, column_name, data_type FROM information_schema.columns "
                    "WHERE table_schema = 'public' AND table_name IN ('jobs', 'job_steps', 'subscriptions')"
                )
            )
            types = {(table, column): data_type for table, column, data_type in rows}
            client_index = (
                await connection.execute(text("SELECT pg_get_indexdef('ix_jobs_client_seq'::regclass)"))
            ).scalar_one()
            lz4 = (
                await connection.execute(
                    text("SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'")
                )
            ).scalar()
            compression = dict(
                (
                    await connection.execute(
                        text(
                            "SELECT attrelid::regclass::text || '.' || attname, attcompression::text "
                            "FROM pg_attribute WHERE (attrelid, attname) "
                            "IN (('jobs'::regclass, 'input'), ('job_steps'::regclass, 'output'))"
                        )
                    )
                ).all()
            )
    finally:
        await database.dispose()
    # A page of a client's ids is read from the index alone.
    assert client_index.endswith("(client, seq) INCLUDE (id)"), client_index
    # Payloads are compressed with lz4 where the server has it (migration 0008): pglz
    # spent twice the database's CPU on a 1 MB job.
    assert compression == (
        {"jobs.input": "l", "job_steps.output": "l"} if lz4 else {"jobs.input": "", "job_steps.output": ""}
    )
    expected = {
        ("jobs", "id"): "uuid",
        ("jobs", "containers"): "jsonb",
        ("jobs", "input"): "jsonb",
        ("job_steps", "job_id"): "uuid",
        ("job_steps", "output"): "jsonb",
        ("jobs", "subscription_id"): "uuid",
        ("subscriptions", "id"): "uuid",
        ("subscriptions", "containers"): "jsonb",
        ("subscriptions", "input"): "jsonb",
        ("subscriptions", "next_due_at"): "timestamp with time zone",
        ("subscriptions", "frequency"): "bigint",
        ("subscriptions", "active_at"): "bigint",
    }
    for table, column in [
        ("jobs", c) for c in ("lease_expires_at", "run_after", "created_at", "started_at", "finished_at")
    ] + [("job_steps", "started_at"), ("job_steps", "finished_at")]:
        expected[(table, column)] = "timestamp with time zone"
    assert {key: types.get(key) for key in expected} == expected
    # No other timestamp column without a zone, no other JSON column as plain json.
    assert "timestamp without time zone" not in types.values()
    assert "json" not in types.values()
