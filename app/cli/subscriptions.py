"""``jobnode subscriptions``: list, show and cancel any client's subscriptions (SPEC §7) on
the database straight (no node). A cancel reaches the nodes' tickers by NOTIFY on
PostgreSQL; on SQLite the node finds it cancelled when its next interval comes due."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import click

from app.cli.access import on_database
from app.cli.configuration import config_option, settings_for
from app.cli.tables import table
from app.errors import ClientError


def _id(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise click.BadParameter("Invalid subscription id (not a UUID)") from None


def _at(unix: int | None) -> str:
    return "-" if unix is None else datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _service(database: Any) -> Any:
    from app.db.signal import JobSignal
    from app.jobs.subscriptions import SubscriptionService

    return SubscriptionService(database, JobSignal(), max_active=0)


def _run(config_path: str | None, action: Any) -> Any:
    try:
        return on_database(settings_for(config_path), lambda database: action(_service(database)))
    except ClientError as exc:
        raise click.ClickException(exc.message) from None


@click.group()
def subscriptions() -> None:
    """Subscriptions in the database: list, show, cancel."""


@subscriptions.command("list")
@config_option
@click.option("--active", is_flag=True, help="Only active subscriptions.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON array instead of a table.")
def subscriptions_list(config_path: str | None, active: bool, limit: int, as_json: bool) -> None:
    """The newest subscriptions first."""
    rows = _run(config_path, lambda service: service.newest(active, limit))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no subscriptions")
        return
    click.echo(
        table(
            ["ID", "STATUS", "CLIENT", "PERIOD", "FREQUENCY", "NEXT", "NEXT AT (UTC)", "MISSED"],
            [
                [
                    r["id"],
                    r["status"],
                    r["client"],
                    r["period"],
                    r["frequency"],
                    r["next_interval"] if r["status"] == "active" else "-",
                    _at(r["next_at"]),
                    r["missed"],
                ]
                for r in rows
            ],
        )
    )


async def _document(service: Any, subscription: str, cancel: bool) -> dict[str, Any]:
    owner = await service.owner(subscription)
    action = service.cancel if cancel else service.document
    return {"client": owner, **await action(owner, subscription)}


@subscriptions.command("show")
@config_option
@click.argument("subscription_id", callback=lambda _c, _p, v: _id(v))
@click.option("--json", "as_json", is_flag=True, help="As JSON (the shape of GET /api/subscriptions/{id}).")
def subscriptions_show(config_path: str | None, subscription_id: str, as_json: bool) -> None:
    """One subscription: its schedule, counts and newest interval jobs."""
    doc = _run(config_path, lambda service: _document(service, subscription_id, cancel=False))
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    counts = doc["counts"]
    fields = [
        ("id", doc["id"]),
        ("client", doc["client"]),
        ("status", doc["status"]),
        ("containers", " -> ".join(doc["containers"])),
        ("schedule", f"every {doc['period']} s, {doc['frequency']} times, from {_at(doc['active_at'])}"),
        ("next", "-" if doc["next_interval"] is None else f"{doc['next_interval']} at {_at(doc['next_at'])}"),
        ("jobs", f"{counts['started']} started, {counts['success']} success, {counts['failed']} failed"),
        ("missed", counts["missed"]),
    ]
    width = max(len(k) for k, _ in fields)
    for key, value in fields:
        click.echo(f"{key.ljust(width)}  {value}")
    if doc["jobs"]:
        click.echo("")
        click.echo(table(["INTERVAL", "JOB", "STATUS"], [[j["interval"], j["id"], j["status"]] for j in doc["jobs"]]))


@subscriptions.command("cancel")
@config_option
@click.argument("subscription_id", callback=lambda _c, _p, v: _id(v))
def subscriptions_cancel(config_path: str | None, subscription_id: str) -> None:
    """Cancel a subscription: no interval starts after it (a running interval job ends as it would)."""
    doc = _run(config_path, lambda service: _document(service, subscription_id, cancel=True))
    click.echo(f"{doc['id']}: {doc['status']}")
