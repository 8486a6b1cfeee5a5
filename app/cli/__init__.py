"""``jobnode``: serve the node, manage its database, inspect and act on its jobs.

``main`` is the console script; each command lives in the module of its idea and is
registered here, so that this is the one list of what ``jobnode --help`` offers.
"""

from __future__ import annotations

import click

from app import __version__
from app.cli import bench, configuration, database, jobs, monitor, serve, subscriptions, webhooks


@click.group()
@click.version_option(__version__, "--version", prog_name="jobnode", message="%(prog)s %(version)s")
def main() -> None:
    """jobnode: a restart-safe job node."""


main.add_command(serve.serve)
main.add_command(database.db)
main.add_command(configuration.config_group)
main.add_command(jobs.jobs)
main.add_command(subscriptions.subscriptions)
main.add_command(webhooks.webhooks)
main.add_command(monitor.containers)
main.add_command(monitor.stats)
main.add_command(bench.bench)
