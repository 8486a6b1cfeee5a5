"""One node process against two (issue 19, item 5): ``server.workers: 2`` behind one port,
and two separate ``jobnode serve`` nodes on one PostgreSQL database.

    python -m tests.bench.twonodes [--modes one,half,workers,nodes,own] [--rounds 2] [--duration 5]
                                   [--wait-mode polling|waiting|both] [--profile DIR] [--tree PATH]
                                   [--against OLD_TREE]

Each mode runs on a fresh PostgreSQL database of its own, all against one echo service
(1 container, 32 clients, closed loop: POST, then poll every 1 ms or wait with ``&wait=``).
With two separate nodes the clients are split between them by index, half each (``own``:
twice the clients, as many on each node as ``one`` serves); with
``workers`` the kernel spreads the connections over the two processes. The modes are
measured alternately, round after round (the order reversed every other round), each a
window after a warm-up. Per window: jobs/s, CPU per job of the node (all its processes,
summed), of the PostgreSQL backends serving its database, of the load generator; the
database's commits per job (``pg_stat_database``, approximate: its counters are flushed
about once a second, and they count the jobs stored while the window ran); the share of
jobs claimed by the claim loop (stored ``pending``, then claimed by an UPDATE) rather
than in the INSERT that stored them (``app.jobs.handoff``): a job's updates beyond its
end, renewals included (``pg_stat_user_tables``); the node's context switches per job
(how often its processes slept or were preempted: ``wakecost.py`` says what each sleep costs
here), and the preemptions among them; and the
steps each process ran. ``--profile DIR``
records each node process with py-spy during the last round's windows (collapsed stacks).
``--count-calls``
counts each node process's Python calls in each window instead (``callcount/``: cProfile,
so the windows' speed and CPU are not the node's then): the calls a job takes, which say
whether a process at half load does more work per job or the same work dearer.
``--tree`` runs the node of another checkout (run in that tree), as ``ab.py`` does;
``--against OLD`` runs every mode of that checkout too (``old-…``, each on its own
database), alternately with this one's (``new-…``): a change measured against the commit
before it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg
import click

from tests.bench import load
from tests.bench.http import Connection
from tests.bench.procs import (
    PREEMPTIONS,
    EchoService,
    NodeProcess,
    PgBackends,
    asyncpg_dsn,
    context_switches,
    create_pg_database,
    descendants,
    drop_pg_database,
    node_config,
)
from tests.bench.profile import Recorder, summarize

#: ``half``: one process serving half the clients, the load each process of the two-process
#: modes serves: the same CPU per job there means the extra cost is the smaller load per
#: process (smaller batches), not the processes meeting each other. ``own``: two nodes, each
#: serving as many clients as ``one`` (a node added with its own load, twice the clients).
MODES = ("one", "half", "workers", "nodes", "own")
#: Put on the nodes' ``PYTHONPATH`` for ``--count-calls``.
CALL_COUNTER = Path(__file__).with_name("callcount")
#: The clients of a mode, for ``--clients`` N.
CLIENTS = {"half": 0.5, "own": 2.0}
WAITS = {"polling": 0.001, "waiting": None}


class Deployment:
    """The node processes of one mode, on their database; CPU summed over all of them."""

    def __init__(
        self,
        mode: str,
        url: str,
        service: EchoService,
        work: Path,
        tree: Path | None,
        label: str = "",
        count_calls: bool = False,
    ) -> None:
        self.mode, self.url = mode, url
        #: Where each serving process writes its count of calls (``--count-calls``), or None.
        self.calls: Path | None = work / f"calls-{label}{mode}" if count_calls else None
        count = 2 if mode in ("nodes", "own") else 1
        workers = 2 if mode == "workers" else 1
        self.nodes: list[NodeProcess] = []
        for index in range(count):
            config = node_config(url, service.url, containers=1, workers=workers)
            config["scheduler"]["node_id"] = f"bench-{mode}-{index}"
            node = NodeProcess(work, config, name=f"{label}{mode}-{index}")
            if tree is not None:
                node.tree = tree
            if self.calls is not None:
                node.env = {
                    "PYTHONPATH": f"{CALL_COUNTER}{os.pathsep}{node.tree}",
                    "JOBNODE_BENCH_CALLS": str(self.calls),
                }
            self.nodes.append(node)

    def start(self) -> Deployment:
        for node in self.nodes:
            node.start()
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def cpu(self) -> float:
        return sum(node.cpu() for node in self.nodes)

    def switches(self) -> int:
        """The serving processes' context switches, voluntary or not: each a sleep (or a
        preemption) and a wake-up, which cost a process more than its work alone
        (``wakecost.py``)."""
        return sum(context_switches(pid) for pid in self.serving_pids())

    def preemptions(self) -> int:
        """Those of the switches where a process was runnable and another took its core: on
        2 cores shared with the database, the service and the load generator, most of them
        once two node processes share the load."""
        return sum(context_switches(pid, PREEMPTIONS) for pid in self.serving_pids())

    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    def serving_pids(self) -> list[int]:
        """The processes that run a node's event loop: the workers, not their parent."""
        pids: list[int] = []
        for node in self.nodes:
            pids += descendants(node.pid) if self.mode == "workers" else [node.pid]
        return pids

    def log(self) -> str:
        return "".join(node.log() for node in self.nodes)

    def count_calls(self, on: bool) -> None:
        """Starts (or stops, and has each process write its count of) counting calls."""
        for pid in self.serving_pids():
            os.kill(pid, signal.SIGUSR1 if on else signal.SIGUSR2)

    async def counted_calls(self) -> int:
        """The calls the serving processes counted, once each has written its count."""
        assert self.calls is not None
        files = [self.calls.with_name(f"{self.calls.name}.{pid}") for pid in self.serving_pids()]
        for _ in range(100):
            if all(f.exists() for f in files):
                break
            await asyncio.sleep(0.1)
        total = sum(int(f.read_text()) for f in files)
        for f in files:
            f.unlink()
        return total


