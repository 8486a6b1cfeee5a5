"""Cost flat as work grows (issue 19, item 4): PostgreSQL, one node process, the fast echo
service (``echo.py``), ``max_concurrent_jobs`` 64 (the node's default).

    python -m tests.bench.scale build --total 10000000     # a kept database of 10 M finished jobs; prints its URL
    python -m tests.bench.scale steady --url URL           # jobs/s and CPU per job with URL's jobs stored
    python -m tests.bench.scale steady --payloads 1000,100000,1000000 --chains 1,3,10   # a fresh database
    python -m tests.bench.scale backlog --url URL --pending 100000,1000000   # [--nodes 2] [--dashboard]
    python -m tests.bench.scale since-vacuum --url URL --pending 300000 --every 30000 [--nodes 2]
    python -m tests.bench.scale drop --url URL

``steady``: 32 closed-loop clients, each submitting one job (``POST /api/jobs``, its ``data``
padded to the payload's size, which the echo returns) and waiting for it
(``GET /api/jobs?id=…&wait=``), every output checked; after a warm-up, jobs/s and the CPU
per job of the node and of the PostgreSQL backends of its database (``/proc``), per chain
length and payload. ``backlog``: N new jobs stored pending in the database (the jobs an
earlier run left pending cancelled; ``VACUUM ANALYZE`` after), then a node (``--nodes N``: N
node processes on the one database, their figures summed) drains them with no client for
``--seconds``, after a warm-up: jobs/s from the node's ``jobnode_jobs_finished_total``, CPU
per job, and the claim loop's claims from its ``jobnode_claim_seconds`` histogram (a claim
takes up to the free capacity): count, mean, the share within 5 ms, and the bucket that
holds the p99; and the backlog's jobs claimed more than once (none, unless a claim took a
job another held). ``--dashboard``: an operator has the dashboard open on the first node
meanwhile (its data every 2 s, as the page asks): the answers in the window and their mean. A backlog larger than
``--seconds`` of work is measured while it is still nearly whole. Beside them, per job, the
server's full-page images, WAL bytes and buffers its backends wrote out themselves, the
checkpoints in the window, and, where the server loads ``pg_stat_statements``, the claim
statement's own mean time in the server and jobs per claim (what the node's histogram adds
to it is the node's: the round trip, the event loop, the rows' decoding).

``since-vacuum``: what a claim costs as the jobs claimed since the table's last VACUUM add
up, as between two autovacuums of a large table (by default a table of 10 M rows is
vacuumed after ~2 M changed rows): ``--pending`` new jobs (``VACUUM ANALYZE`` after, as
``backlog``), then one ``JobStore`` of the code imported (another checkout's: this file
copied into it, ``python -m tests.bench.scale …`` run in it) claims
29 jobs at a time (a draining node's claim) and ends each with its step, with nothing else
running and no VACUUM (``--nodes N``: N of them on one connection pool each, claiming
together); the claims' mean, p50 and p99 per ``--every`` jobs claimed.

Each command prints JSON and, with ``--output``, appends it as one line to that file.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import click

from app.clock import utcnow
from app.db.engine import Database
from app.http.dashboard_page import REFRESH_MS
from app.jobs.transitions import JobStore
from app.jobs.values import StepResult
from tests.bench.http import Connection
from tests.bench.load import Meter, OpFailed, closed_loop, end_to_end_op
from tests.bench.procs import (
    EchoService,
    NodeProcess,
    PgBackends,
    asyncpg_dsn,
    create_pg_database,
    drop_pg_database,
    node_config,
)
from tests.bench.stats import ms, percentile
from tests.bench.stored import ID_LAYOUTS, Layout, build_postgresql, pg_job_id
from tests.operator_support import metric, parse_metrics
from tests.support import migrated

CLIENTS = 32
MAX_CONCURRENT_JOBS = 64
CLAIM_TARGET_S = 0.005
PAYLOAD_COLUMNS = (("jobs", "input"), ("job_steps", "output"))


async def build(total: int, ids: str) -> str:
    """A migrated database holding ``total`` finished jobs (``stored.py``'s layout, none
    pending, ids of the layout ``ids``), its tables made logged again: the node writes them
    as it writes any."""
    url = await create_pg_database("jobnode_scale")
    await migrated(url)
    if total:
        layout = Layout(total=total, big_jobs=min(100_000, max(1, total // 10)), pending=0, ids=ids)
        await build_postgresql(url, layout, log=lambda line: click.echo(line, err=True))
        conn = await asyncpg.connect(asyncpg_dsn(url))
        try:
            started = time.monotonic()
            unlogged = await conn.fetch(
                "SELECT oid::regclass::text AS tbl FROM pg_class WHERE relpersistence = 'u' AND relkind = 'r'"
            )
            pending = [row["tbl"] for row in unlogged]
            # A table may become logged once every table it references is.
            while pending:
                for table in list(pending):
                    try:
                        await conn.execute(f"ALTER TABLE {table} SET LOGGED")
                        pending.remove(table)
                    except asyncpg.PostgresError:
                        continue
            await conn.execute("CHECKPOINT")
            click.echo(f"    tables logged in {time.monotonic() - started:.1f} s", err=True)
        finally:
            await conn.close()
    return url


@dataclass(frozen=True)
class Drain:
    """How a backlog is drained: ``in_flight``, each node's ``max_concurrent_jobs``;
    ``service_ms``, how long the echo service takes to answer (``echo.py --delay-ms``);
    ``elsewhere``, jobs running on other nodes meanwhile (``running_elsewhere``)."""

    in_flight: int = MAX_CONCURRENT_JOBS
    service_ms: float = 0.0
    elsewhere: int = 0


#: The other nodes ``running_elsewhere`` spreads its jobs over.
ELSEWHERE_NODES = 50


async def running_elsewhere(conn: asyncpg.Connection, running: int) -> None:
    """``running`` jobs running on ``ELSEWHERE_NODES`` other nodes, leased for an hour, as
    in a cluster of many nodes, stored after the backlog's ``VACUUM ANALYZE`` (the
    statistics the planner holds saw none of them, as between two autovacuums). The next
    ``set_backlog`` cancels them."""
    await conn.execute(
        "INSERT INTO jobs (id, client, source, containers, input, requires_proof, status, attempts, stream, "
        "lease_owner, lease_expires_at, run_after, created_at, started_at) "
        "SELECT gen_random_uuid(), '2001:db8::' || to_hex(i % 10000), 'offchain', '[\"echo1\"]'::jsonb, "
        "jsonb_build_object('n', i), false, 'running', 1, false, 'elsewhere-' || (i % $2::int), "
        "now() + interval '1 hour', now(), now(), now() FROM generate_series(1, $1::bigint) AS i",
        running,
        ELSEWHERE_NODES,
    )


class Services:
    """The echo service and ``nodes`` nodes on ``url`` (scheduler on), in a scratch
    directory; the nodes run the code of ``tree`` (a checkout) when given, else of this one."""

    def __init__(
        self,
        url: str,
        containers: int = 10,
        tree: Path | None = None,
        nodes: int = 1,
        drain: Drain | None = None,
    ) -> None:
        drain = drain or Drain()
        self.url = url
        self.workdir = Path(tempfile.mkdtemp(prefix="jobnode-scale-"))
        self.service = EchoService(self.workdir, delay_ms=drain.service_ms).start()
        self.nodes: list[NodeProcess] = []
        try:
            for index in range(nodes):
                config = node_config(url, self.service.url, containers=containers, max_concurrent_jobs=drain.in_flight)
                config["scheduler"]["node_id"] = f"bench-{index}"
                node = NodeProcess(self.workdir, config, name=f"node-{index}")
                if tree is not None:
                    node.tree = tree
                self.nodes.append(node.start())
        except BaseException:
            self.stop()
            raise
        self.node = self.nodes[0]
        self.meter = Meter(self, self.service, PgBackends(url))  # type: ignore[arg-type]

    def cpu(self) -> float:
        """The nodes' CPU, summed (what ``Meter`` reads of a node)."""
        return sum(node.cpu() for node in self.nodes)

    async def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """The nodes' metrics, each series summed over them."""
        summed: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for node in self.nodes:
            for key, value in (await metrics_of(node)).items():
                summed[key] = summed.get(key, 0.0) + value
        return summed

    def stop(self) -> dict[str, int]:
        for node in self.nodes:
            node.stop()
        self.service.stop()
        log = "".join(node.log() for node in self.nodes)
        return {"tracebacks": log.count("Traceback"), "abandoned": log.count("abandon")}


