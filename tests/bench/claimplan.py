"""The claim's plan and latency at scale on PostgreSQL (issue 19, item 4).

    python -m tests.bench.claimplan [--total 10000000] [--backlogs 10000,100000,1000000] [--claims 200]
    python -m tests.bench.claimplan --url postgresql+asyncpg://…/db --keep   # reuse a built database

Builds a database of ``--total`` jobs inside PostgreSQL (``tests/bench/stored.py``: mostly
finished, with their steps), then for each backlog in turn (growing) marks the newest
jobs pending, ``VACUUM ANALYZE``s, and runs the claim of ``JobStore.claim`` (LIMIT 256) as
the node runs it: one asyncpg connection with the node's session settings, the statement
prepared and its generic plan forced (``plan_cache_mode``: PostgreSQL keeps a generic plan
after five executions when it looks no dearer, and asyncpg keeps the statement for the
connection's life). The claim as the node ran it before issue 19 (``BEFORE``: the session
without ``enable_sort = off``) and as it runs it now (``app.db.direct._SESSION``) are run
alternately, on one connection each, each claim committed and its jobs queued again behind
the others (the backlog keeps its size), ``--claims`` times each; p50/p99 per backlog and each plan (``EXPLAIN
(ANALYZE, BUFFERS)``, rolled back) are printed as JSON (``--output FILE`` too). The database
is dropped at the end unless ``--keep``.
"""

from __future__ import annotations

import asyncio
import json
import re
import statistics
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import click

from app.clock import utcnow
from app.db import direct
from app.db.statements.claims import CLAIM
from tests.bench.procs import asyncpg_dsn, create_pg_database, drop_pg_database
from tests.bench.stats import ms, percentile
from tests.bench.stored import ID_LAYOUTS, Layout, build_postgresql
from tests.support import migrated

#: The hot statements' session settings before issue 19 (the claim sorted every pending job).
BEFORE = {"enable_seqscan": "off"}
LIMIT = 256
#: The claim's LIMIT of this run (``--limit``): a node claims up to its free capacity.
_limit = [LIMIT]


def _params() -> dict[str, Any]:
    now = utcnow()
    return {"now": now, "limit": _limit[0], "node": "bench", "lease_until": now + timedelta(seconds=30)}


def variants() -> dict[str, dict[str, str]]:
    """Each variant's session settings (the claim's SQL is the same). Each claim commits on
    its own; ``after`` without waiting for the WAL flush, as the node's claim now does
    (``JobStore.claim``, ``durable=False``)."""
    return {"before": BEFORE, "after": {**direct._SESSION, "synchronous_commit": "off"}}


def claim_args() -> tuple[str, list[Any]]:
    statement = getattr(CLAIM, "postgresql", CLAIM)  # a ``PerDialect`` or one statement
    return statement.asyncpg_args(_params())


async def set_backlog(conn: asyncpg.Connection, total: int, backlog: int) -> None:
    """The newest ``backlog`` jobs pending, the others not."""
    await conn.execute(
        "UPDATE jobs SET status = 'pending', attempts = 0, started_at = NULL, finished_at = NULL "
        "WHERE seq > $1 AND status <> 'pending'",
        total - backlog,
    )
    await conn.execute(
        "UPDATE jobs SET status = 'success', attempts = 1, started_at = run_after, finished_at = run_after "
        "WHERE seq <= $1 AND status = 'pending'",
        total - backlog,
    )
    await conn.execute("VACUUM (ANALYZE) jobs")
    pending = await conn.fetchval("SELECT count(*) FROM jobs WHERE status = 'pending'")
    assert pending == backlog, (pending, backlog)


def _literal(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).upper() if value is not None else "NULL"
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


async def explain(conn: asyncpg.Connection, sql: str, args: list[Any]) -> list[str]:
    """The generic plan as executed, in a transaction rolled back."""
    await conn.execute(f"PREPARE claim AS {sql}")
    try:
        transaction = conn.transaction()
        await transaction.start()
        try:
            arguments = ", ".join(_literal(arg) for arg in args)
            rows = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) EXECUTE claim({arguments})")
        finally:
            await transaction.rollback()
    finally:
        await conn.execute("DEALLOCATE claim")
    return [row[0] for row in rows]