class CallCountingMeter(load.Meter):
    """Counts the node's calls between the window's two readings (``--count-calls``)."""

    def __init__(self, deployment: Deployment, *args: Any) -> None:
        super().__init__(*args)
        self.deployment, self.counting = deployment, False

    async def read(self) -> dict[str, float]:
        if self.counting:
            self.deployment.count_calls(False)
        reading = await super().read()
        if not self.counting:
            self.deployment.count_calls(True)
        self.counting = not self.counting
        return reading


async def _counters(url: str) -> dict[str, int]:
    """The database's commits, and the jobs table's inserts and updates (``pg_stat_*``)."""
    conn = await asyncpg.connect(asyncpg_dsn(url), timeout=5)
    try:
        row = await conn.fetchrow(
            "SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()) AS commits,"
            " n_tup_ins AS inserts, n_tup_upd AS updates FROM pg_stat_user_tables WHERE relname = 'jobs'"
        )
    finally:
        await conn.close()
    return dict(row)


async def _runners(url: str, since_seq: int) -> tuple[int, dict[str, int]]:
    """(highest step seq; steps after ``since_seq`` per node that ran them)."""
    conn = await asyncpg.connect(asyncpg_dsn(url), timeout=5)
    try:
        rows = await conn.fetch(
            "SELECT node, count(*) AS n, max(seq) AS top FROM job_steps WHERE seq > $1 GROUP BY node", since_seq
        )
    finally:
        await conn.close()
    return max([since_seq, *(row["top"] for row in rows)]), {str(row["node"]): row["n"] for row in rows}


