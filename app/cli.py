"""``jobnode``: serve the node, manage its database."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
import threading
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import click

from app import __version__
from app.config.loading import load_settings
from app.config.masking import masked
from app.config.settings import Settings
from app.config.values import ConfigError
from app.formatting import duration
from app.logging import configure_logging

if TYPE_CHECKING:  # imported when a command needs them: the CLI starts fast
    from app.db.engine import Database
    from app.jobs.actions import JobActions
    from app.jobs.inspection import JobInspection
    from app.jobs.queue_numbers import QueueNumbers

T = TypeVar("T")

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar="JOBNODE_CONFIG",
    help="JSON config file (default: all defaults, SQLite jobnode.db).",
)


class InvalidConfiguration(click.ClickException):
    """``Error: invalid configuration: <key>: …``, exit status 2: starting again will not
    help (a database that cannot be reached exits with 1)."""

    exit_code = 2

    def __init__(self, error: ValueError) -> None:
        super().__init__(f"invalid configuration: {error}")


def _settings(config_path: str | None) -> Settings:
    try:
        return load_settings(config_path)
    except ConfigError as exc:
        raise InvalidConfiguration(exc) from None


def _database_call(run: Callable[[], Awaitable[T]]) -> T:
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


def _exit_cleanly(_signum: int, _frame: object) -> None:
    raise SystemExit(0)


@click.group()
@click.version_option(__version__, "--version", prog_name="jobnode", message="%(prog)s %(version)s")
def main() -> None:
    """jobnode: a restart-safe job node."""


@main.command()
@config_option
@click.option("--host", default=None, help="Override server.host.")
@click.option("--port", type=int, default=None, help="Override server.port.")
def serve(config_path: str | None, host: str | None, port: int | None) -> None:
    """Run the node (migrates the database first); server.workers processes of it."""
    from app.db import migrate

    settings = _settings(config_path)
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
    _on_database(settings, migrate.upgrade)
    if settings.server.workers > 1:
        from app.workers import Supervisor

        sys.exit(Supervisor(settings, run_node).run())
    run_node(settings)


def run_node(settings: Settings, sock: socket.socket | None = None) -> None:
    """One node process serving until SIGTERM/SIGINT; on ``sock`` when a supervisor bound it."""
    import uvicorn

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


@main.group()
def db() -> None:
    """Database schema (Alembic)."""


def _on_database(settings: Settings, action: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``action(database)`` on the configured database, closing it afterwards."""
    from app.db.engine import Database

    async def run() -> T:
        database = Database(settings.database.url, connect_timeout=settings.database.connect_timeout)
        try:
            return await action(database)
        finally:
            await database.dispose()

    return _database_call(run)


@db.command()
@config_option
def upgrade(config_path: str | None) -> None:
    """Apply every migration."""
    from app.db import migrate

    async def run(database: Any) -> str | None:
        await migrate.upgrade(database)
        return await migrate.current_revision(database)

    click.echo(f"database at revision {_on_database(_settings(config_path), run)}")


@db.command()
@config_option
def current(config_path: str | None) -> None:
    """Show the database's revision and the code's head."""
    from app.db import migrate

    revision = _on_database(_settings(config_path), migrate.current_revision)
    click.echo(f"database: {revision}  code head: {migrate.head_revision()}")


@main.group("config")
def config_group() -> None:
    """The configuration (file, then environment variables)."""


@config_group.command("check")
@config_option
def config_check(config_path: str | None) -> None:
    """Print the effective configuration as JSON, secrets as "***"; exit 2 naming the key
    when something is wrong. Reads no database."""
    settings = _settings(config_path)
    if settings.ignored_keys:
        click.echo(f"config keys ignored (Infernet-only): {', '.join(settings.ignored_keys)}", err=True)
    click.echo(json.dumps(masked(settings), indent=2))


# -- operators: jobs and the queue, against the database straight -----------------------


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    """Plain aligned columns (numbers right-aligned)."""
    cells = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    numeric = [bool(rows) and all(isinstance(r[i], int | float) for r in rows) for i in range(len(headers))]

    def line(values: list[str]) -> str:
        return "  ".join(
            v.rjust(w) if n else v.ljust(w) for v, w, n in zip(values, widths, numeric, strict=True)
        ).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in cells])


