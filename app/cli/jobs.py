"""``jobnode jobs``: list, show, cancel and retry jobs on the database straight (no node)."""

from __future__ import annotations

import json
import sys
import uuid
from typing import Any

import click

from app.cli.access import Operator, operator_run
from app.cli.configuration import config_option
from app.cli.tables import end_progress, short, table, when
from app.config.settings import Settings
from app.formatting import duration


def job_id_argument(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise click.BadParameter("Invalid job id (not a UUID)") from None


STATES = ("pending", "running", "success", "failed", "cancelled")


@click.group()
def jobs() -> None:
    """Jobs in the database: list, show, cancel, retry."""


@jobs.command("list")
@config_option
@click.option("--status", type=click.Choice(STATES), default=None, help="Only jobs in this state.")
@click.option("--client", default=None, help="Only jobs of this client address.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON array instead of a table.")
def jobs_list(config_path: str | None, status: str | None, client: str | None, limit: int, as_json: bool) -> None:
    """The newest jobs first."""
    rows = operator_run(config_path, lambda op, _: op.inspection.list_jobs(status, client, limit))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no jobs")
        return
    click.echo(
        table(
            ["ID", "STATUS", "CLIENT", "CONTAINERS", "ATTEMPTS", "CREATED (UTC)", "ERROR"],
            [
                [
                    r["id"],
                    r["status"],
                    r["client"],
                    ",".join(r["containers"]),
                    r["attempts"],
                    when(r["created_at"]),
                    short(r["error"], 50),
                ]
                for r in rows
            ],
        )
    )


@jobs.command("show")
@config_option
@click.argument("job_id", callback=lambda _c, _p, v: job_id_argument(v))
@click.option("--json", "as_json", is_flag=True, help="The job as JSON (the shape of GET /api/jobs/{id}).")
def jobs_show(config_path: str | None, job_id: str, as_json: bool) -> None:
    """One job in full: input, every step's output or error, timings."""
    detail = operator_run(config_path, lambda op, _: op.inspection.job(job_id))
    if as_json:
        click.echo(json.dumps(detail, indent=2))
        return
    fields = [
        ("id", detail["id"]),
        ("status", f"{detail['status']} (API: {detail['api_status']})"),
        ("client", detail["client"]),
        ("source", detail["source"]),
        ("containers", " -> ".join(detail["containers"])),
        ("attempts", detail["attempts"]),
        ("retries", detail["retries"]),
        ("node", detail["node"] or "-"),
        ("created", when(detail["created_at"])),
        ("started", when(detail["started_at"]) or "-"),
        ("finished", when(detail["finished_at"]) or "-"),
        ("queued for", duration(detail["queued_seconds"])),
        ("ran for", duration(detail["duration_seconds"])),
        ("input", json.dumps(detail["input"])),
    ]
    width = max(len(k) for k, _ in fields)
    for key, value in fields:
        click.echo(f"{key.ljust(width)}  {value}")
    click.echo("")
    _show_steps(detail)
    _show_retries(detail)


def _show_steps(detail: dict[str, Any]) -> None:
    if not detail["steps"]:
        click.echo("no step finished yet")
        return
    click.echo(
        table(
            ["#", "CONTAINER", "RESULT", "DURATION", "ATTEMPT", "NODE"],
            [
                [
                    s["position"],
                    s["container"],
                    short(f"error: {s['error']}" if s["error"] is not None else json.dumps(s["output"]), 70),
                    duration(s["duration_seconds"]),
                    s["attempt"],
                    s["node"] or "",
                ]
                for s in detail["steps"]
            ],
        )
    )
    _webhook(detail["webhook"])


def _webhook(webhook: dict[str, Any] | None) -> None:
    """The job's webhook deliveries, one line each with its last error."""
    if webhook is None:
        return
    click.echo("")
    click.echo(f"webhook {webhook['url']}")
    click.echo(
        table(
            ["DELIVERY", "STATUS", "ATTEMPTS", "CREATED", "DELIVERED", "LAST ERROR"],
            [
                [
                    d["id"],
                    d["status"],
                    len(d["attempts"]),
                    when(d["created_at"]),
                    when(d["delivered_at"]) or "-",
                    short(d["last_error"], 50),
                ]
                for d in webhook["deliveries"]
            ],
        )
    )


def _show_retries(detail: dict[str, Any]) -> None:
    """Every call of the steps that were retried (a container's ``retry``)."""
    waiting = detail["waiting"]
    retried = [s for s in detail["steps"] if len(s["attempts"]) > 1] + ([waiting] if waiting else [])
    if not retried:
        return
    click.echo("")
    rows = [
        [
            s["position"],
            s["container"],
            a["attempt"],
            short(f"error: {a['error']}" if a["error"] is not None else "ok", 60),
            a["reason"] or "",
            duration(a["duration_seconds"]),
            when(a["retry_at"]) or "",
            a["node"] or "",
        ]
        for s in retried
        for a in s["attempts"]
    ]
    click.echo(table(["#", "CONTAINER", "CALL", "RESULT", "REASON", "DURATION", "RETRY AT", "NODE"], rows))
    if waiting:
        click.echo(f"step {waiting['position']} waits for its next call at {when(waiting['next_attempt_at']) or '-'}")


@jobs.command("cancel")
@config_option
@click.argument("job_id", callback=lambda _c, _p, v: job_id_argument(v))
def jobs_cancel(config_path: str | None, job_id: str) -> None:
    """Cancel a job that has not finished (a node running it abandons the step)."""
    detail = operator_run(config_path, lambda op, _: op.actions.cancel(job_id))
    click.echo(f"cancelled {detail['id']} (at container {detail['container']})")


@jobs.command("retry")
@config_option
@click.argument("job_id", required=False, callback=lambda _c, _p, v: None if v is None else job_id_argument(v))
@click.option("--all-failed", is_flag=True, help="Re-queue every failed or cancelled job.")
def jobs_retry(config_path: str | None, job_id: str | None, all_failed: bool) -> None:
    """Re-queue a failed or cancelled job (it resumes at the step that failed)."""
    if (job_id is None) == (not all_failed):
        raise click.UsageError("give a JOB_ID or --all-failed (not both)")
    if job_id is not None:
        detail = operator_run(config_path, lambda op, _: op.actions.retry(job_id))
        click.echo(f"re-queued {detail['id']}")
        return

    async def retry_all(op: Operator, _: Settings) -> tuple[int, int]:
        ids = await op.inspection.retryable_ids()
        requeued = 0
        with click.progressbar(length=len(ids), label=f"re-queueing {len(ids)} jobs", file=sys.stderr) as bar:
            for one in ids:
                requeued += await op.actions.requeue(one)
                bar.update(1)
        end_progress()
        if requeued:
            await op.actions.wake_schedulers()
        return requeued, len(ids)

    requeued, found = operator_run(config_path, retry_all)
    click.echo(f"re-queued {requeued} of {found} failed or cancelled jobs")
