"""Event streams at scale (SPEC §9): N concurrent ``GET /api/jobs/events`` on one node.

    python -m tests.bench.events --db postgresql --streams 1000
    python -m tests.bench.events --db sqlite --streams 1000

Starts the bench echo service and a node (``python -m app.cli serve``, chains
``echo1 → echo2``, ``scheduler.max_concurrent_jobs`` 32 so most jobs wait queued while
their stream is open) on a fresh database. Then:

* ``live``: submits N jobs in one batch and opens one stream per job at once; each stream
  must deliver ``step``, ``step``, ``job``. Reports the time from the request to the
  answer's headers and to the first event, to the stream's end, the events delivered,
  the node's CPU and its memory (at start, and its peak over the whole run).
* ``idle``: N streams held open on N jobs that stay queued (a container the node has no
  room for: its ``concurrency`` is taken by a job that hangs), for ``--idle`` seconds:
  the node's CPU per second for watching them (one read of all of them per tick).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import click

from tests.bench.procs import (
    EchoService,
    NodeProcess,
    create_pg_database,
    drop_pg_database,
    node_config,
    peak_rss_mb,
    sqlite_url,
)
from tests.bench.stats import ms, percentile
from tests.support import HostService, migrated


def _rss_mb(pid: int) -> float | None:
    """``VmRSS``: the process's resident set size now, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return None


def say(message: str) -> None:
    print(f"[events {time.strftime('%H:%M:%S')}] {message}", flush=True)


async def _one_stream(http: aiohttp.ClientSession, job_id: str, stop_after: int | None = None) -> dict[str, Any]:
    started = time.perf_counter()
    events = 0
    first: float | None = None
    async with http.get("/api/jobs/events", params={"id": job_id}) as r:
        headers = time.perf_counter() - started
        if r.status != 200:
            await r.read()
            return {"status": r.status, "events": 0, "headers": headers, "first": None, "end": None}
        async for line in r.content:
            if line.startswith(b"event: "):
                events += 1
                if first is None:
                    first = time.perf_counter() - started
                if stop_after is not None and events >= stop_after:
                    break
    return {"status": 200, "events": events, "headers": headers, "first": first, "end": time.perf_counter() - started}


async def _submit(http: aiohttp.ClientSession, body: dict[str, Any], count: int) -> list[str]:
    ids: list[str] = []
    for start in range(0, count, 1000):
        async with http.post("/api/jobs/batch", json=[body] * min(1000, count - start)) as r:
            r.raise_for_status()
            ids.extend(item["id"] for item in await r.json())
    return ids


def _client(node: NodeProcess) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=0)
    return aiohttp.ClientSession(node.url, connector=connector, timeout=aiohttp.ClientTimeout(total=120))


async def live_phase(node: NodeProcess, streams: int) -> dict[str, Any]:
    async with _client(node) as http:
        ids = await _submit(http, {"containers": ["echo1", "echo2"], "data": {"x": 1}}, streams)
        cpu, own = node.cpu(), time.process_time()
        started = time.perf_counter()
        results = await asyncio.gather(*(_one_stream(http, job_id) for job_id in ids))
        wall = time.perf_counter() - started
        cpu, own = node.cpu() - cpu, time.process_time() - own
    ok = [r for r in results if r["status"] == 200]
    return {
        "streams": streams,
        "answered_200": len(ok),
        "events_delivered": sum(r["events"] for r in results),
        "events_expected": 3 * streams,
        "headers_ms": {
            "p50": ms(percentile([r["headers"] for r in ok], 50)),
            "p99": ms(percentile([r["headers"] for r in ok], 99)),
        },
        "first_event_ms": {
            "p50": ms(percentile([r["first"] for r in ok if r["first"] is not None], 50)),
            "p99": ms(percentile([r["first"] for r in ok if r["first"] is not None], 99)),
        },
        "stream_end_ms": {
            "p50": ms(percentile([r["end"] for r in ok], 50)),
            "max": ms(percentile([r["end"] for r in ok], 100)),
        },
        "wall_s": round(wall, 2),
        "node_cpu_s": round(cpu, 2),
        "client_cpu_s": round(own, 2),
    }


async def idle_phase(node: NodeProcess, streams: int, seconds: float) -> dict[str, Any]:
    async with _client(node) as http:
        await _submit(http, {"containers": ["hang"], "data": {"x": 1}}, 1)  # takes the only slot
        ids = await _submit(http, {"containers": ["hang"], "data": {"x": 2}}, streams)
        tasks = [asyncio.create_task(_one_stream(http, job_id, stop_after=1)) for job_id in ids]
        await asyncio.sleep(2)  # all open
        cpu = node.cpu()
        await asyncio.sleep(seconds)
        cpu = node.cpu() - cpu
        opened = sum(not task.done() for task in tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {"streams_open": opened, "seconds": seconds, "node_cpu_percent": round(100 * cpu / seconds, 1)}


async def run(db: str, streams: int, idle: float, workdir: Path) -> dict[str, Any]:
    url = await create_pg_database() if db == "postgresql" else sqlite_url(workdir / "events.db")
    echo = EchoService(workdir).start()
    hang = HostService("slow", DELAY=3600)
    hang.wait_ready()
    node: NodeProcess | None = None
    try:
        await migrated(url)
        config = node_config(url, echo.url, containers=2, max_concurrent_jobs=32)
        config["containers"].append({"id": "hang", "url": hang.url, "concurrency": 1, "timeout": 3600})
        node = NodeProcess(workdir, config).start()
        rss_before = _rss_mb(node.pid)
        say(f"{db}: {streams} streams on jobs that run now")
        live = await live_phase(node, streams)
        say(json.dumps(live))
        say(f"{db}: {streams} streams open on queued jobs for {idle:g} s")
        idle_result = await idle_phase(node, streams, idle)
        say(json.dumps(idle_result))
        rss = peak_rss_mb(node.pid)
        return {
            "db": db,
            "live": live,
            "idle": idle_result,
            "node_rss_at_start_mb": rss_before,
            "node_peak_rss_mb": rss,
        }
    finally:
        if node is not None:
            node.stop(timeout=10)
        hang.stop()
        echo.stop()
        if db == "postgresql":
            await drop_pg_database(url)


@click.command()
@click.option("--db", type=click.Choice(["sqlite", "postgresql"]), default="postgresql", show_default=True)
@click.option("--streams", type=int, default=1000, show_default=True)
@click.option("--idle", type=float, default=10.0, show_default=True, help="Seconds of the idle phase.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write the JSON here.")
def main(db: str, streams: int, idle: float, output: Path | None) -> None:
    """N concurrent event streams on one node (see the module's docstring)."""
    with tempfile.TemporaryDirectory(prefix="jobnode-bench-events-") as workdir:
        result = asyncio.run(run(db, streams, idle, Path(workdir)))
    text = json.dumps(result, indent=1)
    print(text)
    if output is not None:
        output.write_text(text + "\n")


if __name__ == "__main__":
    main()