def _short(text: str | None, width: int = 60) -> str:
    text = (text or "").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def _when(iso: str | None) -> str:
    return iso[:19].replace("T", " ") if iso else ""


@dataclass(frozen=True)
class _Operator:
    """What the operator commands use, on the database straight (no node)."""

    database: Database
    inspection: JobInspection
    actions: JobActions
    numbers: QueueNumbers


def _operator_run(config_path: str | None, action: Callable[[_Operator, Settings], Awaitable[T]]) -> T:
    """Run ``action(operator, settings)`` on the configured database."""
    from app.db.engine import Database
    from app.errors import JOB_NOT_FOUND
    from app.jobs.actions import JobActions, JobConflict
    from app.jobs.inspection import JobInspection, JobNotFound
    from app.jobs.queue_numbers import QueueNumbers

    settings = _settings(config_path)

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
            return await action(_Operator(database, inspection, actions, QueueNumbers(database)), settings)
        finally:
            await database.dispose()

    try:
        return _database_call(run)
    except JobNotFound:
        raise click.ClickException(JOB_NOT_FOUND.message) from None
    except JobConflict as conflict:
        raise click.ClickException(conflict.message) from None


def _job_id_argument(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise click.BadParameter("Invalid job id (not a UUID)") from None


def _end_progress() -> None:
    """Off a terminal click prints only the progress bar's label: end its line."""
    if not sys.stderr.isatty():
        click.echo("", err=True)


STATES = ("pending", "running", "success", "failed", "cancelled")


@main.group()
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
    rows = _operator_run(config_path, lambda op, _: op.inspection.list_jobs(status, client, limit))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no jobs")
        return
    click.echo(
        _table(
            ["ID", "STATUS", "CLIENT", "CONTAINERS", "ATTEMPTS", "CREATED (UTC)", "ERROR"],
            [
                [
                    r["id"],
                    r["status"],
                    r["client"],
                    ",".join(r["containers"]),
                    r["attempts"],
                    _when(r["created_at"]),
                    _short(r["error"], 50),
                ]
                for r in rows
            ],
        )
    )


@jobs.command("show")
@config_option
@click.argument("job_id", callback=lambda _c, _p, v: _job_id_argument(v))
@click.option("--json", "as_json", is_flag=True, help="The job as JSON (the shape of GET /api/jobs/{id}).")
def jobs_show(config_path: str | None, job_id: str, as_json: bool) -> None:
    """One job in full: input, every step's output or error, timings."""
    detail = _operator_run(config_path, lambda op, _: op.inspection.job(job_id))
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
        ("node", detail["node"] or "-"),
        ("created", _when(detail["created_at"])),
        ("started", _when(detail["started_at"]) or "-"),
        ("finished", _when(detail["finished_at"]) or "-"),
        ("queued for", duration(detail["queued_seconds"])),
        ("ran for", duration(detail["duration_seconds"])),
        ("input", json.dumps(detail["input"])),
    ]
    width = max(len(k) for k, _ in fields)
    for key, value in fields:
        click.echo(f"{key.ljust(width)}  {value}")
    click.echo("")
    if not detail["steps"]:
        click.echo("no step finished yet")
        return
    click.echo(
        _table(
            ["#", "CONTAINER", "RESULT", "DURATION", "ATTEMPT", "NODE"],
            [
                [
                    s["position"],
                    s["container"],
                    _short(f"error: {s['error']}" if s["error"] is not None else json.dumps(s["output"]), 70),
                    duration(s["duration_seconds"]),
                    s["attempt"],
                    s["node"] or "",
                ]
                for s in detail["steps"]
            ],
        )
    )


@jobs.command("cancel")
@config_option
@click.argument("job_id", callback=lambda _c, _p, v: _job_id_argument(v))
def jobs_cancel(config_path: str | None, job_id: str) -> None:
    """Cancel a job that has not finished (a node running it abandons the step)."""
    detail = _operator_run(config_path, lambda op, _: op.actions.cancel(job_id))
    click.echo(f"cancelled {detail['id']} (at container {detail['container']})")


