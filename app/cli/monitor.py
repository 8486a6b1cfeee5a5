"""What a node and its queue are doing: ``jobnode stats`` (from SQL) and ``jobnode
containers`` (from a running node's API)."""

from __future__ import annotations

import click

from app.cli.access import operator_run
from app.cli.configuration import config_option
from app.cli.tables import short, table
from app.formatting import duration


@click.command()
@click.option("--url", default="http://127.0.0.1:4000", show_default=True, help="A running node.")
@click.option(
    "--token",
    envvar="JOBNODE_OPERATOR_TOKEN",
    default=None,
    help="server.operator_token of that node (or env JOBNODE_OPERATOR_TOKEN).",
)
def containers(url: str, token: str | None) -> None:
    """Each container's live state, from a running node's /api/containers."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.get(url.rstrip("/") + "/api/containers", headers=headers, timeout=10)
    except httpx.HTTPError as exc:
        raise click.ClickException(f"cannot reach {url}: {exc}") from None
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code != 200:
        error = body.get("error") if isinstance(body, dict) else response.text[:200]
        raise click.ClickException(f"{url} answered {response.status_code}: {error}")
    if not body:
        click.echo("no containers configured")
        return
    click.echo(
        table(
            ["CONTAINER", "STATE", "IN FLIGHT", "DONE", "FAILED", "RESTARTS", "MEAN", "P95", "LAST ERROR"],
            [
                [
                    c["id"],
                    c["state"],
                    f"{c['in_flight']}/{c['concurrency']}",
                    c["done"],
                    c["failed"],
                    c["restarts"],
                    duration(c["mean_seconds"]),
                    duration(c["p95_seconds"]),
                    short(c["last_error"], 50),
                ]
                for c in body
            ],
        )
    )


@click.command()
@config_option
def stats(config_path: str | None) -> None:
    """Jobs by state, the oldest pending job, throughput over the last minute (from SQL)."""
    numbers = operator_run(config_path, lambda op, _: op.numbers.stats())
    click.echo(table(["STATE", "JOBS"], [[state, count] for state, count in numbers["jobs"].items()]))
    click.echo("")
    click.echo(f"queue depth             {numbers['queue_depth']}")
    oldest = duration(numbers["oldest_pending_seconds"]) if numbers["queue_depth"] else "-"
    click.echo(f"oldest pending          {oldest}")
    click.echo(f"finished, last minute   {numbers['finished_last_minute']} jobs/min")
