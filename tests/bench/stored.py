"""A node with millions of jobs stored: how fast do the read endpoints stay?

The rows are generated *inside the database* (``INSERT … SELECT`` over
``generate_series`` on PostgreSQL, a recursive CTE on SQLite), in a dedicated database
made for the purpose, with the secondary indexes and constraints dropped during the load
and rebuilt after it. That is several times faster than generating tuples in Python for
COPY (~7 µs a row here, 70 s per 10 M rows before the database does any work).

What is stored (N jobs, oldest first):
* one client, ``127.0.0.2``, owns every ``N/big_jobs``-th job: 100,000 jobs at N = 10 M;
  the benchmark reads as that client (its requests leave from 127.0.0.2);
* the rest belong to 10,000 other clients (documentation addresses ``2001:db8::x``);
* the newest N/1000 jobs are pending (the big client has ~100 of them); of the others,
  about 1 % failed (an error step), the rest succeeded (an output step), one container each.

Then, with a node started on that database (scheduler off, so the pending backlog stays
put), p50/p99 of: ``GET /api/jobs?id=`` (one of the big client's jobs), the big client's
whole list (100,000 ids in one page) and a keyset page of 1,000, ``pending=true`` and
``/info``. And the plan of the claim query of ``app.jobs.transitions.JobStore.claim``,
compiled for the dialect, shown to use its index.
"""

from __future__ import annotations

import asyncio
import random
import re
import sqlite3
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import event, text

from app.clock import utcnow
from app.db.engine import Database
from app.db.models import Job, JobStep
from app.db.statements.claims import CLAIM
from app.jobs.transitions import JobStore
from tests.bench.http import Connection
from tests.bench.load import OpFailed, get_latency
from tests.bench.procs import NodeProcess, asyncpg_dsn

BIG_CLIENT = "127.0.0.2"
OTHER_CLIENTS = 10_000
HISTORY = timedelta(days=7)


#: How the stored jobs' ids are made on PostgreSQL: ``v4`` random, as the node makes them
#: (``app.jobs.rows.new_job_id``); ``v7`` time-ordered (RFC 9562: the job's creation time in
#: ms, then random bits), which the node does not make: kept to repeat the measurement of
#: "Job ids in time order, tried and left out" (README). SQLite ignores it (see ``_SQLITE_UUID``).
ID_LAYOUTS = ("v4", "v7")


