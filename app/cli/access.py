"""How a command reaches the configured database: straight, without a node, and with one
line instead of a traceback when it cannot (``database_call``)."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import click

from app.cli.configuration import settings_for
from app.config.settings import Settings

if TYPE_CHECKING:  # imported when a command needs them: the CLI starts fast
    from app.db.engine import Database
    from app.jobs.actions import JobActions
    from app.jobs.inspection import JobInspection
    from app.jobs.queue_numbers import QueueNumbers

T = TypeVar("T")


def database_call(run: Callable[[], Awaitable[T]]) -> T:
    """``asyncio.run(run())`` for every command that uses the database: one that cannot be
    reached (refused, unreachable, authentication refused, no such database, unable to
    open the file) ends the command with one line, ``Error: database unavailable: …``,
    and exit status 1; anything else is a bug and keeps its traceback."""
    from app.db.errors import is_database_unavailable, unavailable_reason

    async def guarded() -> T:
        try:
            return await run()
        except Exception:
            _join_sqlite_threads()
            raise

    try:
        return asyncio.run(guarded())
    except Exception as exc:
        if is_database_unavailable(exc):
            raise click.ClickException(f"database unavailable: {unavailable_reason(exc)}") from None
        raise


def _join_sqlite_threads(timeout: float = 2.0) -> None:
    """After a failed SQLite connect, aiosqlite's worker thread still hands a result to the
    event loop; were the loop closed by then, the thread would print a traceback after
    the one-line error. Its threads are named after their function."""
    for thread in threading.enumerate():
        if thread.name.endswith("(_connection_worker_thread)"):
            thread.join(timeout)


def on_database(settings: Settings, action: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``action(database)`` on the configured database, closing it afterwards."""
    from app.db.engine import Database

    async def run() -> T:
        database = Database(settings.database.url, connect_timeout=settings.database.connect_timeout)
        try:
            return await action(database)
        finally:
            await database.dispose()

    return database_call(run)


@dataclass(frozen=True)
class Operator:
    """What the operator commands use, on the database straight (no node)."""

    database: Database
    inspection: JobInspection
    actions: JobActions
    numbers: QueueNumbers


def operator_run(config_path: str | None, action: Callable[[Operator, Settings], Awaitable[T]]) -> T:
    """Run ``action(operator, settings)`` on the configured database."""
    from app.db.engine import Database
    from app.errors import JOB_NOT_FOUND
    from app.jobs.actions import JobActions, JobConflict
    from app.jobs.inspection import JobInspection, JobNotFound
    from app.jobs.queue_numbers import QueueNumbers

    settings = settings_for(config_path)

    async def run() -> T:
        database = Database(
            settings.database.url,
            pool_size=2,
            connect_timeout=settings.database.connect_timeout,
            statement_timeout=settings.database.statement_timeout,
        )
        inspection = JobInspection(database)
        actions = JobActions(database, inspection, f"cli@{socket.gethostname()}")
        try:
            return await action(Operator(database, inspection, actions, QueueNumbers(database)), settings)
        finally:
            await database.dispose()

    try:
        return database_call(run)
    except JobNotFound:
        raise click.ClickException(JOB_NOT_FOUND.message) from None
    except JobConflict as conflict:
        raise click.ClickException(conflict.message) from None