async def metrics_of(node: NodeProcess) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    connection = Connection("127.0.0.1", node.port)
    try:
        status, body = await connection.request("GET", "/metrics")
    finally:
        connection.close()
    if status != 200:
        raise OpFailed(f"GET /metrics {status}")
    return parse_metrics(body.decode())


def _per_job(cpu: dict[str, float], jobs: int, key: str) -> float | None:
    return round(cpu[key] / jobs * 1000, 4) if jobs else None


async def steady(url: str, chains: list[int], payloads: list[int], duration: float) -> list[dict[str, Any]]:
    services = Services(url, containers=max(chains))
    rows: list[dict[str, Any]] = []
    try:
        for chain in chains:
            for size in payloads:
                window = await closed_loop(
                    lambda _i: Connection("127.0.0.1", services.node.port),
                    CLIENTS,
                    end_to_end_op([f"echo{i}" for i in range(1, chain + 1)], None, size),
                    warmup=2.0,
                    duration=duration,
                    max_ops=10_000_000,
                    meter=services.meter,
                )
                summary = window.summary()
                row = {
                    "chain": chain,
                    "payload_bytes": size,
                    "jobs_per_s": summary["rate"],
                    "node_cpu_ms_per_job": summary["node_cpu_ms_per_job"],
                    "db_cpu_ms_per_job": summary["db_cpu_ms_per_job"],
                    "node_cpu_ms_per_step": round(summary["node_cpu_ms_per_job"] / chain, 4)
                    if summary["node_cpu_ms_per_job"]
                    else None,
                    "db_cpu_ms_per_step": round(summary["db_cpu_ms_per_job"] / chain, 4)
                    if summary["db_cpu_ms_per_job"]
                    else None,
                    "input_mb_per_s": round(summary["rate"] * size / 1e6, 1),
                    "latency_p50_ms": summary["latency_p50_ms"],
                    "errors": summary["errors"],
                    "error_samples": summary["error_samples"],
                    "other_cores": summary["cpu_cores"].get("other"),
                }
                click.echo(json.dumps(row), err=True)
                rows.append(row)
    finally:
        health = services.stop()
    for row in rows:
        row.update(health)
    return rows