@dataclass(frozen=True)
class Layout:
    total: int
    big_jobs: int
    pending: int
    ids: str = "v4"

    @classmethod
    def for_total(cls, total: int) -> Layout:
        big_jobs = max(1, min(100_000, total // 10))
        return cls(total=total, big_jobs=big_jobs, pending=max(1, total // 1000))

    @property
    def stride(self) -> int:
        return max(1, self.total // self.big_jobs)

    @property
    def first_pending(self) -> int:
        return self.total - self.pending + 1


# -- the rows, column by column ----------------------------------------------------------
# Each table column gets a SQL expression over ``i`` (1..N, the job's seq) and ``t`` (its
# creation time). A column added later with a default or NULL allowed is left out; one
# without either must be added here (the build stops and names it).


def _job_columns(dialect: str, layout: Layout) -> dict[str, str]:
    pg = dialect == "postgresql"
    pending = f"i >= {layout.first_pending}"
    failed = "i % 97 = 1"
    other_client = ("'2001:db8::' || to_hex(i % {n})" if pg else "'2001:db8::' || printf('%x', i % {n})").format(
        n=OTHER_CLIENTS
    )
    # SQLite: one strftime per row (the job ran at once, in no time) keeps the load fast.
    finished_at = "t + interval '20 milliseconds'" if pg else "ts"
    started_at = "t + interval '5 milliseconds'" if pg else "ts"
    return {
        "seq": "i",
        "id": (pg_job_id(layout.ids, "t") if pg else _SQLITE_UUID),
        "client": f"CASE WHEN i % {layout.stride} = 0 AND i / {layout.stride} <= {layout.big_jobs} "
        f"THEN '{BIG_CLIENT}' ELSE {other_client} END",
        "source": "'offchain'",
        "containers": "'[\"echo1\"]'" + ("::jsonb" if pg else ""),
        "input": ("jsonb_build_object('n', i)" if pg else "json_object('n', i)"),
        "requires_proof": "false" if pg else "0",
        "status": f"CASE WHEN {pending} THEN 'pending' WHEN {failed} THEN 'failed' ELSE 'success' END",
        "attempts": f"CASE WHEN {pending} THEN 0 ELSE 1 END",
        "stream": "false" if pg else "0",
        "lease_owner": "NULL",
        "lease_expires_at": "NULL",
        "run_after": "t" if pg else "ts",
        "created_at": "t" if pg else "ts",
        "started_at": f"CASE WHEN {pending} THEN NULL ELSE {started_at} END",
        "finished_at": f"CASE WHEN {pending} THEN NULL ELSE {finished_at} END",
    }


def _step_columns(dialect: str) -> dict[str, str]:
    pg = dialect == "postgresql"
    return {
        "job_id": "j.id",
        "position": "0",
        "container": "'echo1'",
        "output": (
            "CASE WHEN j.status = 'success' THEN jsonb_build_object('n', j.seq) END"
            if pg
            else "CASE WHEN j.status = 'success' THEN json_object('n', j.seq) END"
        ),
        "error": "CASE WHEN j.status = 'failed' THEN 'HTTP 500: {\"detail\": \"boom\"}' END",
        "attempt": "1",
        "node": "'bench'",
        "started_at": "j.started_at",
        "finished_at": "j.finished_at",
    }


def pg_job_id(ids: str, created: str) -> str:
    """PostgreSQL: a job id of the layout ``ids`` (``ID_LAYOUTS``) for a job created at
    ``created`` (a timestamptz expression): ``v4`` random, as ``new_job_id`` makes them;
    ``v7`` a random UUID with the creation time's unix ms in its first 6 bytes and version 7,
    built in SQL so that the experiment needs no node making such ids."""
    if ids == "v4":
        return "gen_random_uuid()"
    if ids != "v7":
        raise ValueError(f"unknown id layout {ids!r} (one of {ID_LAYOUTS})")
    return (
        "encode(overlay(set_byte(uuid_send(gen_random_uuid()), 6, 112 + (random() * 16)::int % 16) "
        f"placing substring(int8send(floor(extract(epoch FROM {created}) * 1000)::bigint) FROM 3) FROM 1 FOR 6), "
        "'hex')::uuid"
    )


# SQLite: a time-ordered UUID (the layout of UUIDv7: the job's number in the high 48 bits,
# random below) in canonical text form, from the row's ``i`` and ``h`` (18 random hex
# digits). SQLite cannot drop the unique index on ``jobs.id`` during the load, and
# random ids would cost ~10 µs a row in B-tree inserts; ordered ids append instead
# (whatever ``Layout.ids`` says: it applies to PostgreSQL).
_SQLITE_UUID = (
    "printf('%08x-%04x-7', i / 65536, i % 65536) || substr(h, 1, 3) || '-' || "
    "substr('89ab', 1 + (abs(random()) % 4), 1) || substr(h, 4, 3) || '-' || substr(h, 7, 12)"
)


def _sqlite_time(micros: str) -> str:
    """SQLAlchemy's SQLite DATETIME text (``YYYY-MM-DD HH:MM:SS.ffffff``) from epoch µs."""
    return (
        f"(strftime('%Y-%m-%d %H:%M:%S', ({micros}) / 1000000, 'unixepoch') || printf('.%06d', ({micros}) % 1000000))"
    )


def _columns_for(table: Any, known: dict[str, str]) -> tuple[list[str], list[str]]:
    names, expressions = [], []
    for column in table.columns:
        if column.name in known:
            names.append(column.name)
            expressions.append(known[column.name])
        elif not (
            column.nullable
            or column.default is not None
            or column.server_default is not None
            or column is table.autoincrement_column
        ):
            raise RuntimeError(f"tests/bench/stored.py does not know how to fill {table.name}.{column.name}")
    return names, expressions


# -- PostgreSQL ------------------------------------------------------------------------------


async def build_postgresql(url: str, layout: Layout, log: Any = print) -> dict[str, float]:
    """Fill a migrated, empty database. Returns the time each stage took (s)."""
    import asyncpg

    timings: dict[str, float] = {}
    dsn = asyncpg_dsn(url)
    conn = await asyncpg.connect(dsn)
    try:
        # Before the foreign keys are dropped: the tables that lead to jobs and job_steps.
        referencing = await conn.fetch(
            "WITH RECURSIVE r(tbl, depth) AS (SELECT conrelid, 1 FROM pg_constraint WHERE contype = 'f' "
            "AND confrelid IN ('jobs'::regclass, 'job_steps'::regclass) "
            "AND conrelid NOT IN ('jobs'::regclass, 'job_steps'::regclass) "
            "UNION ALL SELECT c.conrelid, r.depth + 1 FROM pg_constraint c JOIN r ON c.confrelid = r.tbl "
            "WHERE c.contype = 'f') "
            "SELECT tbl::regclass::text AS tbl FROM r GROUP BY tbl ORDER BY max(depth) DESC"
        )
        started = time.monotonic()
        constraints = await conn.fetch(
            "SELECT conrelid::regclass::text AS tbl, conname, contype, pg_get_constraintdef(oid) AS def "
            "FROM pg_constraint WHERE (conrelid IN ('jobs'::regclass, 'job_steps'::regclass) "
            "AND contype IN ('u', 'f', 'c', 'x')) "
            # Other tables' foreign keys to them (step attempts, webhooks) hold their unique indexes.
            "OR (confrelid IN ('jobs'::regclass, 'job_steps'::regclass) AND contype = 'f') "
            "ORDER BY contype = 'f' DESC"
        )
        for row in constraints:
            await conn.execute(f'ALTER TABLE {row["tbl"]} DROP CONSTRAINT "{row["conname"]}"')
        indexes = await conn.fetch(
            "SELECT i.indexrelid::regclass::text AS name, pg_get_indexdef(i.indexrelid) AS def "
            "FROM pg_index i WHERE i.indrelid IN ('jobs'::regclass, 'job_steps'::regclass) AND NOT i.indisprimary"
        )
        for row in indexes:
            await conn.execute(f'DROP INDEX "{row["name"]}"')
        # No WAL for the bulk rows (a benchmark database, dropped at the end; reads do not
        # touch the WAL, so they run as on a logged table). The (empty) tables whose foreign
        # keys lead to them are unlogged first, those that reference others first: a logged
        # table cannot reference an unlogged one.
        for row in referencing:
            await conn.execute(f"ALTER TABLE {row['tbl']} SET UNLOGGED")
        await conn.execute("ALTER TABLE job_steps SET UNLOGGED")
        await conn.execute("ALTER TABLE jobs SET UNLOGGED")
        timings["drop_indexes_s"] = time.monotonic() - started
    finally:
        await conn.close()

    names, expressions = _columns_for(Job.__table__, _job_columns("postgresql", layout))
    base = datetime.now(UTC) - HISTORY - timedelta(minutes=5)
    spacing_us = HISTORY / timedelta(microseconds=1) / layout.total
    insert_jobs = (
        f"INSERT INTO jobs ({', '.join(names)}) SELECT {', '.join(expressions)} "
        f"FROM (SELECT i, $3::timestamptz + make_interval(secs => i * {spacing_us / 1e6!r}) AS t "
        f"FROM generate_series($1::bigint, $2::bigint) AS i) AS g"
    )
    step_names, step_expressions = _columns_for(JobStep.__table__, _step_columns("postgresql"))
    insert_steps = (
        f"INSERT INTO job_steps ({', '.join(step_names)}) SELECT {', '.join(step_expressions)} "
        f"FROM jobs j WHERE j.seq BETWEEN $1 AND $2 AND j.status <> 'pending' ORDER BY j.seq"
    )

    async def in_parallel(sql: str, parts: int, *extra: Any) -> None:
        chunk = -(-layout.total // parts)

        async def part(lo: int, hi: int) -> None:
            c = await asyncpg.connect(dsn)
            try:
                await c.execute("SET synchronous_commit = off")
                await c.execute(sql, lo, hi, *extra)
            finally:
                await c.close()

        await asyncio.gather(*(part(lo, min(layout.total, lo + chunk - 1)) for lo in range(1, layout.total + 1, chunk)))

    started = time.monotonic()
    await in_parallel(insert_jobs, 2, base)
    timings["insert_jobs_s"] = time.monotonic() - started
    log(f"    {layout.total:,} jobs inserted in {timings['insert_jobs_s']:.1f} s")
    started = time.monotonic()
    await in_parallel(insert_steps, 2)
    timings["insert_steps_s"] = time.monotonic() - started
    log(f"    steps inserted in {timings['insert_steps_s']:.1f} s")

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SET maintenance_work_mem = '1GB'")
        started = time.monotonic()
        for row in indexes:
            await conn.execute(row["def"])
        for row in reversed(constraints):  # unique before the foreign keys that need them
            # The generated steps reference their jobs by construction: the foreign key is
            # put back as it was, without re-checking 10 M rows (NOT VALID).
            suffix = " NOT VALID" if row["contype"] == "f" else ""
            await conn.execute(f'ALTER TABLE {row["tbl"]} ADD CONSTRAINT "{row["conname"]}" {row["def"]}{suffix}')
        timings["rebuild_indexes_s"] = time.monotonic() - started
        log(f"    indexes and constraints rebuilt in {timings['rebuild_indexes_s']:.1f} s")
        for table in ("jobs", "job_steps"):
            await conn.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'seq'), (SELECT max(seq) FROM {table}))"
            )
        started = time.monotonic()
        await conn.execute("VACUUM (ANALYZE) jobs")
        await conn.execute("VACUUM (ANALYZE) job_steps")
        timings["vacuum_analyze_s"] = time.monotonic() - started
        size = await conn.fetchval("SELECT pg_database_size(current_database())")
        timings["database_mb"] = size / 2**20
    finally:
        await conn.close()
    return timings


# -- SQLite ---------------------------------------------------------------------------------


def build_sqlite(path: Path, layout: Layout, log: Any = print) -> dict[str, float]:
    """Fill a migrated, empty SQLite file (stdlib sqlite3, one big transaction per table)."""
    timings: dict[str, float] = {}
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for pragma in (
            "journal_mode=WAL",
            "synchronous=OFF",
            "cache_size=-4000000",
            "temp_store=MEMORY",
            "foreign_keys=OFF",
        ):
            conn.execute(f"PRAGMA {pragma}")
        indexes = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL "
            "AND tbl_name IN ('jobs', 'job_steps')"
        ).fetchall()
        for name, _sql in indexes:
            conn.execute(f'DROP INDEX "{name}"')

        names, expressions = _columns_for(Job.__table__, _job_columns("sqlite", layout))
        base_us = int((datetime.now(UTC) - HISTORY - timedelta(minutes=5)).timestamp() * 1_000_000)
        spacing_us = int(HISTORY / timedelta(microseconds=1) / layout.total)
        insert_jobs = (
            f"WITH RECURSIVE s(i) AS (SELECT ? UNION ALL SELECT i + 1 FROM s WHERE i < ?), "
            f"g AS MATERIALIZED (SELECT i, lower(hex(randomblob(9))) AS h, "
            f"{_sqlite_time(f'{base_us} + i * {spacing_us}')} AS ts FROM s) "
            f"INSERT INTO jobs ({', '.join(names)}) SELECT {', '.join(expressions)} FROM g"
        )

        def in_chunks(sql: str, chunk: int = 1_000_000) -> float:
            """Run ``sql`` over seq ranges of ``chunk`` rows, one transaction each; seconds taken."""
            started = time.monotonic()
            for lo in range(1, layout.total + 1, chunk):
                conn.execute("BEGIN")
                conn.execute(sql, (lo, min(layout.total, lo + chunk - 1)))
                conn.execute("COMMIT")
            return time.monotonic() - started

        timings["insert_jobs_s"] = in_chunks(insert_jobs)
        log(f"    {layout.total:,} jobs inserted in {timings['insert_jobs_s']:.1f} s")

        step_names, step_expressions = _columns_for(JobStep.__table__, _step_columns("sqlite"))
        insert_steps = (
            f"INSERT INTO job_steps ({', '.join(step_names)}) SELECT {', '.join(step_expressions)} "
            f"FROM jobs j WHERE j.seq BETWEEN ? AND ? AND j.status <> 'pending' ORDER BY j.seq"
        )
        timings["insert_steps_s"] = in_chunks(insert_steps)
        log(f"    steps inserted in {timings['insert_steps_s']:.1f} s")

        started = time.monotonic()
        for _name, sql in indexes:
            conn.execute(sql)
        timings["rebuild_indexes_s"] = time.monotonic() - started
        log(f"    indexes rebuilt in {timings['rebuild_indexes_s']:.1f} s")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    timings["database_mb"] = path.stat().st_size / 2**20
    return timings


# -- what the benchmark reads ---------------------------------------------------------------


async def big_client_ids(database: Database) -> list[str]:
    """The big client's job ids, oldest first (through its own index)."""
    async with database.read() as conn:
        rows = await conn.execute(
            text("SELECT id FROM jobs WHERE client = :client ORDER BY seq"), {"client": BIG_CLIENT}
        )
        return [str(row[0]) for row in rows]


async def measure_reads(
    node: NodeProcess, ids: list[str], layout: Layout, *, samples: int, time_limit: float, seed: int = 5
) -> dict[str, Any]:
    rng = random.Random(seed)
    connection = Connection("127.0.0.1", node.port, local_address=BIG_CLIENT)

    def one_job(body: Any) -> None:
        if len(body) != 1 or body[0]["status"] not in ("running", "success", "failed"):
            raise OpFailed(f"unexpected body for one id: {str(body)[:120]}")

    def whole_list(body: Any) -> None:
        if len(body) != len(ids):
            raise OpFailed(f"list has {len(body)} ids, expected {len(ids)}")

    def page(body: Any) -> None:
        if not 0 < len(body) <= 1000:
            raise OpFailed(f"page has {len(body)} ids")

    def pending(body: Any) -> None:
        if not isinstance(body, list) or len(body) > layout.pending:
            raise OpFailed(f"pending list has {len(body)} ids")

    def info(body: Any) -> None:
        if body["pending"]["offchain"] != layout.pending:
            raise OpFailed(f"/info pending {body['pending']} (expected {layout.pending} offchain)")

    page_cursors = ids[: max(1, len(ids) - 1000)]
    measures = {
        "get_by_id": (
            "GET /api/jobs?id=<one of the client's jobs>",
            lambda i: f"/api/jobs?id={rng.choice(ids)}",
            one_job,
            samples,
        ),
        "list_one_page": (
            f"GET /api/jobs: the client's {len(ids):,} ids in one page",
            lambda i: "/api/jobs",
            whole_list,
            max(20, samples // 10),
        ),
        "list_page_1000": (
            "GET /api/jobs?limit=1000&after=<random cursor> (keyset page)",
            lambda i: f"/api/jobs?limit=1000&after={rng.choice(page_cursors)}",
            page,
            samples,
        ),
        "pending": ("GET /api/jobs?pending=true", lambda i: "/api/jobs?pending=true", pending, samples),
        "info": ("GET /info", lambda i: "/info", info, samples),
    }
    results: dict[str, Any] = {}
    try:
        for key, (label, target, check, count) in measures.items():
            result = await get_latency(connection, target, count=count, time_limit=time_limit, check=check)
            results[key] = {"request": label, **result}
    finally:
        connection.close()
    return results


# -- the claim query's plan -----------------------------------------------------------------

CLAIM_INDEX = "ix_jobs_claim"


async def explain_claim(url: str) -> dict[str, Any]:
    """The claim statement's plan on the stored database: EXPLAIN ANALYZE in a transaction
    that is rolled back on PostgreSQL, EXPLAIN QUERY PLAN on SQLite."""
    database = Database(url)
    try:
        statement = CLAIM.pick(database).statement
        params = JobStore(database, "bench", 30.0).claim_params(256, utcnow())
        compiled_sql = str(statement.compile(dialect=database.writer.dialect))
        prefix = "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " if database.is_postgresql else "EXPLAIN QUERY PLAN "

        def explain(
            _conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _executemany: bool
        ) -> tuple[str, Any]:
            return prefix + statement, parameters

        async with database.writer.connect() as conn:
            # SQLAlchemy compiles and binds the real statement; the hook only prefixes it.
            event.listen(conn.sync_connection, "before_cursor_execute", explain, retval=True)
            transaction = await conn.begin()
            try:
                cursor = (await conn.execute(statement, params)).cursor
                rows = cursor.fetchall() if cursor is not None else []
            finally:
                await transaction.rollback()
                event.remove(conn.sync_connection, "before_cursor_execute", explain)
        if database.is_postgresql:
            plan = [row[0] for row in rows]
        else:
            plan = [f"{row[0]}|{row[1]}| {row[3]}" for row in rows]
    finally:
        await database.dispose()
    used = []
    for line in plan:
        for name in _INDEX_IN_PLAN.findall(line):
            if name not in used:
                used.append(name)
    full_scan = [line for line in plan if re.search(r"Seq Scan on jobs\b|\bSCAN jobs\b(?! USING)", line)]
    ordered = any(
        re.search(rf"(?:Index (?:Only )?Scan(?: Backward)? using|USING (?:COVERING )?INDEX) {CLAIM_INDEX}\b", line)
        for line in plan
    )
    sorts = any(re.search(r"(?:^|->)\s*Sort\b|TEMP B-TREE FOR ORDER BY", line.strip()) for line in plan)
    execution = next((float(m[1]) for line in plan if (m := re.search(r"Execution Time: ([\d.]+) ms", line))), None)
    return {
        "sql": compiled_sql,
        "plan": plan,
        "index": CLAIM_INDEX,
        "indexes_used": used,
        "uses_index": CLAIM_INDEX in used and not full_scan,
        # The index read in its order, so that LIMIT stops the scan early: no sort of every pending row.
        "ordered_index_scan": ordered and not sorts and not full_scan,
        "execution_ms": execution,
    }


_INDEX_IN_PLAN = re.compile(
    r"(?:Index (?:Only )?Scan(?: Backward)? using|Bitmap Index Scan on|USING (?:COVERING )?INDEX)"
    r" (\w+)"
)
