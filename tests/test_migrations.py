"""Alembic owns the schema (SPEC §6): migrations produce the models exactly, the CLI
applies them idempotently, and every query the API makes is served by an index."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect, text
from sqlalchemy.sql import Select

from app.db import migrate
from app.db.engine import Database
from app.db.models import Base
from app.db.statements import maintenance
from app.jobs import queries
from tests.conftest import BACKENDS
from tests.helpers import fresh_database

BIN = Path(sys.executable).parent
TABLES = {"jobs", "job_steps"}
INDEXES = {index.name for table in Base.metadata.tables.values() for index in table.indexes} | {
    "uq_jobs_id",
    "uq_job_steps_job_position",
    "jobs_pkey",
    "job_steps_pkey",
}


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
                    "WHERE table_schema = 'public' AND table_name IN ('jobs', 'job_steps')"
                )
            )
            types = {(table, column): data_type for table, column, data_type in rows}
            client_index = (
                await connection.execute(text("SELECT pg_get_indexdef('ix_jobs_client_seq'::regclass)"))
            ).scalar_one()
    finally:
        await database.dispose()
    # A page of a client's ids is read from the index alone.
    assert client_index.endswith("(client, seq) INCLUDE (id)"), client_index
    expected = {
        ("jobs", "id"): "uuid",
        ("jobs", "containers"): "jsonb",
        ("jobs", "input"): "jsonb",
        ("job_steps", "job_id"): "uuid",
        ("job_steps", "output"): "jsonb",
    }
    for table, column in [
        ("jobs", c) for c in ("lease_expires_at", "run_after", "created_at", "started_at", "finished_at")
    ] + [("job_steps", "started_at"), ("job_steps", "finished_at")]:
        expected[(table, column)] = "timestamp with time zone"
    assert {key: types.get(key) for key in expected} == expected
    # No other timestamp column without a zone, no other JSON column as plain json.
    assert "timestamp without time zone" not in types.values()
    assert "json" not in types.values()


def api_queries() -> dict[str, Select]:
    client, job_id = "127.0.0.1", str(uuid.uuid4())
    return {
        "list all": queries.client_job_ids(None, False, False).statement.params(client=client),
        "list pending": queries.client_job_ids(True, False, False).statement.params(client=client),
        "list finished": queries.client_job_ids(False, False, False).statement.params(client=client),
        "list page": queries.client_job_ids(None, True, True).statement.params(client=client, after_seq=42, limit=100),
        "list pending page": queries.client_job_ids(True, True, True).statement.params(
            client=client, after_seq=42, limit=100
        ),
        "cursor": queries.CLIENT_JOB_SEQ.statement.params(client=client, id=job_id),
        "results by id": queries.RESULTS.statement.params(ids=[job_id, str(uuid.uuid4())]),
        "pending counts": queries.UNFINISHED_COUNTS.statement,
        "prune batch": maintenance.PRUNE_BATCH.statement.params(older_than=datetime.now(UTC), batch=500),
    }


async def test_every_api_query_uses_an_index(database_url):
    database = Database(database_url)
    plans: dict[str, str] = {}
    try:
        async with database.reader.connect() as connection:
            if database.is_postgresql:
                await connection.exec_driver_sql("SET enable_seqscan = off")
            for name, statement in api_queries().items():
                sql = str(statement.compile(dialect=connection.dialect, compile_kwargs={"literal_binds": True}))
                prefix = "EXPLAIN " if database.is_postgresql else "EXPLAIN QUERY PLAN "
                rows = (await connection.exec_driver_sql(prefix + sql)).all()
                plans[name] = "\n".join(str(row[0] if database.is_postgresql else row[-1]) for row in rows)
    finally:
        await database.dispose()
    for name, plan in plans.items():
        if database.is_postgresql:
            assert "Seq Scan" not in plan, (name, plan)
            assert any(index in plan for index in INDEXES), (name, plan)
        else:
            lines = plan.splitlines()
            assert any("USING INDEX" in line or "USING COVERING INDEX" in line for line in lines), (name, plan)
            full_scans = [line for line in lines if line.startswith("SCAN ") and " USING " not in line]
            assert full_scans == [], (name, plan)
        if name.startswith("list"):
            assert "TEMP B-TREE" not in plan and "Sort" not in plan, (name, plan)
