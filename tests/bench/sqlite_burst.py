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

import msgspec

from tests.bench import load
from tests.bench.http import Connection, json_body
from tests.bench.procs import EchoService, NodeProcess, json_dump, node_config, sqlite_url
from tests.bench.stats import ms, percentile

CHUNK = 100


async def _client(
    port: int, count: int, client: int, poll: float, posts: list[float], errors: list[str]
) -> tuple[float, int]:
    """Submit ``count`` jobs, then read them back until all ended: (when done, reads)."""
    connection = Connection("127.0.0.1", port)
    wanted: dict[str, dict[str, Any]] = {}
    reads = 0
    try:
        for n in range(count):
            data = {"client": client, "n": n}
            started = time.perf_counter()
            job_id = await load.submit_job(connection, ["echo1"], data)
            posts.append(time.perf_counter() - started)
            wanted[job_id] = data
        while wanted:
            ids = list(wanted)
            for start in range(0, len(ids), CHUNK):
                chunk = ids[start : start + CHUNK]
                status, body = await connection.request("GET", "/api/jobs?" + "&".join(f"id={i}" for i in chunk))
                reads += 1
                if status != 200:
                    raise load.OpFailed(f"GET /api/jobs {status}")
                for result in msgspec.json.decode(body):
                    if result["status"] != "running":
                        try:
                            load.check_echo(result, wanted.pop(result["id"]))
                        except load.OpFailed as exc:
                            errors.append(str(exc))
            if wanted:
                await asyncio.sleep(poll)
        return time.perf_counter(), reads
    finally:
        connection.close()


async def burst(node: NodeProcess, jobs: int, clients: int, poll: float) -> dict[str, Any]:
    posts: list[float] = []
    errors: list[str] = []
    cpu, started = node.cpu(), time.perf_counter()
    shares = [jobs // clients + (1 if i < jobs % clients else 0) for i in range(clients)]
    outcomes = await asyncio.gather(*(_client(node.port, shares[i], i, poll, posts, errors) for i in range(clients)))
    ended = max(done for done, _ in outcomes)
    elapsed = ended - started
    return {
        "jobs": jobs,
        "jobs_per_s": round(jobs / elapsed, 1),
        "seconds": round(elapsed, 3),
        "submit_p50_ms": ms(percentile(posts, 50)),
        "submit_p99_ms": ms(percentile(posts, 99)),
        "reads": sum(reads for _, reads in outcomes),
        "node_cpu_ms_per_job": round((node.cpu() - cpu) / jobs * 1000, 3),
        "errors": len(errors),
        "error_samples": errors[:3],
    }


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
