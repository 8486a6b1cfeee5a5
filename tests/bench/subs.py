"""The subscriptions phase of the benchmark (issue 16): interval jobs at scale, on time.

    python -m tests.bench.subs scale --db postgresql --subscriptions 10000 --period 10 --nodes 2
    python -m tests.bench.subs scale --db sqlite --subscriptions 1000 --period 10
    python -m tests.bench.subs scale --db postgresql --subscriptions 20 --period 2   # idle latency
    python -m tests.bench.subs index --rows 1000000                                 # PostgreSQL
    python -m tests.bench.subs tick --due 2000                                      # PostgreSQL

``scale`` starts the echo service and one or two nodes (one container, ``echo1``) on a fresh
database, creates the subscriptions through ``POST /api/jobs/batch`` with their ``active_at``
spread over one period (an even load of N/period interval jobs a second), waits until every
one is completed and every job finished, then reads the database: per interval job the
start lag from its due time (``active_at + (k-1)·period``) to its ``created_at`` (the
ticker) and to its ``started_at`` (claimed by a node), jobs per (subscription, interval),
the intervals counted missed, the jobs' outcomes; the nodes' CPU per interval job, and
with two nodes, each node's share (its ``jobnode_subscription_intervals_started_total``).

``index`` fills a database with N active subscriptions (generated inside PostgreSQL, the
first 1,000 due), and EXPLAINs and times the ticker's statements as the node runs them
(a generic prepared plan, like ``tests/test_statements.py``). ``tick`` times the ticker's
transactions alone, in this process: what one node's ticker can create a second.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import click
from sqlalchemy import func, select

from app.db.engine import Database
from app.db.models import Job, Subscription
from app.db.statements.subscriptions import ACTIVE_TOTAL, DUE, NEXT_DUE
from tests.bench.procs import (
    EchoService,
    NodeProcess,
    PgBackends,
    asyncpg_dsn,
    create_pg_database,
    drop_pg_database,
    node_config,
    sqlite_url,
    system_busy_cpu,
)
from tests.bench.stats import ms, percentile
from tests.support import migrated


def say(message: str) -> None:
    print(f"[subs {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _lags(values: list[float]) -> dict[str, float]:
    """p50/p99/max in milliseconds."""
    return {
        "p50_ms": ms(percentile(values, 50)),
        "p99_ms": ms(percentile(values, 99)),
        "max_ms": round(max(values, default=float("nan")) * 1000, 1),
    }


async def _subscribe(url: str, count: int, period: int, frequency: int, start: int, batch: int = 1000) -> float:
    """Every subscription through the batch endpoint; ``active_at`` spread over one period."""
    began = time.monotonic()
    async with aiohttp.ClientSession(base_url=url) as http:
        for first in range(0, count, batch):
            body = [
                {
                    "containers": ["echo1"],
                    "data": {"n": i},
                    "subscription": {"period": period, "frequency": frequency, "active_at": start + i % max(period, 1)},
                }
                for i in range(first, min(count, first + batch))
            ]
            async with http.post("/api/jobs/batch", json=body) as response:
                answer = await response.json()
                if response.status != 200 or any("id" not in item for item in answer):
                    raise RuntimeError(f"batch refused: {response.status} {str(answer)[:300]}")
    return time.monotonic() - began


async def _until_done(database: Database, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with database.read() as conn:
            open_subscriptions = (
                await conn.execute(
                    select(func.count()).select_from(Subscription).where(Subscription.status == "active")
                )
            ).scalar_one()
            unfinished = (
                await conn.execute(select(func.count()).select_from(Job).where(Job.finished_at.is_(None)))
            ).scalar_one()
        if open_subscriptions == 0 and unfinished == 0:
            return
        await asyncio.sleep(0.5)
    raise RuntimeError(f"not all {count} subscriptions completed in {timeout:.0f} s")


async def _started_by(node: NodeProcess) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"{node.url}/metrics") as response:
        text = await response.text()
    for line in text.splitlines():
        if line.startswith("jobnode_subscription_intervals_started_total "):
            return float(line.split()[1])
    return 0.0


async def _read_figures(database: Database) -> dict[str, Any]:
    async with database.read() as conn:
        schedules = {
            str(row.id): (row.active_at, row.period, row.frequency, row.missed, row.status)
            for row in await conn.execute(
                select(
                    Subscription.id,
                    Subscription.active_at,
                    Subscription.period,
                    Subscription.frequency,
                    Subscription.missed,
                    Subscription.status,
                )
            )
        }
        jobs = (
            await conn.execute(
                select(Job.subscription_id, Job.interval, Job.created_at, Job.started_at, Job.status).where(
                    Job.subscription_id.is_not(None)
                )
            )
        ).all()
    created: list[float] = []
    started: list[float] = []
    per_interval: dict[tuple[str, int], int] = {}
    outcomes: dict[str, int] = {}
    for job in jobs:
        active_at, period, _, _, _ = schedules[str(job.subscription_id)]
        due = datetime.fromtimestamp(active_at + (job.interval - 1) * period, UTC)
        created.append((job.created_at - due) / timedelta(seconds=1))
        if job.started_at is not None:
            started.append((job.started_at - due) / timedelta(seconds=1))
        key = (str(job.subscription_id), job.interval)
        per_interval[key] = per_interval.get(key, 0) + 1
        outcomes[job.status] = outcomes.get(job.status, 0) + 1
    intervals = sum(frequency for _, _, frequency, _, _ in schedules.values())
    missed = sum(m for _, _, _, m, _ in schedules.values())
    return {
        "subscriptions": len(schedules),
        "completed": sum(1 for *_, status in schedules.values() if status == "completed"),
        "intervals": intervals,
        "interval_jobs": len(jobs),
        "missed": missed,
        "accounted": len(jobs) + missed == intervals,
        "twice": sum(1 for n in per_interval.values() if n > 1),
        "outcomes": outcomes,
        "lag_created": _lags(created),
        "lag_started": _lags(started),
        "late_over_1s_started": sum(1 for lag in started if lag > 1.0),
    }


async def scale(
    db: str, count: int, period: int, frequency: int, nodes: int, lead: float, workdir: Path
) -> dict[str, Any]:
    url = await create_pg_database("jobnode_bench_subs") if db == "postgresql" else sqlite_url(workdir / "subs.db")
    await migrated(url)
    echo = EchoService(workdir).start()
    started_nodes: list[NodeProcess] = []
    database = Database(url)
    try:
        for k in range(nodes):
            config = node_config(url, echo.url, containers=1)
            config["server"]["max_subscriptions"] = count
            config["scheduler"]["node_id"] = f"bench{k}"
            started_nodes.append(NodeProcess(workdir, config, f"node{k}").start())
        backends = PgBackends(url) if db == "postgresql" else None
        start = int(time.time() + lead)
        submit_seconds = await _subscribe(started_nodes[0].url, count, period, frequency, start)
        say(f"{count} subscriptions created in {submit_seconds:.1f} s; first due in {start - time.time():.1f} s")
        await asyncio.sleep(max(0.0, start - time.time()))
        cpu0 = [node.cpu() for node in started_nodes]
        db0 = await backends.cpu() if backends else 0.0
        busy0, wall0 = system_busy_cpu(), time.monotonic()
        await _until_done(database, count, timeout=frequency * period + 120)
        wall = time.monotonic() - wall0
        node_cpu = [node.cpu() - before for node, before in zip(started_nodes, cpu0, strict=True)]
        db_cpu = (await backends.cpu() - db0) if backends else 0.0
        busy = system_busy_cpu() - busy0
        shares = [await _started_by(node) for node in started_nodes]
        figures = await _read_figures(database)
        jobs = max(figures["interval_jobs"], 1)
        log_problems = sum(node.log().count("Traceback") for node in started_nodes)
    finally:
        for node in started_nodes:
            node.stop()
        echo.stop()
        await database.dispose()
        if db == "postgresql":
            await drop_pg_database(url)
    return {
        "db": db,
        "nodes": nodes,
        "period_s": period,
        "frequency": frequency,
        "rate_per_s": round(count / max(period, 1)),
        "submit_s": round(submit_seconds, 2),
        "window_s": round(wall, 1),
        **figures,
        "node_cpu_ms_per_job": round(sum(node_cpu) / jobs * 1000, 3),
        "db_cpu_ms_per_job": round(db_cpu / jobs * 1000, 3),
        "machine_busy_cores": round(busy / wall, 2),
        "started_by_node": shares,
        "tracebacks": log_problems,
    }


async def index_check(rows: int, samples: int = 30) -> dict[str, Any]:
    """N active subscriptions (the first 1,000 due), then the ticker's statements: plan and time."""
    import asyncpg

    url = await create_pg_database("jobnode_bench_subs_index")
    await migrated(url)
    conn = await asyncpg.connect(asyncpg_dsn(url))
    results: dict[str, Any] = {"rows": rows}
    try:
        began = time.monotonic()
        await conn.execute(
            """
            INSERT INTO subscriptions (id, client, containers, input, requires_proof, period, frequency,
                active_at, next_interval, next_due_at, status, missed, created_at)
            SELECT gen_random_uuid(), '10.0.' || (g % 250) || '.' || (g / 250 % 250), '["echo1"]', '{}', false,
                10, 1000000, extract(epoch FROM now())::bigint, 1,
                now() + (g - 1000) * interval '10 ms', 'active', 0, now()
            FROM generate_series(1, $1::int) AS g
            """,
            rows,
        )
        await conn.execute("VACUUM ANALYZE subscriptions")
        results["load_s"] = round(time.monotonic() - began, 1)
        results["statements"] = {}
        for name, statement, params in (
            ("DUE", DUE, {"now": datetime.now(UTC), "batch": 100}),
            ("NEXT_DUE", NEXT_DUE, {}),
            ("ACTIVE_TOTAL", ACTIVE_TOTAL, {}),
        ):
            sql, args = statement.asyncpg_args(params)
            await conn.execute("SET plan_cache_mode = force_generic_plan")
            # The generic plan (what the node keeps once prepared), as tests/test_statements.py
            # reads it, then the same statement run: EXPLAIN ANALYZE with the values.
            await conn.execute(f"PREPARE generic AS {sql}")
            nulls = f"({', '.join(['NULL'] * len(args))})" if args else ""
            plan = "\n".join(row[0] for row in await conn.fetch(f"EXPLAIN EXECUTE generic{nulls}"))
            await conn.execute("DEALLOCATE generic")
            transaction = conn.transaction()
            await transaction.start()
            analyzed = "\n".join(row[0] for row in await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", *args))
            await transaction.rollback()
            prepared = await conn.prepare(sql)
            times = []
            for _ in range(samples):
                transaction = conn.transaction()  # DUE locks its rows: each sample rolls back
                await transaction.start()
                t0 = time.perf_counter()
                await prepared.fetch(*args)
                times.append(time.perf_counter() - t0)
                await transaction.rollback()
            results["statements"][name] = {
                "sql": sql,
                "plan": plan,
                "analyzed": analyzed,
                "index": "ix_subscriptions_due" in plan,
                "seq_scan": "Seq Scan" in plan,
                "p50_ms": ms(percentile(times, 50)),
                "p99_ms": ms(percentile(times, 99)),
            }
    finally:
        await conn.close()
        await drop_pg_database(url)
    return results


async def tick_cost(due: int, batch: int = 100) -> dict[str, Any]:
    """The ticker alone (``tick_due`` in this process, no node, no job running): N
    subscriptions due now on PostgreSQL, ticked in transactions of ``batch``."""
    import asyncpg

    from app.db.signal import JobSignal
    from app.maintenance.ticker import tick_due

    url = await create_pg_database("jobnode_bench_subs_tick")
    await migrated(url)
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await conn.execute(
            """
            INSERT INTO subscriptions (id, client, containers, input, requires_proof, period, frequency,
                active_at, next_interval, next_due_at, status, missed, created_at)
            SELECT gen_random_uuid(), '127.0.0.1', '["echo1"]', '{"n": 1}', false, 10, 3,
                floor(extract(epoch FROM now()))::bigint, 1, now(), 'active', 0, now()
            FROM generate_series(1, $1::int)
            """,
            due,
        )
    finally:
        await conn.close()
    database = Database(url)
    times: list[float] = []
    started = 0
    try:
        while started < due:
            t0 = time.perf_counter()
            done = await tick_due(database, JobSignal(), batch)
            times.append(time.perf_counter() - t0)
            started += done.started
            if not done.seen:
                break
    finally:
        await database.dispose()
        await drop_pg_database(url)
    return {
        "due": due,
        "started": started,
        "batch": batch,
        "transactions": len(times),
        "batch_p50_ms": ms(percentile(times, 50)),
        "batch_max_ms": round(max(times) * 1000, 1),
        "ms_per_interval_job": round(sum(times) / max(started, 1) * 1000, 3),
    }


@click.group()
def main() -> None:
    """The subscriptions phase of the benchmark (see the module's docstring)."""


@main.command(name="scale")
@click.option("--db", type=click.Choice(["sqlite", "postgresql"]), default="postgresql", show_default=True)
@click.option("--subscriptions", "count", type=int, default=10_000, show_default=True)
@click.option("--period", type=int, default=10, show_default=True, help="Seconds between intervals.")
@click.option("--frequency", type=int, default=3, show_default=True, help="Intervals per subscription.")
@click.option("--nodes", type=click.IntRange(1, 2), default=1, show_default=True)
@click.option("--lead", type=float, default=None, help="Seconds from now to the first due time (default: by N).")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write the JSON here.")
def scale_command(
    db: str, count: int, period: int, frequency: int, nodes: int, lead: float | None, output: Path | None
) -> None:
    """N subscriptions through the API, every interval's start lag and count from the database."""
    lead = lead if lead is not None else 4.0 + count / 1500
    with tempfile.TemporaryDirectory(prefix="jobnode-bench-subs-") as workdir:
        result = asyncio.run(scale(db, count, period, frequency, nodes, lead, Path(workdir)))
    _emit(result, output)


@main.command(name="index")
@click.option("--rows", type=int, default=1_000_000, show_default=True)
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write the JSON here.")
def index_command(rows: int, output: Path | None) -> None:
    """PostgreSQL: the ticker's due-interval statements with N subscriptions stored."""
    _emit(asyncio.run(index_check(rows)), output)


@main.command(name="tick")
@click.option("--due", type=int, default=2_000, show_default=True, help="Subscriptions due at once.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write the JSON here.")
def tick_command(due: int, output: Path | None) -> None:
    """PostgreSQL: the ticker's own cost per interval job, without a node or jobs running."""
    _emit(asyncio.run(tick_cost(due)), output)


def _emit(result: dict[str, Any], output: Path | None) -> None:
    text = json.dumps(result, indent=1, default=str)
    print(text)
    if output is not None:
        output.write_text(text + "\n")


if __name__ == "__main__":
    main()