async def latencies(connections: dict[str, asyncpg.Connection], claims: int) -> dict[str, dict[str, Any]]:
    """Each variant ``claims`` times, alternately. Each claim is committed, as the node's,
    and its jobs are then queued again behind the others (untimed): the backlog keeps its
    size, and the head of the claim index holds the entries of the jobs claimed before
    until a vacuum, as on a node draining a backlog."""
    sql, args = claim_args()
    now = args[4]
    statements = {name: await conn.prepare(sql) for name, conn in connections.items()}
    times: dict[str, list[float]] = {name: [] for name in statements}
    for round_ in range(claims + 2):
        order = list(statements) if round_ % 2 == 0 else list(reversed(statements))
        for name in order:
            began = time.perf_counter()
            rows = await statements[name].fetch(*args)
            elapsed = time.perf_counter() - began
            assert len(rows) == _limit[0], (name, len(rows))
            await connections[name].execute(
                "UPDATE jobs SET status = 'pending', attempts = 0, lease_owner = NULL, lease_expires_at = NULL, "
                "started_at = NULL, run_after = $2::timestamptz - interval '1 second' WHERE id = ANY($1::uuid[])",
                [row[0] for row in rows],
                now,
            )
            if round_ >= 2:  # the first rounds warm the cache
                times[name].append(elapsed)
    return {
        name: {
            "claims": len(values),
            "p50_ms": ms(percentile(values, 50)),
            "p99_ms": ms(percentile(values, 99)),
            "mean_ms": ms(sum(values) / len(values)) if values else None,
        }
        for name, values in times.items()
    }


_COUNTERS = {
    "hit": r"Buffers: shared (?:[^\n]*?)hit=(\d+)",
    "read": r"Buffers: shared (?:[^\n]*?)read=(\d+)",
    "dirtied": r"Buffers: shared (?:[^\n]*?)dirtied=(\d+)",
    "written": r"Buffers: shared (?:[^\n]*?)written=(\d+)",
    "wal_records": r"WAL: (?:[^\n]*?)records=(\d+)",
    "wal_fpi": r"WAL: (?:[^\n]*?)fpi=(\d+)",
    "wal_bytes": r"WAL: (?:[^\n]*?)bytes=(\d+)",
    "execution_ms": r"Execution Time: ([\d.]+) ms",
}


async def profile(conn: asyncpg.Connection, claims: int) -> dict[str, Any]:
    """What the slow claims spend: each claim (``after``'s session) run as ``EXPLAIN
    (ANALYZE, BUFFERS, WAL, TIMING OFF)`` of the prepared statement (generic plan) and
    committed, then queued again as in ``latencies``; the medians of its buffers and WAL
    (the top node's counts: the whole statement) for the claims over 5 ms against the others."""
    sql, args = claim_args()
    now = args[4]
    await conn.execute(f"PREPARE claim AS {sql}")
    arguments = ", ".join(_literal(arg) for arg in args)
    rows: list[dict[str, float]] = []
    try:
        for round_ in range(claims + 2):
            began = time.perf_counter()
            plan = "\n".join(
                r[0]
                for r in await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS, WAL, TIMING OFF) EXECUTE claim({arguments})")
            )
            wall = time.perf_counter() - began
            await conn.execute(
                "UPDATE jobs SET status = 'pending', attempts = 0, lease_owner = NULL, lease_expires_at = NULL, "
                "started_at = NULL, run_after = $1::timestamptz - interval '1 second' "
                # EXPLAIN returns no ids: the claimed jobs are the running ones (ix_jobs_lease).
                "WHERE status = 'running' AND lease_owner = 'bench'",
                now,
            )
            if round_ >= 2:
                row = {"wall_ms": wall * 1000}
                for key, pattern in _COUNTERS.items():
                    found = re.search(pattern, plan)
                    row[key] = float(found[1]) if found else 0.0
                rows.append(row)
    finally:
        await conn.execute("DEALLOCATE claim")
    slow = [r for r in rows if r["wall_ms"] > 5.0]
    fast = [r for r in rows if r["wall_ms"] <= 5.0]

    def medians(group: list[dict[str, float]]) -> dict[str, float | None]:
        return {key: (statistics.median(r[key] for r in group) if group else None) for key in rows[0]}

    walls = [r["wall_ms"] / 1000 for r in rows]
    if not rows:
        return {"claims": 0}
    return {
        "claims": len(rows),
        "p50_ms": ms(percentile(walls, 50)),
        "p99_ms": ms(percentile(walls, 99)),
        "mean_ms": ms(sum(walls) / len(walls)),
        "slow": {"count": len(slow), **medians(slow)},
        "fast": {"count": len(fast), **medians(fast)},
        "slowest": sorted(rows, key=lambda r: -r["wall_ms"])[:5],
    }


