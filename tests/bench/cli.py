"""``jobnode bench`` / ``python -m tests.bench``: the benchmark of issue 5 (see README.md here)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from tests.bench.runner import Options, run


@click.command(name="bench")
@click.option(
    "--db",
    "database",
    type=click.Choice(["sqlite", "postgresql", "both"]),
    default="both",
    show_default=True,
    help="Which database(s) to run on.",
)
@click.option("--quick", is_flag=True, help="A smoke run: small counts, a few seconds per database.")
@click.option(
    "--stored-jobs",
    type=int,
    default=None,
    help="Jobs in the stored-history database (default 10,000,000; 5,000 with --quick; 0 skips).",
)
@click.option(
    "--profile/--no-profile",
    default=None,
    help="Profile the node with py-spy during a 32-client run (default: on, off with --quick).",
)
@click.option(
    "--results-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the reports go (default tests/bench/results).",
)
@click.option("--duration", type=float, default=None, help="Seconds measured per load phase (default 5).")
@click.option(
    "--poll-ms", type=float, default=1.0, show_default=True, help="How often a client polls for its job's result."
)
@click.option("--keep-workdir", is_flag=True, help="Keep the temporary directory (configs, node logs).")
def bench(
    database: str,
    quick: bool,
    stored_jobs: int | None,
    profile: bool | None,
    results_dir: Path | None,
    duration: float | None,
    poll_ms: float,
    keep_workdir: bool,
) -> None:
    """Measure the node on loopback: end to end against the raw service, CPU and memory,
    submit latency and batch ingest, idle time to result, reads with millions of jobs
    stored, and a profile. Starts everything it needs; PostgreSQL must be running for
    --db postgresql/both (JOBNODE_TEST_POSTGRES_URL, default postgres@127.0.0.1:5432)."""
    databases = ["postgresql", "sqlite"] if database == "both" else [database]
    options = Options.make(
        databases,
        quick=quick,
        stored_jobs=stored_jobs,
        profile=profile,
        results_dir=results_dir,
        poll_ms=poll_ms,
        keep_workdir=keep_workdir,
    )
    if duration is not None:
        options.duration = duration
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(run(options))
    else:
        uvloop.run(run(options))


def main() -> None:
    bench.main(prog_name=f"{Path(sys.executable).name} -m tests.bench")