def _claims(before: dict[Any, float], after: dict[Any, float]) -> dict[str, Any]:
    """The claim loop's claims between two scrapes of its histogram."""
    count = metric(after, "jobnode_claim_seconds_count") - metric(before, "jobnode_claim_seconds_count")
    total = metric(after, "jobnode_claim_seconds_sum") - metric(before, "jobnode_claim_seconds_sum")
    buckets = sorted(
        (float(dict(labels)["le"]), value - before.get((name, labels), 0.0))
        for (name, labels), value in after.items()
        if name == "jobnode_claim_seconds_bucket"
    )
    within = next((n for le, n in buckets if le == CLAIM_TARGET_S), 0.0)
    p99 = next((le for le, n in buckets if count and n >= 0.99 * count), None)
    # p50 within its bucket, the claims spread evenly over it (the histogram keeps no more).
    p50, lower, below = None, 0.0, 0.0
    for le, n in buckets:
        if count and n >= 0.5 * count and le != float("inf"):
            p50 = lower + (le - lower) * (0.5 * count - below) / (n - below)
            break
        lower, below = le, n
    return {
        "claims": int(count),
        "claim_mean_ms": round(total / count * 1000, 3) if count else None,
        "claim_p50_ms_interpolated": round(p50 * 1000, 2) if p50 is not None else None,
        "claims_within_5ms": round(within / count, 4) if count else None,
        "claim_p99_at_most_ms": p99 * 1000 if p99 is not None and p99 != float("inf") else p99,
    }


async def cancel_leftovers(conn: asyncpg.Connection) -> None:
    """The jobs an earlier run left pending or running, cancelled: a node claims the oldest
    first, so a steady window's jobs would otherwise queue behind them (and end none)."""
    await conn.execute(
        "UPDATE jobs SET status = 'cancelled', finished_at = now(), lease_owner = NULL, lease_expires_at = NULL "
        "WHERE status IN ('pending', 'running')"
    )


