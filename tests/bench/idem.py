"""What an ``Idempotency-Key`` costs a submit (SPEC §8, issue 17).

    python -m tests.bench.idem --db both [--count 2000] [--clients 32]

Starts one node (its scheduler off: submits only, nothing runs) on a fresh database and
sends ``POST /api/jobs`` from one client in sequence and from ``--clients`` concurrent
clients: without a key, with a new key each (keyed submits share the group commit of
submits: their keys claimed in its transaction), and the same keyed requests again
(replays: the claim finds the key held and reads it, no job). Each
phase: requests/s, latency p50/p99 and the node's CPU per request (from ``/proc``).
Unkeyed runs before and after the keyed ones, to show the drift of the machine.
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

from tests.bench.procs import EchoService, NodeProcess, create_pg_database, drop_pg_database, node_config, sqlite_url
from tests.bench.stats import ms, percentile
from tests.support import migrated


async def _phase(node: NodeProcess, count: int, clients: int, key: str | None) -> dict[str, Any]:
    """``count`` submits from ``clients`` concurrent clients; ``key``: their keys' prefix."""
    latencies: list[float] = []
    bodies = [json.dumps({"containers": ["echo1"], "data": {"n": i}}).encode() for i in range(count)]
    queue = iter(range(count))
    async with aiohttp.ClientSession(base_url=node.url) as http:

        async def client() -> None:
            for i in queue:
                headers = {"content-type": "application/json"}
                if key is not None:
                    headers["Idempotency-Key"] = f"{key}-{i}"
                began = time.perf_counter()
                async with http.post("/api/jobs", data=bodies[i], headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"submit refused: {response.status}")
                latencies.append(time.perf_counter() - began)

        cpu0, wall0 = node.cpu(), time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        wall, cpu = time.perf_counter() - wall0, node.cpu() - cpu0
    return {
        "per_s": round(count / wall),
        "p50_ms": ms(percentile(latencies, 50)),
        "p99_ms": ms(percentile(latencies, 99)),
        "node_cpu_ms": round(cpu / count * 1000, 3),
    }


async def measure(db: str, count: int, clients: int, workdir: Path) -> dict[str, Any]:
    url = await create_pg_database("jobnode_bench_idem") if db == "postgresql" else sqlite_url(workdir / "idem.db")
    await migrated(url)
    echo = EchoService(workdir).start()  # ready, so that the node is healthy; never called
    node = NodeProcess(workdir, node_config(url, echo.url, containers=1, scheduler=False)).start()
    figures: dict[str, Any] = {"db": db, "count": count, "clients": clients}
    try:
        await _phase(node, 200, 8, None)  # warm-up: connections, prepared statements
        for concurrency in (1, clients):
            run = f"c{concurrency}"
            figures[f"{run} unkeyed"] = await _phase(node, count, concurrency, None)
            figures[f"{run} keyed"] = await _phase(node, count, concurrency, run)
            figures[f"{run} replayed"] = await _phase(node, count, concurrency, run)
            figures[f"{run} unkeyed again"] = await _phase(node, count, concurrency, None)
    finally:
        node.stop()
        echo.stop()
        if db == "postgresql":
            await drop_pg_database(url)
    return figures


@click.command()
@click.option("--db", type=click.Choice(["sqlite", "postgresql", "both"]), default="both")
@click.option("--count", default=2000, help="Submits per phase.")
@click.option("--clients", default=32, help="Concurrent clients of the concurrent phases.")
def main(db: str, count: int, clients: int) -> None:
    for name in ("sqlite", "postgresql") if db == "both" else (db,):
        with tempfile.TemporaryDirectory() as workdir:
            figures = asyncio.run(measure(name, count, clients, Path(workdir)))
        print(f"## {name}: {count} submits per phase")
        for phase, values in figures.items():
            if isinstance(values, dict):
                print(f"{phase:>20}: {values}")


if __name__ == "__main__":
    main()
