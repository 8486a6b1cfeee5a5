"""The burst phase (issue 19): a client's pile of jobs at once, not a polite closed loop.

32 clients submit 4,000 one-step echo jobs, one ``POST /api/jobs`` each, as fast as they
can; each client then reads its own jobs back, ``GET /api/jobs?id=…`` with 100 ids a
request, polling the unfinished ones every ``poll_ms`` until all have ended — or, in the
variant, waiting for each chunk with ``&wait=``. The node runs with
``max_concurrent_jobs`` 64, so most of a burst is stored ``pending`` and claimed by the
claim loop rather than handed over in its INSERT. Figures: end-to-end jobs/s from the
first submit to the last result, its ratio to the raw service at 32 clients and to the
Infernet node on the same workload, submit p50/p99, node and PostgreSQL CPU per job
(the reads included), and correctness (every output checked, ids unique, no errors).

Part of ``jobnode bench``; run alone, quickly, for iterations (one echo service, one node
per tree on a fresh database of its own, rounds alternating between the trees):

    python -m tests.bench.burst --db postgresql --rounds 3
    python -m tests.bench.burst --tree /tmp/old --tree . --rounds 4   # before/after, alternately
    python -m tests.bench.burst --profile /tmp/burst.txt             # py-spy on the node meanwhile
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import msgspec

from tests.bench import load, profile
from tests.bench.http import Connection
from tests.bench.procs import (
    EchoService,
    NodeProcess,
    PgBackends,
    create_pg_database,
    drop_pg_database,
    json_dump,
    node_config,
    sqlite_url,
)
from tests.bench.raw import measure_raw
from tests.bench.stats import ms, percentile

_decode = msgspec.json.decode

#: The original Infernet node on this workload (32 clients, 4,000 one-step echo jobs, one
#: POST each, read back by polling 100 ids a request): 316–342 jobs/s, measured by the
#: author of issue 19 on this project's kind of machine. The ratio is taken to the best.
INFERNET_BURST_JOBS_S = (316, 342)
#: The node's capacity in this phase (issue 19's workload).
MAX_CONCURRENT_JOBS = 64
#: Results read per request.
CHUNK = 100


@dataclass
class BurstSettings:
    clients: int = 32
    jobs: int = 4000
    chunk: int = CHUNK
    poll_ms: float = 1.0
    time_limit: float = 120.0


@dataclass
class _Client:
    submitted: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    submit_latencies: list[float] = field(default_factory=list)
    gets: int = 0
    checked: int = 0
    errors: Counter[str] = field(default_factory=Counter)


def config(database_url: str, service_url: str) -> dict[str, Any]:
    """The node of the burst phase: one container, ``max_concurrent_jobs`` 64."""
    return node_config(database_url, service_url, containers=1, max_concurrent_jobs=MAX_CONCURRENT_JOBS)


async def _read_back(
    connection: Connection, client: _Client, chunk: int, poll_interval: float | None, deadline: float
) -> None:
    """The client's own jobs, ``chunk`` ids a request, until each has ended; outputs checked."""
    expected = dict(client.submitted)
    ids = list(expected)
    suffix = f"&wait={load.WAIT_SECONDS}" if poll_interval is None else ""
    for start in range(0, len(ids), chunk):
        unfinished = ids[start : start + chunk]
        while unfinished:
            if time.monotonic() > deadline:
                raise load.OpFailed(f"{len(unfinished)} jobs still running at the time limit")
            status, body = await connection.request("GET", "/api/jobs?id=" + "&id=".join(unfinished) + suffix)
            client.gets += 1
            load.check_status(status, body, "GET /api/jobs")
            answers = {answer["id"]: answer for answer in _decode(body)}
            missing = [job_id for job_id in unfinished if job_id not in answers]
            if missing:
                raise load.OpFailed(f"{len(missing)} jobs not found, e.g. {missing[0]}")
            running = []
            for job_id in unfinished:
                answer = answers[job_id]
                if answer["status"] == "running":
                    running.append(job_id)
                else:
                    load.check_echo(answer, expected[job_id])
                    client.checked += 1
            unfinished = running
            if unfinished and poll_interval is not None:
                await asyncio.sleep(poll_interval)