async def run(
    url: str | None, total: int, backlogs: list[int], claims: int, keep: bool, ids: str, profiled: bool = False
) -> dict[str, Any]:
    built = url is None
    if url is None:
        url = await create_pg_database("jobnode_claimplan")
        await migrated(url)
        click.echo(f"building {total:,} jobs in {url}", err=True)
        await build_postgresql(
            url, Layout(total=total, big_jobs=100_000, pending=min(backlogs), ids=ids), log=click.echo
        )
    result: dict[str, Any] = {"total": total, "limit": _limit[0], "ids": ids if built else None, "backlogs": {}}
    connections = {
        name: await asyncpg.connect(
            asyncpg_dsn(url), server_settings={**settings, "plan_cache_mode": "force_generic_plan"}
        )
        for name, settings in variants().items()
    }
    try:
        for backlog in sorted(backlogs):
            await set_backlog(connections["after"], total, backlog)
            entry: dict[str, Any] = {"latency": await latencies(connections, claims), "plans": {}}
            if profiled:
                entry["profile"] = await profile(connections["after"], claims)
                click.echo(f"{backlog:,} pending, profile: {json.dumps(entry['profile'])}", err=True)
            for name, conn in connections.items():
                entry["plans"][name] = await explain(conn, *claim_args())
            click.echo(f"{backlog:,} pending: {json.dumps(entry['latency'])}", err=True)
            result["backlogs"][backlog] = entry
    finally:
        for conn in connections.values():
            await conn.close()
        if built and not keep:
            await drop_pg_database(url)
        elif keep:
            click.echo(f"kept {url}", err=True)
    return result


@click.command()
@click.option("--url", default=None, help="A database built by an earlier --keep run (else one is built).")
@click.option("--total", default=10_000_000, show_default=True)
@click.option("--backlogs", default="10000,100000,1000000", show_default=True)
@click.option("--claims", default=200, show_default=True, help="Claims per variant and backlog.")
@click.option("--limit", default=LIMIT, show_default=True, help="Jobs per claim (a node's free capacity).")
@click.option(
    "--ids",
    type=click.Choice(ID_LAYOUTS),
    default="v4",
    show_default=True,
    help="The built jobs' ids: random as the node makes them, or time-ordered (UUIDv7, to repeat that experiment).",
)
@click.option("--keep", is_flag=True, help="Keep the database (its URL is printed).")
@click.option("--profile", "profiled", is_flag=True, help="Then each claim under EXPLAIN (ANALYZE, BUFFERS, WAL).")
@click.option("--output", type=click.Path(path_type=Path), default=None)
def main(
    url: str | None,
    total: int,
    backlogs: str,
    claims: int,
    limit: int,
    ids: str,
    keep: bool,
    profiled: bool,
    output: Path | None,
) -> None:
    _limit[0] = limit
    result = asyncio.run(run(url, total, [int(b) for b in backlogs.split(",")], claims, keep, ids, profiled))
    text = json.dumps(result, indent=1)
    if output is not None:
        output.write_text(text + "\n")
    click.echo(text)


if __name__ == "__main__":
    main()