async def set_backlog(conn: asyncpg.Connection, pending: int, ids: str) -> int:
    """Exactly ``pending`` new jobs waiting (one ``echo1`` step, none done: stored jobs made
    pending again would keep their committed steps and end without calling the service),
    the jobs left pending by an earlier run cancelled; ``VACUUM ANALYZE`` after, as
    autovacuum would. Their ids of the layout ``ids`` (``stored.ID_LAYOUTS``), each of the
    time the job was queued (``run_after``, 1 µs apart), as if a node had stored them then.
    Returns the jobs stored."""
    await cancel_leftovers(conn)
    await conn.execute(
        "INSERT INTO jobs (id, client, source, containers, input, requires_proof, status, attempts, stream, "
        f"run_after, created_at) SELECT {pg_job_id(ids, 'queued')}, '2001:db8::' || to_hex(i % 10000), 'offchain', "
        "'[\"echo1\"]'::jsonb, jsonb_build_object('n', i), false, 'pending', 0, false, "
        "queued, now() - interval '1 minute' "
        "FROM (SELECT i, now() - interval '1 minute' + i * interval '1 microsecond' AS queued "
        "FROM generate_series(1, $1::bigint) AS i) AS g",
        pending,
    )
    await conn.execute("VACUUM (ANALYZE) jobs")
    return int(await conn.fetchval("SELECT max(seq) FROM jobs"))


#: The server's WAL and buffer counters (cluster-wide: nothing else should run): full-page
#: images, WAL bytes, writes for want of WAL buffers, and dirty buffers a backend wrote out
#: itself to make room.
_SERVER_COUNTERS = (
    "SELECT w.wal_fpi, w.wal_bytes::bigint AS wal_bytes, w.wal_buffers_full, b.buffers_backend, "
    "b.checkpoints_timed + b.checkpoints_req AS checkpoints FROM pg_stat_wal AS w, pg_stat_bgwriter AS b"
)
#: The claim statement as the server ran it (``pg_stat_statements``, when the server loads
#: it): its time without the node's share (the round trip, the event loop, the rows' decoding).
_CLAIM_STATEMENTS = (
    "SELECT coalesce(sum(calls), 0)::bigint AS calls, coalesce(sum(total_exec_time), 0)::float8 AS ms, "
    "coalesce(sum(rows), 0)::bigint AS claimed FROM pg_stat_statements "
    "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) AND query LIKE 'WITH claimable%'"
)


async def server_counters(url: str) -> dict[str, float]:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        counters = dict(await conn.fetchrow(_SERVER_COUNTERS))
        try:
            counters |= {
                f"claim_statement_{name}": value for name, value in (await conn.fetchrow(_CLAIM_STATEMENTS)).items()
            }
        except (asyncpg.UndefinedTableError, asyncpg.ObjectNotInPrerequisiteStateError):
            pass  # pg_stat_statements not installed in this database, or not loaded by the server
        return counters
    finally:
        await conn.close()


def _server_deltas(before: dict[str, float], after: dict[str, float], jobs: int) -> dict[str, float | None]:
    delta = {name: after[name] - before[name] for name in before}
    calls, ms, claimed = (delta.pop(f"claim_statement_{name}", 0) for name in ("calls", "ms", "claimed"))
    return {
        **{f"{name}_per_job": round(value / max(jobs, 1), 2) for name, value in delta.items() if name != "checkpoints"},
        "checkpoints": delta["checkpoints"],
        "claim_statement_mean_ms": round(ms / calls, 3) if calls else None,
        "claim_statement_jobs": round(claimed / calls, 1) if calls else None,
    }


async def watch_dashboard(node: NodeProcess, answers: list[float]) -> None:
    """An operator with the dashboard open: its data as often as the page asks for it
    (``REFRESH_MS``), each answer's time noted."""
    while True:
        connection = Connection("127.0.0.1", node.port)
        try:
            began = time.perf_counter()
            status, _ = await connection.request("GET", "/dashboard/data")
            if status != 200:
                raise OpFailed(f"GET /dashboard/data {status}")
            answers.append(time.perf_counter() - began)
        finally:
            connection.close()
        await asyncio.sleep(REFRESH_MS / 1000)