async def run_burst(
    port: int, meter: load.Meter, settings: BurstSettings, poll_interval: float | None, raw_rate: float | None
) -> dict[str, Any]:
    """One burst on an idle node: its summary (see the module's docstring)."""
    s = settings
    clients = [_Client() for _ in range(s.clients)]
    next_job = 0
    first_submit = last_result = 0.0
    deadline = time.monotonic() + s.time_limit

    async def one(client: _Client, index: int) -> None:
        nonlocal next_job, first_submit, last_result
        connection = Connection("127.0.0.1", port)
        try:
            while next_job < s.jobs:
                number = next_job
                next_job += 1
                data = {"burst": number, "client": index}
                started = time.monotonic()
                first_submit = first_submit or started
                job_id = await load.submit_job(connection, ["echo1"], data)
                client.submit_latencies.append(time.monotonic() - started)
                client.submitted.append((job_id, data))
            await _read_back(connection, client, s.chunk, poll_interval, deadline)
            last_result = max(last_result, time.monotonic())
        except (load.OpFailed, OSError, TimeoutError, ConnectionError) as exc:
            client.errors[f"{type(exc).__name__}: {exc}"[:200]] += 1
        finally:
            connection.close()

    start = await meter.read()
    await asyncio.wait_for(asyncio.gather(*(one(client, i) for i, client in enumerate(clients))), s.time_limit + 10)
    end = await meter.read()
    cpu = load.Meter.delta(start, end)
    errors: Counter[str] = Counter()
    for client in clients:
        errors.update(client.errors)
    ids = [job_id for client in clients for job_id, _ in client.submitted]
    checked = sum(client.checked for client in clients)
    if len(set(ids)) != len(ids):
        errors["duplicate ids answered"] += len(ids) - len(set(ids))
    if checked != s.jobs:
        errors[f"{s.jobs - checked} jobs without a checked result"] += 1
    elapsed = last_result - first_submit if last_result > first_submit else 0.0
    submits = [latency for client in clients for latency in client.submit_latencies]
    rate = checked / elapsed if elapsed > 0 else 0.0
    return {
        "clients": s.clients,
        "jobs": s.jobs,
        "chunk": s.chunk,
        "mode": "poll" if poll_interval is not None else "wait",
        "checked": checked,
        "elapsed_s": round(elapsed, 3),
        "rate": round(rate, 1),
        "ratio_to_raw": round(rate / raw_rate, 4) if raw_rate else None,
        "ratio_to_infernet": round(rate / max(INFERNET_BURST_JOBS_S), 2),
        "submit_p50_ms": ms(percentile(submits, 50)),
        "submit_p99_ms": ms(percentile(submits, 99)),
        "gets": sum(client.gets for client in clients),
        "errors": sum(errors.values()),
        "error_samples": dict(errors.most_common(10)),
        "cpu_s": {k: round(v, 3) for k, v in cpu.items()},
        **{
            f"{k}_cpu_ms_per_job": round(v / checked * 1000, 4) if checked else None
            for k, v in cpu.items()
            if k != "wall"
        },
    }


#: The phase's two variants: result key → poll interval factor (None: clients wait).
VARIANTS = {"burst": "poll", "burst_wait": "wait"}


def describe(key: str, summary: dict[str, Any]) -> str:
    return (
        f"{key}: {summary['rate']:,.0f} jobs/s ({summary['ratio_to_infernet']}× Infernet, "
        f"{summary['ratio_to_raw']} × raw), submit p50/p99 {summary['submit_p50_ms']}/{summary['submit_p99_ms']} "
        f"ms, node {summary['node_cpu_ms_per_job']} ms CPU/job, db {summary.get('db_cpu_ms_per_job')}, "
        f"{summary['gets']} GETs, errors {summary['errors']}"
    )


