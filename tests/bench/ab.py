"""Two checkouts' nodes measured alternately on one machine: the comparison to trust when
runs of the same code differ by a third (see README.md, Performance).

    python -m tests.bench.ab OLD_TREE NEW_TREE [--db postgresql|sqlite] [--rounds 4] [--workers 1]

Each tree's node (``python -m app.cli serve`` run in that tree, ``NodeProcess.tree``) runs
on a fresh database of its own against one echo service; each round measures 32 clients
polling every 1 ms and 32 clients waiting (``&wait=``), 1 container, one node process
(``--workers``: that many behind the port), a 5-second window after the warm-up,
alternating which tree goes first. Prints a line per window (with the time from submit
to result, p50 and p99) and the means with their spread.

``--cold-writes``: meanwhile an operator cancels an ended job every 50 ms
(``DELETE /api/jobs/{id}``, 409): a write outside the hot path (on SQLite the cold writer's,
as maintenance and operator actions are), timed from request to answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import click

from tests.bench import load
from tests.bench.http import Connection
from tests.bench.procs import (
    EchoService,
    NodeProcess,
    PgBackends,
    create_pg_database,
    drop_pg_database,
    node_config,
    sqlite_url,
)

MODES = {"polling": 0.001, "waiting": None}
TOKEN = "ab-operator"
#: Seconds between two operator cancels (``--cold-writes``).
COLD_PERIOD = 0.05


async def _cold_writes(port: int, job_id: str, stop: asyncio.Event) -> list[tuple[int, float]]:
    """Operator cancels of an ended job until ``stop``: (status, seconds) each."""
    connection = Connection("127.0.0.1", port, headers={"Authorization": f"Bearer {TOKEN}"})
    answers: list[tuple[int, float]] = []
    try:
        while not stop.is_set():
            began = time.perf_counter()
            status, _ = await connection.request("DELETE", f"/api/jobs/{job_id}")
            answers.append((status, time.perf_counter() - began))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), COLD_PERIOD)
    finally:
        connection.close()
    return answers


def _cold_summary(answers: list[tuple[int, float]]) -> str:
    took = sorted(seconds * 1000 for _, seconds in answers)
    codes = Counter(status for status, _ in answers)
    p99 = took[min(len(took) - 1, int(len(took) * 0.99))]
    return (
        f"; cold writes {len(took)}: p50 / p99 / max {statistics.median(took):.1f} / {p99:.1f} / {took[-1]:.1f} ms,"
        f" {dict(codes)}"
    )


async def _ended_job(port: int) -> str:
    connection = Connection("127.0.0.1", port)
    try:
        job_id = await load.submit_job(connection, ["echo1"], {})
        await load.wait_result(connection, job_id, None)
    finally:
        connection.close()
    return job_id


async def _compare(trees: dict[str, Path], db: str, rounds: int, clients: int, workers: int, cold: bool) -> None:
    work = Path(tempfile.mkdtemp(prefix="jobnode-ab-"))
    service = EchoService(work).start()
    nodes: dict[str, NodeProcess] = {}
    urls: dict[str, str] = {}
    figures: dict[tuple[str, str], list[tuple[float, float]]] = {}
    try:
        for name, tree in trees.items():
            urls[name] = await create_pg_database() if db == "postgresql" else sqlite_url(work / f"{name}.db")
            config = node_config(urls[name], service.url, containers=1, workers=workers)
            config["server"]["operator_token"] = TOKEN
            node = NodeProcess(work, config, name=name)
            node.tree = tree
            nodes[name] = node.start()
        ended = {name: await _ended_job(node.port) for name, node in nodes.items()} if cold else {}
        for round_ in range(rounds):
            for name in list(trees) if round_ % 2 == 0 else list(reversed(trees)):
                node = nodes[name]
                meter = load.Meter(node, service, PgBackends(urls[name]) if db == "postgresql" else None)
                for mode, interval in MODES.items():
                    stop = asyncio.Event()
                    cancels = asyncio.ensure_future(_cold_writes(node.port, ended[name], stop)) if cold else None
                    window = await load.closed_loop(
                        lambda _i, port=node.port: Connection("127.0.0.1", port),
                        clients,
                        load.end_to_end_op(["echo1"], interval),
                        warmup=1.5,
                        duration=5,
                        max_ops=10**6,
                        meter=meter,
                    )
                    stop.set()
                    cold_line = _cold_summary(await cancels) if cancels is not None else ""
                    s = window.summary()
                    figures.setdefault((name, mode), []).append((s["rate"], s["node_cpu_ms_per_job"]))
                    click.echo(
                        f"round {round_} {name:>4} {mode}: {s['rate']:,.0f} jobs/s, "
                        f"node {s['node_cpu_ms_per_job']:.3f} ms CPU/job, submit → result p50 / p99"
                        f" {s['latency_p50_ms']} / {s['latency_p99_ms']} ms, errors {s['errors']}{cold_line}"
                    )
        for (name, mode), values in figures.items():
            rates, cpus = [v[0] for v in values], [v[1] for v in values]
            click.echo(
                f"{name:>4} {mode}: {statistics.mean(rates):,.0f} jobs/s ({min(rates):,.0f}-{max(rates):,.0f}), "
                f"node {statistics.mean(cpus):.2f} ms/job ({min(cpus):.2f}-{max(cpus):.2f})"
            )
    finally:
        for node in nodes.values():
            node.stop()
        service.stop()
        if db == "postgresql":
            for url in urls.values():
                await drop_pg_database(url)


@click.command()
@click.argument("old", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.argument("new", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--db", type=click.Choice(["postgresql", "sqlite"]), default="postgresql", show_default=True)
@click.option("--rounds", type=click.IntRange(1, 20), default=4, show_default=True)
@click.option("--clients", type=click.IntRange(1, 256), default=32, show_default=True)
@click.option("--workers", type=click.IntRange(1, 8), default=1, show_default=True, help="Each node's server.workers.")
@click.option("--cold-writes", is_flag=True, help="Meanwhile an operator's cancel every 50 ms, timed.")
def main(old: Path, new: Path, db: str, rounds: int, clients: int, workers: int, cold_writes: bool) -> None:
    """Measure the nodes of two checkouts (OLD, NEW: e.g. `git worktree add`) alternately."""
    trees = {"old": old.resolve(), "new": new.resolve()}
    asyncio.run(_compare(trees, db, rounds, clients, workers, cold_writes))


if __name__ == "__main__":
    main()
