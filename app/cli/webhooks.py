"""``jobnode webhooks list``: the webhook endpoints that fail (their deliveries retried now,
or failed in the last hours), on the database straight (no node)."""

from __future__ import annotations

import json

import click

from app.cli.access import operator_run
from app.cli.configuration import config_option
from app.cli.tables import short, table, when


@click.group()
def webhooks() -> None:
    """Webhook deliveries in the database."""


@webhooks.command("list")
@config_option
@click.option("--failing", is_flag=True, help="Failing endpoints only (the default: the only list there is).")
@click.option("--hours", type=click.FloatRange(min=0), default=24, show_default=True, help="Failed since.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON array instead of a table.")
def webhooks_list(config_path: str | None, failing: bool, hours: float, limit: int, as_json: bool) -> None:
    """Endpoints whose deliveries are being retried, then those whose deliveries failed:
    the URL, how many deliveries, since when, and one of their errors. A list of every
    endpoint would read every delivery; ``GET /api/jobs/{id}`` shows one job's."""
    rows = operator_run(config_path, lambda op, _: op.inspection.failing_webhooks(hours, limit))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no failing webhook endpoints")
        return
    click.echo(
        table(
            ["URL", "STATE", "DELIVERIES", "SINCE", "ERROR"],
            [[r["url"], r["state"], r["deliveries"], when(r["since"]), short(r["error"], 60)] for r in rows],
        )
    )
