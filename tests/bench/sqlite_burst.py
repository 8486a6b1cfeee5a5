"""SQLite under a burst, and batch ingest on the database the bursts left (issue 19, item 6).

    python -m tests.bench.sqlite_burst [--bursts 3] [--jobs 4000] [--clients 32] [--ingest-seconds 5]

One node (one process, ``max_concurrent_jobs`` 64, one container on the fast echo service
at concurrency 64) on a fresh SQLite file. A burst: ``--clients`` clients submit ``--jobs``
one-step jobs between them, one ``POST /api/jobs`` each, as fast as they can, then read
them back with ``GET /api/jobs?id=…`` in chunks of 100 ids (every ``--poll-ms``) until every
one has ended; each output is checked against its input. Jobs/s from the first POST to the
last result read, the submits' own rate and p50, and the node's CPU per job (the database
is inside it). The bursts run one after the other on the same file, then 4 clients
``POST /api/jobs/batch`` of 1,000 with the scheduler running for ``--ingest-seconds`` (the
benchmark's batch ingest, on a database that holds the bursts' jobs), then the node drains
what the ingest left. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.bench import load
from tests.bench.burst import BurstSettings, run_burst
from tests.bench.http import Connection, json_body
from tests.bench.procs import EchoService, NodeProcess, json_dump, node_config, sqlite_url


async def burst(node: NodeProcess, jobs: int, clients: int, poll: float) -> dict[str, Any]:
    """The burst phase's workload (``tests.bench.burst``), polling every ``poll`` seconds."""
    settings = BurstSettings(clients=clients, jobs=jobs, poll_ms=poll * 1000)
    return await run_burst(node.port, load.Meter(node), settings, poll, None)


async def ingest(node: NodeProcess, seconds: float) -> dict[str, Any]:
    """The benchmark's batch ingest (4 clients, batches of 1,000), scheduler running."""
    window = await load.closed_loop(
        lambda _i: Connection("127.0.0.1", node.port),
        4,
        load.batch_op(["echo1"], 1000),
        warmup=0.5,
        duration=seconds,
        max_ops=10**6,
        meter=load.Meter(node, None, None),
    )
    summary = window.summary()
    return {key: summary[key] for key in ("rate", "jobs", "errors", "node_cpu_ms_per_job") if key in summary}


async def drained(node: NodeProcess, limit: float) -> float:
    """Seconds until ``/info`` shows no unfinished job."""
    connection = Connection("127.0.0.1", node.port)
    started = time.perf_counter()
    try:
        await load.wait_idle(connection, limit)
    finally:
        connection.close()
    return round(time.perf_counter() - started, 1)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="jobnode-sqlite-burst-"))
    url = sqlite_url(workdir / "jobnode.db")
    service = EchoService(workdir).start()
    config = node_config(url, service.url, containers=1, max_concurrent_jobs=64, container_concurrency=64)
    node = NodeProcess(workdir, config).start()
    result: dict[str, Any] = {"workdir": str(workdir), "bursts": []}
    try:
        warm = Connection("127.0.0.1", node.port)
        await warm.request("POST", "/api/jobs", json_body({"containers": ["echo1"], "data": {}}))
        warm.close()
        for _ in range(args.bursts):
            result["bursts"].append(await burst(node, args.jobs, args.clients, args.poll_ms / 1000))
        if args.ingest_seconds:
            result["ingest"] = await ingest(node, args.ingest_seconds)
            result["ingest"]["drained_after_s"] = await drained(node, 300)
    finally:
        node.stop()
        service.stop()
    log = node.log()
    result["tracebacks"] = log.count("Traceback")
    result["locked"] = log.count("database is locked")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bursts", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=4000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--poll-ms", type=float, default=10.0)
    parser.add_argument("--ingest-seconds", type=float, default=5.0)
    print(json_dump(asyncio.run(run(parser.parse_args()))))


if __name__ == "__main__":
    main()
