"""``jobnode db``: the schema (Alembic) and the retention applied now."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import click

from app.cli.access import Operator, on_database, operator_run
from app.cli.configuration import config_option, settings_for
from app.cli.tables import end_progress
from app.config.settings import Settings


@click.group()
def db() -> None:
    """Database schema (Alembic)."""


@db.command()
@config_option
def upgrade(config_path: str | None) -> None:
    """Apply every migration."""
    from app.db import migrate

    async def run(database: Any) -> str | None:
        await migrate.upgrade(database)
        return await migrate.current_revision(database)

    click.echo(f"database at revision {on_database(settings_for(config_path), run)}")


@db.command()
@config_option
def current(config_path: str | None) -> None:
    """Show the database's revision and the code's head."""
    from app.db import migrate

    revision = on_database(settings_for(config_path), migrate.current_revision)
    click.echo(f"database: {revision}  code head: {migrate.head_revision()}")


@db.command()
@config_option
@click.option(
    "--days",
    type=click.FloatRange(0, min_open=True),
    default=None,
    help="Delete finished jobs older than this many days, more than 0 (default: retention.finished_jobs_days).",
)
def prune(config_path: str | None, days: float | None) -> None:
    """Apply the retention now: delete old finished jobs in small batches."""

    async def run(op: Operator, settings: Settings) -> tuple[int, float]:
        from app.maintenance import pruner

        keep = settings.retention.finished_jobs_days if days is None else days
        if keep <= 0:  # only the configured value can be 0 (--days must be more)
            return -1, keep
        cutoff = datetime.now(UTC) - timedelta(days=keep)
        total = await pruner.prunable(op.database, cutoff)
        with click.progressbar(length=total, label=f"deleting {total} finished jobs", file=sys.stderr) as bar:
            deleted = await pruner.prune(op.database, cutoff, bar.update)
        end_progress()
        return deleted, keep

    deleted, keep = operator_run(config_path, run)
    if deleted < 0:
        click.echo("retention is off (retention.finished_jobs_days is 0): nothing deleted; use --days")
        return
    click.echo(f"deleted {deleted} finished jobs older than {keep:g} days")
