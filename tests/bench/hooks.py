"""The webhooks phase of the benchmark (issue 18): job throughput with and without
webhooks to a local receiver, and the delay from a job's end to its delivery.

    python -m tests.bench.hooks --db postgresql              # or sqlite
    python -m tests.bench.hooks --db postgresql --rate 1000 --seconds 10

It starts the echo service (``tests/bench/echo.py``), a webhook receiver (an aiohttp server
in a process of its own: ``python -m tests.bench.hooks receive --port P``, answering 200
and counting) and a node (one container, ``webhooks.allowed_hosts: ["127.0.0.1"]``) on a
fresh database for each run, then:

* saturation: N jobs submitted as fast as 8 clients can (batches of 100), without, with
  a webhook on every job (then until every delivery is done), without and with again,
  each on a fresh database and node after a warm-up of 2,000 jobs: jobs/s from the first
  job's creation to the last one's end;
* paced: jobs submitted at ``--rate`` a second (batches of 50 every 50 ms) for
  ``--seconds``, every job with a webhook: whether the node kept up, and each delivery's
  delay from the job's end (``webhook_deliveries.created_at``) to its 2xx
  (``delivered_at``), p50/p99/max, read from the database afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from sqlalchemy import func, select

from app.db.engine import Database
from app.db.models import Job, WebhookDelivery
from tests.bench.procs import (
    EchoService,
    NodeProcess,
    create_pg_database,
    drop_pg_database,
    free_port,
    node_config,
    sqlite_url,
    tree_cpu,
)
from tests.bench.stats import ms, percentile
from tests.support import migrated


def say(message: str) -> None:
    print(f"[hooks {time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- the receiver ----------------------------------------------------------------------


def receive(port: int) -> None:
    received = {"count": 0}

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        received["count"] += 1
        return web.Response(text="ok")

    async def count(_request: web.Request) -> web.Response:
        return web.json_response(received)

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_get("/count", count)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


class Receiver:
    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.log = directory / "receiver.log"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> Receiver:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.bench.hooks", "receive", "--port", str(self.port)
        )
        for _ in range(200):
            try:
                async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{self.port}/count"):
                    return self
            except aiohttp.ClientError:
                await asyncio.sleep(0.05)
        raise RuntimeError("receiver did not start")

    def cpu(self) -> float:
        assert self.process is not None
        return tree_cpu(self.process.pid)

    async def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            await self.process.wait()


# -- the load --------------------------------------------------------------------------


async def _submit(http: aiohttp.ClientSession, url: str, first: int, size: int, webhook: str | None) -> None:
    body = [{"containers": ["echo1"], "data": {"n": first + i}} for i in range(size)]
    if webhook is not None:
        for item in body:
            item["webhook"] = webhook
    async with http.post(f"{url}/api/jobs/batch", json=body) as response:
        answers = await response.json()
        if response.status != 200 or any("id" not in a for a in answers):
            raise RuntimeError(f"batch refused: {response.status} {str(answers)[:200]}")


async def _until_finished(database: Database, total: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with database.read() as conn:
            done = (
                await conn.execute(select(func.count()).select_from(Job).where(Job.finished_at.is_not(None)))
            ).scalar_one()
        if done >= total:
            return
        await asyncio.sleep(0.2)
    raise RuntimeError("jobs not finished in time")


async def _until_delivered(database: Database, total: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with database.read() as conn:
            done = (
                await conn.execute(
                    select(func.count()).select_from(WebhookDelivery).where(WebhookDelivery.status == "delivered")
                )
            ).scalar_one()
        if done >= total:
            return
        await asyncio.sleep(0.2)
    raise RuntimeError("deliveries not delivered in time")


async def _span(database: Database, since_seq: int) -> tuple[int, float]:
    async with database.read() as conn:
        count, first, last = (
            await conn.execute(
                select(func.count(), func.min(Job.created_at), func.max(Job.finished_at)).where(Job.seq > since_seq)
            )
        ).one()
    return count, (last - first).total_seconds()


async def _max_seq(database: Database) -> int:
    async with database.read() as conn:
        return int((await conn.execute(select(func.coalesce(func.max(Job.seq), 0)))).scalar_one())


async def saturation(database: Database, node: str, jobs: int, webhook: str | None) -> dict[str, Any]:
    since = await _max_seq(database)
    batches = list(range(0, jobs, 100))
    async with aiohttp.ClientSession() as http:

        async def client(k: int) -> None:
            for first in batches[k::8]:
                await _submit(http, node, first, min(100, jobs - first), webhook)

        await asyncio.gather(*(client(k) for k in range(8)))
    await _until_finished(database, since + jobs)
    count, span = await _span(database, since)
    return {"jobs": count, "seconds": round(span, 2), "jobs_per_s": round(count / span)}


async def paced(database: Database, node: str, rate: int, seconds: float, webhook: str) -> dict[str, Any]:
    since = await _max_seq(database)
    async with database.read() as conn:
        delivered_before = (await conn.execute(select(func.count()).select_from(WebhookDelivery))).scalar_one()
    per_tick, tick = max(1, rate // 20), 0.05
    ticks = int(seconds / tick)
    began = time.monotonic()
    async with aiohttp.ClientSession() as http:
        pending: list[asyncio.Task[None]] = []
        for k in range(ticks):
            pending.append(asyncio.create_task(_submit(http, node, k * per_tick, per_tick, webhook)))
            await asyncio.sleep(max(0.0, began + (k + 1) * tick - time.monotonic()))
        await asyncio.gather(*pending)
    submitted = ticks * per_tick
    await _until_finished(database, since + submitted)
    await _until_delivered(database, delivered_before + submitted)
    async with database.read() as conn:
        rows = (
            await conn.execute(
                select(WebhookDelivery.created_at, WebhookDelivery.delivered_at, WebhookDelivery.attempts)
                .join(Job, Job.id == WebhookDelivery.job_id)
                .where(Job.seq > since)
            )
        ).all()
    delays = [(delivered - created).total_seconds() for created, delivered, _ in rows]
    count, span = await _span(database, since)
    return {
        "rate_asked": per_tick * 20,
        "jobs": count,
        "jobs_per_s": round(count / span),
        "deliveries": len(rows),
        "attempts_over_1": sum(1 for *_, attempts in rows if attempts > 1),
        "delay_p50_ms": ms(percentile(delays, 50)),
        "delay_p99_ms": ms(percentile(delays, 99)),
        "delay_max_ms": round(max(delays, default=float("nan")) * 1000, 1),
    }


@contextlib.asynccontextmanager
async def fresh_node(
    db: str, workdir: Path, echo: EchoService, name: str
) -> AsyncIterator[tuple[Database, NodeProcess]]:
    """A node on a database of its own: every run starts from the same empty tables."""
    url = await create_pg_database("jobnode_bench_hooks") if db == "postgresql" else sqlite_url(workdir / f"{name}.db")
    await migrated(url)
    config = node_config(url, echo.url, containers=1)
    config["webhooks"] = {"allowed_hosts": ["127.0.0.1"]}
    node = NodeProcess(workdir, config, name).start()
    database = Database(url)
    try:
        yield database, node
    finally:
        tracebacks = node.log().count("Traceback")
        node.stop()
        await database.dispose()
        if db == "postgresql":
            await drop_pg_database(url)
        if tracebacks:
            raise RuntimeError(f"{tracebacks} tracebacks in the log of node {name}")


async def run(db: str, jobs: int, rate: int, seconds: float, workdir: Path) -> dict[str, Any]:
    echo = EchoService(workdir).start()
    receiver = await Receiver(workdir).start()
    results: dict[str, Any] = {"db": db}
    try:
        for label, webhook in (
            ("without", None),
            ("with", receiver.url),
            ("without_again", None),
            ("with_again", receiver.url),
        ):
            async with fresh_node(db, workdir, echo, label) as (database, node):
                await saturation(database, node.url, 2000, webhook)  # warm-up
                if webhook is not None:
                    await _until_delivered(database, 2000)
                node_cpu, receiver_cpu = node.cpu(), receiver.cpu()
                result = await saturation(database, node.url, jobs, webhook)
                if webhook is not None:  # the deliveries left when the last job ended
                    began = time.monotonic()
                    await _until_delivered(database, 2000 + jobs)
                    result["deliveries_done_after_s"] = round(time.monotonic() - began, 1)
                # CPU per job, the deliveries included: the node's, and the receiver's.
                result["node_cpu_ms_per_job"] = round((node.cpu() - node_cpu) / jobs * 1000, 3)
                result["receiver_cpu_ms_per_job"] = round((receiver.cpu() - receiver_cpu) / jobs * 1000, 3)
            results[f"saturation_{label}_webhooks"] = result
            say(f"saturation {label}: {result}")
        async with fresh_node(db, workdir, echo, "paced") as (database, node):
            await saturation(database, node.url, 2000, receiver.url)  # warm-up
            await _until_delivered(database, 2000)
            results["paced_with_webhooks"] = await paced(database, node.url, rate, seconds, receiver.url)
        say(f"paced: {results['paced_with_webhooks']}")
    finally:
        await receiver.stop()
        echo.stop()
    return results


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "receive":
        parser = argparse.ArgumentParser()
        parser.add_argument("receive")
        parser.add_argument("--port", type=int, required=True)
        receive(parser.parse_args().port)
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="postgresql")
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs per saturation run")
    parser.add_argument("--rate", type=int, default=1000, help="jobs/s of the paced run")
    parser.add_argument("--seconds", type=float, default=10, help="length of the paced run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="jobnode-bench-hooks-") as workdir:
        results = asyncio.run(run(args.db, args.jobs, args.rate, args.seconds, Path(workdir)))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