@jobs.command("retry")
@config_option
@click.argument("job_id", required=False, callback=lambda _c, _p, v: None if v is None else _job_id_argument(v))
@click.option("--all-failed", is_flag=True, help="Re-queue every failed or cancelled job.")
def jobs_retry(config_path: str | None, job_id: str | None, all_failed: bool) -> None:
    """Re-queue a failed or cancelled job (it resumes at the step that failed)."""
    if (job_id is None) == (not all_failed):
        raise click.UsageError("give a JOB_ID or --all-failed (not both)")
    if job_id is not None:
        detail = _operator_run(config_path, lambda op, _: op.actions.retry(job_id))
        click.echo(f"re-queued {detail['id']}")
        return

    async def retry_all(op: _Operator, _: Settings) -> tuple[int, int]:
        ids = await op.inspection.retryable_ids()
        requeued = 0
        with click.progressbar(length=len(ids), label=f"re-queueing {len(ids)} jobs", file=sys.stderr) as bar:
            for one in ids:
                requeued += await op.actions.requeue(one)
                bar.update(1)
        _end_progress()
        if requeued:
            await op.actions.wake_schedulers()
        return requeued, len(ids)

    requeued, found = _operator_run(config_path, retry_all)
    click.echo(f"re-queued {requeued} of {found} failed or cancelled jobs")


@main.command()
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
        _table(
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
                    _short(c["last_error"], 50),
                ]
                for c in body
            ],
        )
    )


@main.command()
@config_option
def stats(config_path: str | None) -> None:
    """Jobs by state, the oldest pending job, throughput over the last minute (from SQL)."""
    numbers = _operator_run(config_path, lambda op, _: op.numbers.stats())
    click.echo(_table(["STATE", "JOBS"], [[state, count] for state, count in numbers["jobs"].items()]))
    click.echo("")
    click.echo(f"queue depth             {numbers['queue_depth']}")
    oldest = duration(numbers["oldest_pending_seconds"]) if numbers["queue_depth"] else "-"
    click.echo(f"oldest pending          {oldest}")
    click.echo(f"finished, last minute   {numbers['finished_last_minute']} jobs/min")


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

    async def run(op: _Operator, settings: Settings) -> tuple[int, float]:
        from app.maintenance import pruner

        keep = settings.retention.finished_jobs_days if days is None else days
        if keep <= 0:  # only the configured value can be 0 (--days must be more)
            return -1, keep
        cutoff = datetime.now(UTC) - timedelta(days=keep)
        total = await pruner.prunable(op.database, cutoff)
        with click.progressbar(length=total, label=f"deleting {total} finished jobs", file=sys.stderr) as bar:
            deleted = await pruner.prune(op.database, cutoff, bar.update)
        _end_progress()
        return deleted, keep

    deleted, keep = _operator_run(config_path, run)
    if deleted < 0:
        click.echo("retention is off (retention.finished_jobs_days is 0): nothing deleted; use --days")
        return
    click.echo(f"deleted {deleted} finished jobs older than {keep:g} days")


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True}, add_help_option=False)
@click.pass_context
def bench(ctx: click.Context) -> None:
    """Run the benchmark (tests/bench; --help there). Needs the source tree.

    The benchmark measures the node of a checkout (it starts ``python -m app.cli serve``
    there and writes its reports to tests/bench/results), so it is not in the package;
    from an installed package, or with a module it needs missing, this says in one line
    what to do instead of a traceback."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    if not (root / "tests" / "bench").is_dir():
        raise click.ClickException(
            f"the benchmark runs from a source checkout (tests/bench), not found under {root}: "
            "in the checkout, pip install -e '.[bench]' and run jobnode bench there"
        )
    sys.path.insert(0, str(root))
    try:
        from tests.bench.cli import bench as command
    except ModuleNotFoundError as exc:
        raise click.ClickException(
            f"the benchmark needs the module {exc.name}, not installed: pip install -e '.[bench]' in {root}"
        ) from None

    command.main(args=ctx.args, prog_name="jobnode bench")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