async def backlog(
    url: str,
    pending: int,
    seconds: float,
    ids: str,
    tree: Path | None,
    nodes: int = 1,
    dashboard: bool = False,
    drain: Drain | None = None,
) -> dict[str, Any]:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    drain = drain or Drain()
    try:
        started = time.monotonic()
        total = await set_backlog(conn, pending, ids)
        await running_elsewhere(conn, drain.elsewhere)
        click.echo(f"{pending:,} of {total:,} pending in {time.monotonic() - started:.1f} s", err=True)
    finally:
        await conn.close()
    services = Services(url, containers=1, tree=tree, nodes=nodes, drain=drain)
    try:
        answers: list[float] = []
        watching = asyncio.create_task(watch_dashboard(services.node, answers)) if dashboard else None
        await asyncio.sleep(2.0)  # warm-up: the first claims, the connections
        scrape, start, server = await services.metrics(), await services.meter.read(), await server_counters(url)
        answered = len(answers)
        await asyncio.sleep(seconds)
        end, scrape_end = await services.meter.read(), await services.metrics()
        server_end = await server_counters(url)
        if watching is not None:
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)
            if not watching.cancelled() and watching.exception() is not None:
                raise watching.exception()  # type: ignore[misc]
    finally:
        health = services.stop()
    claimed_again = await _claimed_again(url, total - pending)
    cpu = Meter.delta(start, end)
    finished = int(
        sum(
            value - scrape.get((name, labels), 0.0)
            for (name, labels), value in scrape_end.items()
            if name == "jobnode_jobs_finished_total"
        )
    )
    failed = int(metric(scrape_end, "jobnode_jobs_finished_total", status="failed"))
    return {
        "pending": pending,
        "stored": total,
        "nodes": nodes,
        "in_flight": drain.in_flight,
        "service_ms": drain.service_ms,
        "running_elsewhere": drain.elsewhere,
        "ids": ids,
        "tree": str(tree or ""),
        "window_s": round(cpu["wall"], 2),
        "jobs": finished,
        "failed": failed,
        "jobs_per_s": round(finished / cpu["wall"], 1),
        "node_cpu_ms_per_job": _per_job(cpu, finished, "node"),
        "db_cpu_ms_per_job": _per_job(cpu, finished, "db"),
        "service_cpu_ms_per_job": _per_job(cpu, finished, "service"),
        "other_cores": round(cpu["other"] / cpu["wall"], 2),
        **_claims(scrape, scrape_end),
        **_server_deltas(server, server_end, finished),
        "claimed_again": claimed_again,
        **(
            {"dashboard_answers": len(answers) - answered, "dashboard_mean_ms": ms(statistics.mean(answers[answered:]))}
            if dashboard and len(answers) > answered
            else {}
        ),
        **health,
    }


async def _claimed_again(url: str, since_seq: int) -> int:
    """The backlog's jobs claimed more than once (a graceful stop gives its claim back):
    none, unless a claim took a job another one held."""
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return int(await conn.fetchval("SELECT count(*) FROM jobs WHERE seq > $1 AND attempts > 1", since_seq))
    finally:
        await conn.close()


#: Jobs a draining node's claim takes (its free capacity since the last claim).
DRAIN_CLAIM = 29


async def since_vacuum(url: str, pending: int, every: int, nodes: int = 1) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        stored = await set_backlog(conn, pending, "v4")
    finally:
        await conn.close()
    databases = [Database(url) for _ in range(nodes)]
    rows: list[dict[str, Any]] = []
    claimed, seconds = 0, []

    async def drain(store: JobStore) -> None:
        nonlocal claimed, seconds
        while claimed < pending:
            began = time.perf_counter()
            jobs = await store.claim(DRAIN_CLAIM)
            seconds.append(time.perf_counter() - began)
            if not jobs:
                break
            await store.record_steps([StepResult(job, 0, utcnow(), output={"n": 1}) for job in jobs])
            claimed += len(jobs)
            if claimed // every != (claimed - len(jobs)) // every or claimed >= pending:
                rows.append(
                    {
                        "stored": stored,
                        "nodes": nodes,
                        "claimed_since_vacuum": claimed,
                        "claims": len(seconds),
                        "mean_ms": round(statistics.mean(seconds) * 1000, 3),
                        "p50_ms": ms(percentile(seconds, 50)),
                        "p99_ms": ms(percentile(seconds, 99)),
                    }
                )
                click.echo(json.dumps(rows[-1]), err=True)
                seconds = []

    try:
        await asyncio.gather(
            *(drain(JobStore(database, f"since-vacuum-{i}", 600)) for i, database in enumerate(databases))
        )
    finally:
        for database in databases:
            await database.dispose()
    return rows


async def _fresh_or(url: str | None, compression: str | None) -> tuple[str, bool]:
    """``url`` (what an earlier run left pending cancelled), or a fresh migrated database;
    ``compression``: the payload columns' TOAST compression set back (``pglz``: as before
    migration 0008)."""
    fresh = url is None
    if url is None:
        url = await create_pg_database("jobnode_scale")
        await migrated(url)
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await cancel_leftovers(conn)  # a kept database: what an earlier backlog run left
        for table, column in PAYLOAD_COLUMNS if compression is not None else ():
            await conn.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET COMPRESSION {compression}")
    finally:
        await conn.close()
    return url, fresh