async def _window(
    deployment: Deployment, service: EchoService, wait: float | None, clients: int, duration: float
) -> dict[str, Any]:
    parties = (deployment, service, PgBackends(deployment.url))
    meter = load.Meter(*parties) if deployment.calls is None else CallCountingMeter(deployment, *parties)  # type: ignore[arg-type]
    ports = deployment.ports()
    top, _ = await _runners(deployment.url, 0)
    before = await _counters(deployment.url)
    window = await load.closed_loop(
        lambda i: Connection("127.0.0.1", ports[i % len(ports)]),
        clients,
        load.end_to_end_op(["echo1"], wait),
        warmup=1.5,
        duration=duration,
        max_ops=10**6,
        meter=meter,
    )
    summary = window.summary()
    await asyncio.sleep(1.2)  # pg_stat_database's counters are flushed about once a second
    after = await _counters(deployment.url)
    _, owners = await _runners(deployment.url, top)
    calls = await deployment.counted_calls() if deployment.calls is not None else None
    stored = after["inserts"] - before["inserts"]
    commits, updates = after["commits"] - before["commits"], after["updates"] - before["updates"]
    return {
        "rate": summary["rate"],
        "node_ms": summary["node_cpu_ms_per_job"],
        "db_ms": summary["db_cpu_ms_per_job"],
        "loadgen_ms": summary["loadgen_cpu_ms_per_job"],
        "service_ms": summary["service_cpu_ms_per_job"],
        #: The whole machine's busy cores in the window (2: nothing left for a second process).
        "busy_cores": summary["cpu_cores"]["system"],
        "switches_per_job": summary["node_switches_per_job"],
        "preempted_per_job": summary["node_preempted_per_job"],
        "errors": summary["errors"],
        "error_samples": summary["error_samples"],
        "p50_ms": summary["latency_p50_ms"],
        #: Polling: each GET a request and a read of its own, paid per job as often as it runs.
        "polls_per_job": summary["polls_per_job"],
        "commits_per_job": round(commits / stored, 2) if stored else None,
        # A job claimed in its INSERT is updated once (its end), one claimed later twice.
        "claimed_by_loop": round(updates / stored - 1, 3) if stored else None,
        "owners": owners,
        "calls_per_job": round(calls / window.jobs, 1) if calls is not None and window.jobs else None,
    }


