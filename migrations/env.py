"""Alembic environment for jobnode.

Run two ways: by ``app.db.migrate`` on an open connection (the node on start and
``jobnode db upgrade``), or by the plain ``alembic`` command, which then opens its own
async engine from the node's settings. On PostgreSQL the migration transaction first
takes an advisory lock, so nodes that start together migrate one after the other.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import create_async_engine

from app.db.models import Base

#: pg_advisory_xact_lock key for migrations ("jobnode" in ASCII, truncated to int64).
MIGRATION_LOCK_KEY = 0x6A6F626E6F6465

target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        context.run_migrations()


async def _run_with_own_engine() -> None:
    from app.config.loading import load_settings

    engine = create_async_engine(load_settings().database.url)
    async with engine.connect() as connection:
        await connection.run_sync(_run)
        await connection.commit()
    await engine.dispose()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
    else:
        asyncio.run(_run_with_own_engine())


if context.is_offline_mode():
    raise SystemExit("jobnode migrations run online only")
run_migrations_online()
