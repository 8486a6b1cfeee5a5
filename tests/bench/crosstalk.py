"""What another node's announcements cost a node that nobody waits on (issue 19, item 5).

Every node's step commits announce the jobs they end (``NOTIFY jobnode_ended``, up to 150
ids each), for reads and streams on other nodes that wait for them. A node that heard
them all paid for each one, though nobody there waited: a second node doubled what each
node heard per job of its own. This starts one node of a checkout (``--tree``, else this
one) on a new PostgreSQL database, lets it settle, then measures its CPU for
``--seconds`` with nothing to do, and again while another session sends ``--rate``
announcements of 15 ids a second, as a node ending ~5,000 jobs/s in commits of 15 does.

    python -m tests.bench.crosstalk
    python -m tests.bench.crosstalk --tree /tmp/base --rate 400

Prints one JSON document: the node's CPU (ms a second) in each phase, the announcements
sent a second, and the CPU each cost (µs).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import click

from app.db.signal import JobSignal
from tests.bench.procs import EchoService, NodeProcess, asyncpg_dsn, create_pg_database, drop_pg_database, node_config
from tests.support import migrated

IDS_PER_ANNOUNCEMENT = 15


async def _phase(node: NodeProcess, seconds: float, send: Any | None, rate: float) -> tuple[float, int]:
    """The node's CPU seconds over ``seconds``, and the announcements sent meanwhile."""
    cpu, started, sent = node.cpu(), time.monotonic(), 0
    while time.monotonic() - started < seconds:
        if send is None:
            await asyncio.sleep(0.1)
            continue
        await send()
        sent += 1
        await asyncio.sleep(1 / rate)
    return node.cpu() - cpu, sent


async def run(tree: Path | None, seconds: float, rate: float, url: str | None = None) -> dict[str, Any]:
    """On the database at ``url`` (migrated here), else on a new one, dropped after."""
    created = url is None
    if url is None:
        url = await create_pg_database("jobnode_crosstalk")
    workdir = Path(tempfile.mkdtemp(prefix="jobnode-crosstalk-"))
    echo = EchoService(workdir).start()
    try:
        await migrated(url)
        node = NodeProcess(workdir, node_config(url, echo.url, containers=1), name="node")
        if tree is not None:
            node.tree = tree
        node.start()
        conn = await asyncpg.connect(asyncpg_dsn(url))
        try:
            ids = [str(uuid.uuid4()) for _ in range(IDS_PER_ANNOUNCEMENT)]
            ((channel, payload),) = JobSignal("another-node").ended_notifications(ids)

            async def announce() -> None:
                await conn.execute("SELECT pg_notify($1, $2)", channel, payload)

            await asyncio.sleep(2.0)  # the node's start-up work done
            idle, _ = await _phase(node, seconds, None, rate)
            heard, sent = await _phase(node, seconds, announce, rate)
        finally:
            await conn.close()
            node.stop()
    finally:
        echo.stop()
        if created:
            await drop_pg_database(url)
    return {
        "tree": str(tree or ""),
        "seconds": seconds,
        "idle_cpu_ms_per_s": round(idle / seconds * 1000, 1),
        "announced_cpu_ms_per_s": round(heard / seconds * 1000, 1),
        "announcements_per_s": round(sent / seconds),
        "cpu_us_per_announcement": round((heard - idle) / sent * 1e6, 1) if sent else None,
    }


@click.command()
@click.option("--tree", type=click.Path(path_type=Path), default=None, help="Run the node of this checkout.")
@click.option("--seconds", type=float, default=10.0, show_default=True)
@click.option("--rate", type=float, default=400.0, show_default=True, help="Announcements sent a second (at most).")
def main(tree: Path | None, seconds: float, rate: float) -> None:
    click.echo(json.dumps(asyncio.run(run(tree, seconds, rate))))


if __name__ == "__main__":
    main()