async def _run(
    modes: Sequence[str],
    waits: Sequence[str],
    rounds: int,
    clients: int,
    duration: float,
    profile: Path | None,
    trees: dict[str, Path | None],
    count_calls: bool = False,
) -> None:
    work = Path(tempfile.mkdtemp(prefix="jobnode-twonodes-"))
    service = EchoService(work).start()
    deployments: dict[str, Deployment] = {}
    figures: dict[tuple[str, str], list[dict[str, Any]]] = {}
    names = [f"{label}{mode}" for mode in modes for label in trees]
    try:
        for mode in modes:
            for label, tree in trees.items():
                url = await create_pg_database()
                deployments[f"{label}{mode}"] = Deployment(mode, url, service, work, tree, label, count_calls).start()
        for round_ in range(rounds):
            order = names if round_ % 2 == 0 else list(reversed(names))
            for name in order:
                deployment = deployments[name]
                mode = deployment.mode
                for wait_name in waits:
                    recorders: list[Recorder] = []
                    if profile is not None and round_ == rounds - 1:
                        profile.mkdir(parents=True, exist_ok=True)
                        for n, pid in enumerate(deployment.serving_pids()):
                            recorder = Recorder(pid, profile / f"{name}-{wait_name}-{n}.txt", duration + 2)
                            if recorder.start():
                                recorders.append(recorder)
                    row = await _window(
                        deployment, service, WAITS[wait_name], round(clients * CLIENTS.get(mode, 1)), duration
                    )
                    for recorder in recorders:
                        if recorder.wait(60):
                            top = summarize(recorder.output, top=12)
                            click.echo(f"  profile {recorder.output.name}: {top['samples']} samples")
                    figures.setdefault((name, wait_name), []).append(row)
                    calls = f" Python calls/job {row['calls_per_job']}," if count_calls else ""
                    click.echo(
                        f"round {round_} {name:>11} {wait_name}: {row['rate']:,.0f} jobs/s, node {row['node_ms']:.3f}"
                        f" ms/job, db {row['db_ms']:.3f}, loadgen {row['loadgen_ms']:.3f},"
                        f" service {row['service_ms']:.3f}, p50 {row['p50_ms']} ms, polls/job {row['polls_per_job']},"
                        f" busy cores {row['busy_cores']}, commits/job"
                        f" {row['commits_per_job']}, node context switches/job {row['switches_per_job']}"
                        f" (preempted {row['preempted_per_job']}),"
                        f" claimed by loop {row['claimed_by_loop']},{calls} owners"
                        f" {row['owners']}, errors {row['errors']} {row['error_samples'] or ''}"
                    )
        click.echo("mean (min-max) over the rounds:")
        for (name, wait_name), rows in figures.items():

            def spread(key: str, rows: list[dict[str, Any]] = rows) -> str:
                values = [r[key] for r in rows if r[key] is not None]
                if not values:
                    return "-"
                return f"{statistics.mean(values):,.3g} ({min(values):,.3g}-{max(values):,.3g})"

            click.echo(
                f"{name:>11} {wait_name}: jobs/s {spread('rate')}, node ms/job {spread('node_ms')}, "
                f"db ms/job {spread('db_ms')}, busy cores {spread('busy_cores')}, "
                f"p50 ms {spread('p50_ms')}, polls/job {spread('polls_per_job')}, "
                f"commits/job {spread('commits_per_job')}, switches/job {spread('switches_per_job')}, "
                f"preempted/job {spread('preempted_per_job')}, Python calls/job {spread('calls_per_job')}, "
                f"claimed by loop {spread('claimed_by_loop')}"
            )
        tracebacks = {mode: d.log().count("Traceback") for mode, d in deployments.items()}
        click.echo(f"tracebacks in the node logs: {tracebacks}")
    finally:
        for deployment in deployments.values():
            deployment.stop()
        service.stop()
        for deployment in deployments.values():
            await drop_pg_database(deployment.url)


@click.command()
@click.option("--modes", default="one,half,workers,nodes", show_default=True, help=", ".join(MODES))
@click.option("--wait-mode", type=click.Choice(["polling", "waiting", "both"]), default="both", show_default=True)
@click.option("--rounds", type=click.IntRange(1, 20), default=2, show_default=True)
@click.option("--clients", type=click.IntRange(1, 256), default=32, show_default=True)
@click.option("--duration", type=float, default=5.0, show_default=True)
@click.option("--profile", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option("--tree", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None)
@click.option(
    "--against",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=None,
    help="another checkout (e.g. the previous commit, `git worktree add`): each mode of both, alternately",
)
@click.option(
    "--count-calls", is_flag=True, help="count each node's Python calls per job (cProfile: its speed is not the node's)"
)
def main(
    modes: str,
    wait_mode: str,
    rounds: int,
    clients: int,
    duration: float,
    profile: Path | None,
    tree: Path | None,
    against: Path | None,
    count_calls: bool,
) -> None:
    """One node process against two (workers, or two nodes on one database), alternately."""
    chosen = [m for m in modes.split(",") if m]
    if unknown := set(chosen) - set(MODES):
        raise click.BadParameter(f"unknown modes {sorted(unknown)}", param_hint="--modes")
    waits = list(WAITS) if wait_mode == "both" else [wait_mode]
    new = tree.resolve() if tree else None
    trees: dict[str, Path | None] = {"old-": against.resolve(), "new-": new} if against else {"": new}
    asyncio.run(_run(chosen, waits, rounds, clients, duration, profile, trees, count_calls))


if __name__ == "__main__":
    main()
