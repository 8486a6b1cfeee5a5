"""``jobnode``: serve the node, manage its database."""

from __future__ import annotations

import asyncio
import signal
import sys

import click

from app.config import ConfigError, Settings, load_settings
from app.logging import configure_logging

config_option = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), envvar="JOBNODE_CONFIG",
    help="JSON config file (default: all defaults, SQLite jobnode.db).",
)


def _settings(config_path: str | None) -> Settings:
    try:
        return load_settings(config_path)
    except ConfigError as exc:
        raise click.ClickException(f"invalid configuration: {exc}") from None


def _exit_cleanly(_signum: int, _frame: object) -> None:
    raise SystemExit(0)


@click.group()
def main() -> None:
    """jobnode: a restart-safe job node."""


@main.command()
@config_option
@click.option("--host", default=None, help="Override server.host.")
@click.option("--port", type=int, default=None, help="Override server.port.")
def serve(config_path: str | None, host: str | None, port: int | None) -> None:
    """Run the node (migrates the database first)."""
    import uvicorn

    from app.node import Node

    settings = _settings(config_path)
    if host:
        settings.server.host = host
    if port is not None:
        settings.server.port = port
    try:
        configure_logging(settings.log_level)
    except ValueError as exc:
        raise click.ClickException(f"invalid configuration: {exc}") from None
    node = Node(settings)
    # uvicorn shuts down gracefully on SIGTERM/SIGINT and then re-raises the signal with
    # the handler that was installed before it: make that one a clean exit (status 0).
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _exit_cleanly)
    uvicorn.run(
        node.app(),
        host=settings.server.host,
        port=settings.server.port,
        # Client identity is the app's business (server.trusted_proxies): uvicorn must
        # not rewrite the peer address from X-Forwarded-For.
        proxy_headers=False,
        server_header=False,
        access_log=False,
        log_level=settings.log_level.lower(),
        log_config=None,  # app.logging formats uvicorn's records too
        timeout_graceful_shutdown=settings.scheduler.shutdown_grace,
    )


@main.group()
def db() -> None:
    """Database schema (Alembic)."""


@db.command()
@config_option
def upgrade(config_path: str | None) -> None:
    """Apply every migration."""
    from app.db import migrate
    from app.db.engine import Database

    async def run() -> str | None:
        database = Database(_settings(config_path).database.url)
        try:
            await migrate.upgrade(database)
            return await migrate.current_revision(database)
        finally:
            await database.dispose()

    click.echo(f"database at revision {asyncio.run(run())}")


@db.command()
@config_option
def current(config_path: str | None) -> None:
    """Show the database's revision and the code's head."""
    from app.db import migrate
    from app.db.engine import Database

    async def run() -> str | None:
        database = Database(_settings(config_path).database.url)
        try:
            return await migrate.current_revision(database)
        finally:
            await database.dispose()

    click.echo(f"database: {asyncio.run(run())}  code head: {migrate.head_revision()}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
