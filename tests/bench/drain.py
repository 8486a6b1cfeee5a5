"""How fast a node drains a stored backlog (issue 19): is the rate steady, or does each job
cost more than the last?

A node with its scheduler off stores ``--jobs`` jobs (``POST /api/jobs/batch`` of 1,000)
for the fast echo service (``tests/bench/echo.py``); then a node with its scheduler on is
started on that database, and the jobs finished are counted every ``--window`` seconds
(read from the database file itself, a read transaction beside the node's). With
``--pollers N``, N clients poll ``GET /api/jobs?id=`` for random stored jobs every
``--poll-ms`` meanwhile, as clients waiting for their results do.

    python -m tests.bench.drain --jobs 40000 --pollers 32

Prints one JSON document: the rate of each window, the first window's (the burst) and the
last full window's, their ratio (the target: ≥ 0.9), the node's CPU per job in each window
(and that ratio), and the whole drain's time. SQLite only
by default (``--db-url`` takes a PostgreSQL URL too).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import create_async_engine

from app.db.models import Job
from tests.bench.http import Connection
from tests.bench.procs import EchoService, NodeProcess, json_dump, node_config, sqlite_url
from tests.bench.stats import ms, percentile
from tests.support import migrated

BATCH = 1000


async def submit(node: NodeProcess, count: int, containers: list[str]) -> list[str]:
    """Store ``count`` jobs in batches of ``BATCH``; returns their ids."""
    ids: list[str] = []
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(node.url, timeout=timeout) as http:
        for start in range(0, count, BATCH):
            body = [{"containers": containers, "data": {"n": n}} for n in range(start, min(count, start + BATCH))]
            async with http.post("/api/jobs/batch", json=body) as response:
                response.raise_for_status()
                ids.extend(item["id"] for item in await response.json())
    return ids


async def finished_count(url: str) -> int:
    """Jobs ended so far, read beside the node (its partial ``ix_jobs_finished_at``)."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1]
        with contextlib.closing(sqlite3.connect(path, timeout=30)) as db:
            return int(db.execute("SELECT count(*) FROM jobs WHERE finished_at IS NOT NULL").fetchone()[0])
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            query = select(func.count()).select_from(Job).where(Job.finished_at.is_not(None))
            return int((await conn.execute(query)).scalar_one())
    finally:
        await engine.dispose()


async def poll(node: NodeProcess, ids: list[str], interval: float, stop: asyncio.Event, latencies: list[float]) -> None:
    """One client reading a random stored job every ``interval`` seconds."""
    connection = Connection("127.0.0.1", node.port)
    try:
        while not stop.is_set():
            started = time.perf_counter()
            status, _ = await connection.request("GET", f"/api/jobs?id={random.choice(ids)}")
            latencies.append(time.perf_counter() - started)
            if status != 200:
                raise RuntimeError(f"GET /api/jobs answered {status}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
    finally:
        connection.close()


async def drain(
    node: NodeProcess, url: str, total: int, window: float, limit: float, reads: list[float]
) -> list[dict[str, Any]]:
    """The jobs finished in each ``window`` until all ``total`` are (or ``limit`` s passed),
    with the node's CPU per job finished and the clients' reads answered in that window:
    a rate that falls while the CPU per job holds is the machine's, one whose CPU per job
    grows is the node's (the issue's "cost grows with the work done")."""
    windows: list[dict[str, Any]] = []
    started = last_time = time.perf_counter()
    last_done, last_cpu, last_reads = await finished_count(url), node.cpu(), len(reads)
    while last_done < total and last_time - started < limit:
        await asyncio.sleep(window - (time.perf_counter() - last_time) % window)
        done, now, cpu, answered = await finished_count(url), time.perf_counter(), node.cpu(), len(reads)
        finished = done - last_done
        windows.append(
            {
                "t": round(now - started, 1),
                "finished": done,
                "rate": round(finished / (now - last_time), 1),
                "node_cpu_ms_per_job": round((cpu - last_cpu) * 1000 / finished, 4) if finished else None,
                "reads": answered - last_reads,
            }
        )
        last_done, last_time, last_cpu, last_reads = done, now, cpu, answered
    return windows


def summary(windows: list[dict[str, Any]], total: int) -> dict[str, Any]:
    """Burst (first window), end (last full window: the one the drain ended in is partial),
    their ratio, the median window (a window holds a few claims of up to 256 jobs, so
    one window's rate is coarse), and the same ratio of the node's CPU per job."""
    full = [w for w in windows if w["finished"] < total] or windows
    burst, end = full[0], full[-1]
    first_cpu, end_cpu = burst["node_cpu_ms_per_job"], end["node_cpu_ms_per_job"]
    return {
        "burst_rate": burst["rate"],
        "end_rate": end["rate"],
        "end_to_burst": round(end["rate"] / burst["rate"], 2) if burst["rate"] else None,
        "median_rate": percentile([w["rate"] for w in full], 50),
        "drain_seconds": windows[-1]["t"] if windows and windows[-1]["finished"] >= total else None,
        "mean_rate": round(windows[-1]["finished"] / windows[-1]["t"], 1) if windows else None,
        "burst_node_cpu_ms_per_job": first_cpu,
        "end_node_cpu_ms_per_job": end_cpu,
        "end_to_burst_node_cpu": round(end_cpu / first_cpu, 2) if first_cpu and end_cpu else None,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="jobnode-drain-"))
    url = args.db_url or sqlite_url(workdir / "jobnode.db")
    await migrated(url)
    service = EchoService(workdir).start()
    containers = [f"echo{i}" for i in range(1, args.steps + 1)]
    try:
        config = node_config(url, service.url, containers=args.steps, scheduler=False)
        api = NodeProcess(workdir, config, "submit").start()
        try:
            ids = await submit(api, args.jobs, containers)
        finally:
            api.stop()
        config["scheduler"] = {**config["scheduler"], "enabled": True}
        node = NodeProcess(workdir, config, "drain").start()
        stop, latencies = asyncio.Event(), []
        pollers = [
            asyncio.create_task(poll(node, ids, args.poll_ms / 1000, stop, latencies)) for _ in range(args.pollers)
        ]
        try:
            windows = await drain(node, url, len(ids), args.window, args.limit, latencies)
        finally:
            stop.set()
            await asyncio.gather(*pollers)
            node.stop()
    finally:
        service.stop()
    return {
        "db": url.split(":", 1)[0],
        "jobs": len(ids),
        "steps": args.steps,
        "pollers": args.pollers,
        "poll_ms": args.poll_ms,
        "reads": len(latencies),
        "read_p50_ms": ms(percentile(latencies, 50)),
        "read_p99_ms": ms(percentile(latencies, 99)),
        **summary(windows, len(ids)),
        "windows": windows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=40_000)
    parser.add_argument("--steps", type=int, default=1, help="containers per job (echo1..echoN)")
    parser.add_argument("--pollers", type=int, default=0, help="clients polling GET /api/jobs?id= meanwhile")
    parser.add_argument("--poll-ms", type=float, default=100.0)
    parser.add_argument("--window", type=float, default=1.0, help="seconds per rate window")
    parser.add_argument("--limit", type=float, default=300.0, help="give up after this many seconds")
    parser.add_argument("--db-url", help="a migrated-or-empty database instead of a fresh SQLite file")
    print(json_dump(asyncio.run(run(parser.parse_args()))))


if __name__ == "__main__":
    main()
