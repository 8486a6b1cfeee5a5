"""``jobnode serve``: one node process under uvicorn, or ``server.workers`` of them behind
one port."""

from __future__ import annotations

import signal
import socket
import sys
from typing import Any

import click

from app.cli.access import on_database
from app.cli.configuration import InvalidConfiguration, config_option, settings_for
from app.config.settings import Settings
from app.logging import configure_logging


def _exit_cleanly(_signum: int, _frame: object) -> None:
    raise SystemExit(0)


@click.command()
@config_option
@click.option("--host", default=None, help="Override server.host.")
@click.option("--port", type=int, default=None, help="Override server.port.")
def serve(config_path: str | None, host: str | None, port: int | None) -> None:
    """Run the node (migrates the database first); server.workers processes of it."""
    from app.db import migrate

    settings = settings_for(config_path)
    if host:
        settings.server.host = host
    if port is not None:
        settings.server.port = port
    try:
        configure_logging(settings.log_level)
    except ValueError as exc:
        raise InvalidConfiguration(exc) from None
    # Migrating here, before any server process starts, is also the check that the
    # database can be reached: a failure is one line, not the server's startup traceback.
    on_database(settings, migrate.upgrade)
    if settings.server.workers > 1:
        from app.workers import Supervisor

        sys.exit(Supervisor(settings, run_node).run())
    run_node(settings)


def run_node(settings: Settings, sock: socket.socket | None = None) -> None:
    """One node process serving until SIGTERM/SIGINT; on ``sock`` when a supervisor bound it."""
    import uvicorn

    from app import heap
    from app.http.wire import server_options
    from app.node import Node

    if sock is not None:  # a worker process: logging is configured per process
        configure_logging(settings.log_level)
    node = Node(settings)
    # uvicorn shuts down gracefully on SIGTERM/SIGINT and then re-raises the signal with
    # the handler that was installed before it: make that one a clean exit (status 0).
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _exit_cleanly)
    config = uvicorn.Config(
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
        # uvicorn hands it to asyncio.timeout, which takes seconds as a float; its hint says int.
        timeout_graceful_shutdown=settings.scheduler.shutdown_grace,  # type: ignore[arg-type]
        **server_options(),  # the JSON error shape for requests uvicorn refuses itself
    )
    server = uvicorn.Server(config)
    heap.settle()  # the imports and the app are built: never walked by the collector again
    stop = server.handle_exit

    def handle_exit(sig: int, frame: Any) -> None:
        """Tell the node the moment a stop signal arrives: /health/ready answers 503 while
        uvicorn still finishes the requests in flight."""
        node.drain()
        stop(sig, frame)

    server.handle_exit = handle_exit  # type: ignore[method-assign]  # uvicorn installs it per signal
    server.run(sockets=None if sock is None else [sock])
    if not server.started:
        sys.exit(3)  # as uvicorn.run: the startup (e.g. the lifespan) failed
