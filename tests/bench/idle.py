"""Idle time to result as clients see it (issue 19): one client, one job at a time.

The benchmark's idle phase times its own lean client (``tests/bench/http.py``) on one
keep-alive connection. A client as it is usually written uses a general HTTP library,
sometimes a new connection per request, and submits after the node sat idle. This runs
the same one-step echo job (the fast echo service) through several clients, each polling
``GET /api/jobs?id=`` every ``--poll-ms`` or waiting with ``&wait=``, with ``--pauses``
between jobs (a few milliseconds keep the machine warm; hundreds let it go idle), timed
with ``time.perf_counter`` from before the POST to the answer that shows the job ended:

* ``lean``: the benchmark's own client, one keep-alive connection;
* ``aiohttp``: an ``aiohttp.ClientSession``, keep-alive;
* ``aiohttp-new``: the same, a new connection per request (``force_close``);
* ``httpx``, ``httpx-new``: an ``httpx.AsyncClient``, keep-alive and not.

    python -m tests.bench.idle --db postgresql --pauses 5,200
    python -m tests.bench.idle --db sqlite --clients lean,aiohttp --modes wait

Prints one JSON document (``--output FILE`` writes it too): p50/p90/p99 per database,
client, mode and pause. The node runs this checkout (``python -m app.cli serve``).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from tests.bench import load
from tests.bench.http import Connection
from tests.bench.procs import (
    EchoService,
    NodeProcess,
    create_pg_database,
    drop_pg_database,
    json_dump,
    node_config,
    sqlite_url,
)
from tests.bench.stats import ms, percentile
from tests.support import migrated

CONTAINERS = ["echo1"]
CLIENTS = ("lean", "aiohttp", "aiohttp-new", "httpx", "httpx-new")

#: One job through a client: submit ``data``, then poll every ``poll`` seconds (None:
#: wait); returns the job's ended result.
Job = Callable[[dict[str, Any], float | None], Awaitable[dict[str, Any]]]


def _params(job_id: str, poll: float | None) -> dict[str, str]:
    return {"id": job_id} if poll is not None else {"id": job_id, "wait": str(load.WAIT_SECONDS)}


async def _ended(read: Callable[[], Awaitable[list[dict[str, Any]]]], poll: float | None) -> dict[str, Any]:
    while True:
        (result,) = await read()
        if result["status"] != "running":
            return result
        if poll is not None:
            await asyncio.sleep(poll)


def lean_job(connection: Connection) -> Job:
    async def job(data: dict[str, Any], poll: float | None) -> dict[str, Any]:
        job_id = await load.submit_job(connection, CONTAINERS, data)
        result, _ = await load.wait_result(connection, job_id, poll)
        return result

    return job


def aiohttp_job(session: aiohttp.ClientSession) -> Job:
    async def job(data: dict[str, Any], poll: float | None) -> dict[str, Any]:
        async with session.post("/api/jobs", json={"containers": CONTAINERS, "data": data}) as response:
            response.raise_for_status()
            job_id = (await response.json())["id"]

        async def read() -> list[dict[str, Any]]:
            async with session.get("/api/jobs", params=_params(job_id, poll)) as response:
                response.raise_for_status()
                answer: list[dict[str, Any]] = await response.json()
                return answer

        return await _ended(read, poll)

    return job


def httpx_job(client: httpx.AsyncClient) -> Job:
    async def job(data: dict[str, Any], poll: float | None) -> dict[str, Any]:
        response = await client.post("/api/jobs", json={"containers": CONTAINERS, "data": data})
        response.raise_for_status()
        job_id = response.json()["id"]

        async def read() -> list[dict[str, Any]]:
            response = await client.get("/api/jobs", params=_params(job_id, poll))
            response.raise_for_status()
            answer: list[dict[str, Any]] = response.json()
            return answer

        return await _ended(read, poll)

    return job


async def measure(job: Job, poll: float | None, count: int, pause: float, warmup: int = 3) -> dict[str, Any]:
    """``count`` jobs one after the other, ``pause`` seconds apart; p50/p90/p99."""
    latencies: list[float] = []
    for i in range(-warmup, count):
        data = {"idle": i}
        started = time.perf_counter()
        result = await job(data, poll)
        elapsed = time.perf_counter() - started
        load.check_echo(result, data)
        if i >= 0:
            latencies.append(elapsed)
        await asyncio.sleep(pause)
    return {
        "count": len(latencies),
        "p50_ms": ms(percentile(latencies, 50)),
        "p90_ms": ms(percentile(latencies, 90)),
        "p99_ms": ms(percentile(latencies, 99)),
    }


async def run_client(name: str, node: NodeProcess, poll: float | None, count: int, pause: float) -> dict[str, Any]:
    if name == "lean":
        connection = Connection("127.0.0.1", node.port)
        try:
            return await measure(lean_job(connection), poll, count, pause)
        finally:
            connection.close()
    new = name.endswith("-new")
    if name.startswith("aiohttp"):
        connector = aiohttp.TCPConnector(force_close=new)
        async with aiohttp.ClientSession(node.url, connector=connector) as session:
            return await measure(aiohttp_job(session), poll, count, pause)
    limits = httpx.Limits(max_keepalive_connections=0 if new else 20)
    async with httpx.AsyncClient(base_url=node.url, limits=limits) as client:
        return await measure(httpx_job(client), poll, count, pause)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="jobnode-idle-"))
    url = await create_pg_database() if args.db == "postgresql" else sqlite_url(workdir / "jobnode.db")
    rows: list[dict[str, Any]] = []
    try:
        await migrated(url)
        service = EchoService(workdir).start()
        node = NodeProcess(workdir, node_config(url, service.url, containers=1), name="idle")
        try:
            node.start()
            for pause in args.pauses:
                for mode in args.modes:
                    poll = args.poll_ms / 1000 if mode == "poll" else None
                    for client in args.clients:
                        figures = await run_client(client, node, poll, args.count, pause / 1000)
                        row = {"client": client, "mode": mode, "pause_ms": pause, **figures}
                        print(json_dump(row), flush=True)
                        rows.append(row)
        finally:
            node.stop()
            service.stop()
        tracebacks = node.log().count("Traceback")
    finally:
        if args.db == "postgresql":
            await drop_pg_database(url)
    return {"db": args.db, "poll_ms": args.poll_ms, "tracebacks": tracebacks, "results": rows}


def _list(kind: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    return lambda text: [kind(item) for item in text.split(",") if item]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--clients", type=_list(str), default=list(CLIENTS), help=",".join(CLIENTS))
    parser.add_argument("--modes", type=_list(str), default=["poll", "wait"], help="poll,wait")
    parser.add_argument("--pauses", type=_list(float), default=[5.0, 200.0], help="ms between jobs")
    parser.add_argument("--count", type=int, default=100, help="jobs per client, mode and pause")
    parser.add_argument("--poll-ms", type=float, default=1.0)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    if unknown := set(args.clients) - set(CLIENTS) or set(args.modes) - {"poll", "wait"}:
        parser.error(f"unknown: {', '.join(sorted(unknown))}")
    text = json_dump(asyncio.run(run(args)))
    print(text)
    if args.output is not None:
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