async def _standalone(
    trees: list[Path], db: str, rounds: int, settings: BurstSettings, profile_to: Path | None
) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="jobnode-burst-"))
    click.echo(f"work directory (node logs) {work}")
    if profile_to is not None:
        profile_to.parent.mkdir(parents=True, exist_ok=True)
    service = EchoService(work).start()
    nodes: list[NodeProcess] = []
    urls: list[str] = []
    figures: dict[tuple[int, str], list[dict[str, Any]]] = {}
    try:
        raw = await measure_raw(service, settings.clients, warmup=1.0, duration=3.0, max_ops=10**6)
        click.echo(f"raw service, {settings.clients} clients: {raw['rate']:,.0f} req/s")
        for i, tree in enumerate(trees):
            urls.append(await create_pg_database() if db == "postgresql" else sqlite_url(work / f"burst{i}.db"))
            node = NodeProcess(work, config(urls[i], service.url), name=f"burst{i}")
            node.tree = tree
            nodes.append(node.start())
        for round_ in range(rounds):
            order = range(len(trees)) if round_ % 2 == 0 else reversed(range(len(trees)))
            for i in order:
                node = nodes[i]
                meter = load.Meter(node, service, PgBackends(urls[i]) if db == "postgresql" else None)
                control = Connection("127.0.0.1", node.port)
                try:
                    for key, mode in VARIANTS.items():
                        await load.wait_idle(control, 60)
                        recorder = None
                        if profile_to is not None and round_ == rounds - 1 and i == len(trees) - 1:
                            recorder = profile.Recorder(node.pid, profile_to.with_suffix(f".{key}.txt"), 3.0)
                            if not recorder.start():
                                click.echo(f"no profile: {recorder.error}")
                                recorder = None
                        interval = settings.poll_ms / 1000 if mode == "poll" else None
                        summary = await run_burst(node.port, meter, settings, interval, raw["rate"])
                        if recorder is not None:
                            await asyncio.to_thread(recorder.wait, 40)
                        figures.setdefault((i, key), []).append(summary)
                        click.echo(f"round {round_} tree {i} ({trees[i]}) {describe(key, summary)}")
                finally:
                    control.close()
        means = {}
        for (i, key), summaries in figures.items():
            rates = [s["rate"] for s in summaries]
            cpus = [s["node_cpu_ms_per_job"] for s in summaries]
            dbs = [s.get("db_cpu_ms_per_job") or 0.0 for s in summaries]
            means[f"{i}:{key}"] = {"rate": statistics.mean(rates), "node_cpu": statistics.mean(cpus)}
            click.echo(
                f"tree {i} {key}: {statistics.mean(rates):,.0f} jobs/s ({min(rates):,.0f}-{max(rates):,.0f}), "
                f"node {statistics.mean(cpus):.3f} ms/job ({min(cpus):.3f}-{max(cpus):.3f}), "
                f"db {statistics.mean(dbs):.3f} ms/job"
            )
        logs = [node.log() for node in nodes]
        click.echo(f"tracebacks in node logs: {sum(log.count('Traceback') for log in logs)}")
        return {"raw": raw, "rounds": {f"{i}:{key}": v for (i, key), v in figures.items()}, "means": means}
    finally:
        for node in nodes:
            node.stop()
        service.stop()
        if db == "postgresql":
            for url in urls:
                await drop_pg_database(url)


@click.command()
@click.option("--db", type=click.Choice(["postgresql", "sqlite"]), default="postgresql", show_default=True)
@click.option(
    "--tree",
    "trees",
    multiple=True,
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="A checkout whose node to measure (repeat to alternate between several; default: this one).",
)
@click.option("--rounds", type=click.IntRange(1, 20), default=2, show_default=True)
@click.option("--jobs", type=click.IntRange(1, 100_000), default=4000, show_default=True)
@click.option("--clients", type=click.IntRange(1, 256), default=32, show_default=True)
@click.option("--poll-ms", type=float, default=1.0, show_default=True)
@click.option("--profile", "profile_to", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write the JSON here.")
def main(
    db: str,
    trees: tuple[Path, ...],
    rounds: int,
    jobs: int,
    clients: int,
    poll_ms: float,
    profile_to: Path | None,
    output: Path | None,
) -> None:
    """The burst phase alone (see the module's docstring)."""
    chosen = [tree.resolve() for tree in trees] or [Path(__file__).resolve().parents[2]]
    settings = BurstSettings(clients=clients, jobs=jobs, poll_ms=poll_ms)
    result = asyncio.run(_standalone(chosen, db, rounds, settings, profile_to))
    if output is not None:
        output.write_text(json_dump(result))


if __name__ == "__main__":
    main()