def _emit(value: Any, output: Path | None) -> None:
    text = json.dumps(value)
    if output is not None:
        with output.open("a") as file:
            file.write(text + "\n")
    click.echo(text)


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",")]


@click.group()
def main() -> None:
    pass


_IDS = click.option(
    "--ids",
    type=click.Choice(ID_LAYOUTS),
    default="v4",
    show_default=True,
    help="The generated jobs' ids: random as the node makes them, or time-ordered (UUIDv7, to repeat that experiment).",
)


@main.command("build")
@click.option("--total", default=10_000_000, show_default=True)
@_IDS
def build_command(total: int, ids: str) -> None:
    click.echo(asyncio.run(build(total, ids)))


@main.command("steady")
@click.option("--url", default=None, help="A database built by ``build`` (else a fresh one, dropped after).")
@click.option("--label", default="", help="What the row is (stored jobs, …).")
@click.option("--chains", default="1", show_default=True)
@click.option("--payloads", default="40", show_default=True, help="Bytes of each job's data.")
@click.option("--duration", default=6.0, show_default=True, help="Seconds per window.")
@click.option(
    "--compression", type=click.Choice(["pglz", "lz4"]), default=None, help="The payload columns' TOAST compression."
)
@click.option("--output", type=click.Path(path_type=Path), default=None)
def steady_command(
    url: str | None,
    label: str,
    chains: str,
    payloads: str,
    duration: float,
    compression: str | None,
    output: Path | None,
) -> None:
    async def run() -> list[dict[str, Any]]:
        target, fresh = await _fresh_or(url, compression)
        try:
            return await steady(target, _ints(chains), _ints(payloads), duration)
        finally:
            if fresh:
                await drop_pg_database(target)

    rows = asyncio.run(run())
    _emit({"phase": "steady", "label": label, "compression": compression, "rows": rows}, output)


@main.command("backlog")
@click.option("--url", required=True, help="A database built by ``build``.")
@click.option("--pending", default="100000,1000000", show_default=True)
@click.option("--seconds", default=15.0, show_default=True)
@_IDS
@click.option("--tree", type=click.Path(path_type=Path), default=None, help="Run the node of this checkout.")
@click.option("--nodes", default=1, show_default=True, help="Node processes draining the backlog together.")
@click.option("--dashboard", is_flag=True, help="An operator watches the dashboard meanwhile (its data every 2 s).")
@click.option("--in-flight", default=MAX_CONCURRENT_JOBS, show_default=True, help="Each node's max_concurrent_jobs.")
@click.option("--service-ms", default=0.0, show_default=True, help="How long the echo service takes to answer.")
@click.option("--elsewhere", default=0, show_default=True, help="Jobs running on other nodes meanwhile.")
@click.option("--output", type=click.Path(path_type=Path), default=None)
def backlog_command(
    url: str,
    pending: str,
    seconds: float,
    ids: str,
    tree: Path | None,
    nodes: int,
    dashboard: bool,
    in_flight: int,
    service_ms: float,
    elsewhere: int,
    output: Path | None,
) -> None:
    drain = Drain(in_flight, service_ms, elsewhere)
    for count in _ints(pending):
        row = asyncio.run(backlog(url, count, seconds, ids, tree, nodes, dashboard, drain))
        _emit({"phase": "backlog", **row}, output)


@main.command("since-vacuum")
@click.option("--url", required=True, help="A database built by ``build``.")
@click.option("--pending", default=300_000, show_default=True)
@click.option("--every", default=30_000, show_default=True, help="Jobs claimed per row.")
@click.option("--nodes", default=1, show_default=True, help="JobStores (nodes) claiming together.")
@click.option("--output", type=click.Path(path_type=Path), default=None)
def since_vacuum_command(url: str, pending: int, every: int, nodes: int, output: Path | None) -> None:
    rows = asyncio.run(since_vacuum(url, pending, every, nodes))
    _emit({"phase": "since-vacuum", "tree": str(Path.cwd()), "rows": rows}, output)


@main.command("drop")
@click.option("--url", required=True)
def drop_command(url: str) -> None:
    asyncio.run(drop_pg_database(url))


if __name__ == "__main__":
    main()
