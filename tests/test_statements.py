"""Every statement of ``app.db.statements``: each has an example here (one scenario that
uses them all, with their answers), and each is served by an index: EXPLAIN on PostgreSQL
with a realistic table, as the node plans it, and on SQLite. ``test_statement_drivers``
runs the scenario through each driver."""

from __future__ import annotations

import asyncio
import importlib
import itertools
import pkgutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from sqlalchemy.dialects import sqlite

import app.db.statements
from app.db import direct
from app.db.direct import PerDialect, RowsInsert, Shapes, Statement
from app.db.engine import Database
from app.db.models import JobStatus
from app.db.signal import CHANNEL, ENDED_CHANNEL
from app.db.statements import claims, submits
from app.jobs import transitions
from tests.support import create_pg_database, drop_pg_database, migrated, unavailable

# -- the registry ---------------------------------------------------------------------------------


def registry() -> dict[str, Statement | RowsInsert]:
    """Every statement of every module of ``app.db.statements``, by a name that says where
    it is (a factory's shapes and a statement's dialect forms each on their own)."""
    found: dict[str, Statement | RowsInsert] = {}
    for info in pkgutil.iter_modules(app.db.statements.__path__):
        module = importlib.import_module(f"app.db.statements.{info.name}")
        for attribute, value in vars(module).items():
            name = f"{info.name}.{attribute}"
            if isinstance(value, Statement):
                found[name] = value
            elif isinstance(value, PerDialect):
                found[f"{name}.postgresql"] = value.postgresql
                found[f"{name}.sqlite"] = value.sqlite
            elif isinstance(value, RowsInsert):
                found[name] = value
            elif isinstance(value, Shapes) and value.__module__ == module.__name__:
                found.update({f"{name}{args!r}": statement for args, statement in value.all().items()})
    return found


# -- the examples: one scenario that uses every statement, with what each answers -------------------

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
LEASE = NOW + timedelta(seconds=30)
NODE, OTHER_NODE = "node-1", "node-2"
A, B = "10.0.0.1", "10.0.0.2"
J1, J2, J3, J4, J5, J6, J7 = (str(uuid.UUID(int=n, version=4)) for n in range(1, 8))
UNICODE = "ünïcødé ✓ 𝄞 — \u2028 'quoted' \"double\" \\"
J1_INPUT = {"text": UNICODE, "none": None, "list": [1, None, "x", {"deep": [True, 1.5]}]}
STEP_OUTPUT = {"a": UNICODE, "n": None}


def job_row(job_id: str, client: str, minutes_ago: int, **columns: Any) -> dict[str, Any]:
    """A new job's row (``INSERT_JOBS``'s columns), pending unless ``columns`` say otherwise."""
    at = NOW - timedelta(minutes=minutes_ago)
    row = {
        "id": job_id,
        "client": client,
        "source": "offchain",
        "containers": ["first", "second"],
        "input": {"n": minutes_ago},
        "requires_proof": False,
        "status": JobStatus.PENDING,
        "attempts": 0,
        "stream": False,
        "lease_owner": None,
        "lease_expires_at": None,
        "run_after": at,
        "created_at": at,
        "started_at": None,
    }
    assert tuple(row) == submits.INSERT_JOBS.columns
    return {**row, **columns}


def step_row(job_id: str, position: int, output: Any, error: str | None = None) -> dict[str, Any]:
    row = {
        "job_id": job_id,
        "position": position,
        "container": ["first", "second"][position],
        "output": output,
        "error": error,
        "attempt": 1,
        "node": NODE,
        "started_at": NOW,
        "finished_at": NOW,
    }
    assert tuple(row) == claims.INSERT_STEPS.columns
    return row


def at(minutes_ago: int) -> datetime:
    return NOW - timedelta(minutes=minutes_ago)


#: Client A's jobs at the end of the scenario: (seq, id, finished).
A_JOBS = [(1, J1, False), (2, J2, True), (3, J3, False), (5, J5, False), (6, J6, False), (7, J7, False)]


def _listed(pending: bool | None, after: bool, limit: bool) -> list[tuple[Any, ...]]:
    """What ``client_job_ids`` answers client A with ``after_seq`` 1 and ``limit`` 2."""
    jobs = [
        (job_id,)
        for seq, job_id, finished in A_JOBS
        if (pending is None or pending != finished) and (not after or seq > 1)
    ]
    return jobs[:2] if limit else jobs


@dataclass(frozen=True)
class Example:
    """Run ``name`` with ``params``; it answers ``rows`` (sorted unless ``ordered``), or for
    an insert, ``params`` are its rows and ``notify`` its ``pg_notify`` arguments."""

    name: str
    params: Any
    rows: list[tuple[Any, ...]] | None = None
    ordered: bool = False
    notify: tuple[str, str] | None = None
    #: Statements of one database only (``PerDialect`` forms).
    dialect: str | None = None


def _client_job_ids(pending: bool | None, after: bool, limit: bool) -> Example:
    params: dict[str, Any] = {"client": A}
    if after:
        params["after_seq"] = 1
    if limit:
        params["limit"] = 2
    return Example(f"reads.client_job_ids{(pending, after, limit)!r}", params, _listed(pending, after, limit), True)


ENDED = (ENDED_CHANNEL, f'["{NODE}",["{J2}"]]')
SCENARIO = [
    Example(
        "submits.INSERT_JOBS",
        [job_row(J1, A, 10, input=J1_INPUT), job_row(J2, A, 9), job_row(J3, A, 8)],
        notify=(CHANNEL, "sender ✓"),
    ),
    Example(
        "submits.INSERT_JOBS",
        [
            job_row(J4, B, 7, source="onchain"),
            # Stored claimed, as a submit's handoff or a stream stores it.
            job_row(
                J5,
                A,
                6,
                status=JobStatus.RUNNING,
                attempts=1,
                lease_owner=NODE,
                lease_expires_at=LEASE,
                started_at=at(6),
            ),
        ],
    ),
    Example(
        "claims.CLAIM",
        {"now": NOW, "limit": 2, "node": NODE, "lease_until": LEASE},
        [
            (J1, ["first", "second"], J1_INPUT, False, 1, at(10), A, False),
            (J2, ["first", "second"], {"n": 9}, False, 1, at(9), A, False),
        ],
    ),
    Example("claims.INSERT_STEPS", [step_row(J1, 0, STEP_OUTPUT), step_row(J2, 0, None, "bad ✗")], notify=ENDED),
    Example("claims.INSERT_STEPS", [step_row(J5, 0, [1, None])]),
    Example(
        "claims.EXTEND_OWNED",
        {
            "claims": [(J1, 1, at(10)), (J5, 1, at(6)), (J4, 0, at(7)), (J1, 0, at(10))],
            "node": NODE,
            "lease_until": LEASE,
        },
        [(J1, 1, at(10)), (J5, 1, at(6))],
    ),
    Example(
        "claims.FINISH_OWNED",
        {"claims": [(J2, 1, at(9))], "node": NODE, "outcome": JobStatus.FAILED, "now": NOW},
        [(J2, 1, at(9))],
    ),
    Example(
        "claims.FINISH_OWNED",  # another node's claim of J1: nothing written
        {"claims": [(J1, 1, at(10))], "node": OTHER_NODE, "outcome": JobStatus.SUCCESS, "now": NOW},
        [],
    ),
    Example(
        "claims.COMMITTED_STEPS",
        {"ids": [J1, J2, J5]},
        [(J1, 0, STEP_OUTPUT, None), (J2, 0, None, "bad ✗"), (J5, 0, [1, None], None)],
    ),
    Example(
        "claims.RENEW.postgresql",
        {"ids": [J1, J2, J5], "node": NODE, "lease_until": LEASE},
        [(J1,), (J5,)],
        dialect="postgresql",
    ),
    Example(
        "claims.RENEW.sqlite",
        {"ids": [J1, J2, J5], "node": NODE, "lease_until": LEASE},
        [(J1,), (J5,)],
        dialect="sqlite",
    ),
    Example("claims.RELEASE", {"ids": [J5, J4], "node": NODE}),
    Example("submits.INSERT_JOBS", [job_row(J6, A, 5), job_row(J7, A, 4, input={})]),
    Example(
        "reads.RESULTS",
        {"ids": [J1, J2, J3, J4, J5]},
        [
            (J1, A, JobStatus.RUNNING, "first", STEP_OUTPUT, None),
            (J2, A, JobStatus.FAILED, "first", None, "bad ✗"),
            (J3, A, JobStatus.PENDING, None, None, None),
            (J4, B, JobStatus.PENDING, None, None, None),
            (J5, A, JobStatus.PENDING, "first", [1, None], None),
        ],
    ),
    Example("reads.CLIENT_JOB_SEQ", {"client": A, "id": J2}, [(2,)]),
    Example("reads.CLIENT_JOB_SEQ", {"client": B, "id": J2}, []),
    *(_client_job_ids(*shape) for shape in itertools.product((None, True, False), (False, True), (False, True))),
    Example("reads.UNFINISHED_COUNTS", {}, [("offchain", 5), ("onchain", 1)]),
]


def test_every_statement_has_an_example():
    """A statement added to the registry without an example here fails: it would be neither
    EXPLAINed nor run through the drivers."""
    assert {example.name for example in SCENARIO} == set(registry())


# -- EXPLAIN on PostgreSQL, with a realistic table ------------------------------------------------

JOBS = 200_000
CLIENTS = 2_000
#: Fills the tables as a busy node leaves them: most jobs finished (with their steps),
#: some pending or running, many clients.
SEED = f"""
INSERT INTO jobs (id, client, source, containers, input, requires_proof, status, attempts, stream,
                  lease_owner, lease_expires_at, run_after, created_at, started_at, finished_at)
SELECT gen_random_uuid(), '10.1.' || (i % {CLIENTS} / 250) || '.' || (i % 250),
       CASE WHEN i % 10 = 0 THEN 'onchain' ELSE 'offchain' END,
       '["first", "second"]'::jsonb, jsonb_build_object('n', i), false, s.status,
       CASE WHEN s.status = 'pending' THEN 0 ELSE 1 END, false,
       CASE WHEN s.status = 'running' THEN 'node-' || (i % 4) END,
       CASE WHEN s.status = 'running' THEN now() + interval '30 seconds' END,
       now() - make_interval(secs => {JOBS} - i), now() - make_interval(secs => {JOBS} - i),
       CASE WHEN s.status <> 'pending' THEN now() - make_interval(secs => {JOBS} - i) END,
       CASE WHEN s.status IN ('success', 'failed', 'cancelled') THEN now() - make_interval(secs => {JOBS} - i) END
FROM generate_series(1, {JOBS}) AS i,
     LATERAL (SELECT CASE WHEN i % 100 < 85 THEN 'success' WHEN i % 100 < 90 THEN 'failed'
                          WHEN i % 100 < 92 THEN 'cancelled' WHEN i % 100 < 97 THEN 'pending'
                          ELSE 'running' END AS status) AS s;
INSERT INTO job_steps (job_id, position, container, output, error, attempt, node, started_at, finished_at)
SELECT id, p, (containers ->> p), CASE WHEN status = 'failed' AND p = 1 THEN NULL ELSE input END,
       CASE WHEN status = 'failed' AND p = 1 THEN 'boom' END, 1, 'node-0', created_at, created_at
FROM jobs, generate_series(0, 1) AS p
WHERE status IN ('success', 'failed') OR (status = 'running' AND p = 0);
ANALYZE jobs;
ANALYZE job_steps;
"""

#: The index each statement must read (besides: no sequential scan of a table at all).
EXPECTED_INDEX = {
    "claims.CLAIM": "ix_jobs_claim",
    "claims.COMMITTED_STEPS": "uq_job_steps_job_position",
    "claims.EXTEND_OWNED": "uq_jobs_id",
    "claims.FINISH_OWNED": "uq_jobs_id",
    "claims.RENEW.postgresql": "uq_jobs_id",
    "claims.RELEASE": "uq_jobs_id",
    "reads.RESULTS": "uq_jobs_id",
    "reads.CLIENT_JOB_SEQ": "uq_jobs_id",
    "reads.UNFINISHED_COUNTS": "ix_jobs_unfinished_source",
    "transitions.prunable": "ix_jobs_finished_at",
}


@pytest.fixture(scope="module")
def realistic_url() -> AsyncIterator[str]:
    async def create() -> str:
        url = await create_pg_database()
        await migrated(url)
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            await conn.execute(SEED)
        finally:
            await conn.close()
        return url

    try:
        url = asyncio.run(create())
    except (OSError, asyncpg.PostgresError) as exc:
        unavailable("PostgreSQL", f"{type(exc).__name__}: {exc}")
    try:
        yield url
    finally:
        asyncio.run(drop_pg_database(url))


def _explained() -> dict[str, str]:
    """The SQL of every PostgreSQL statement as asyncpg runs it, by name, and the prune
    batch (a cold statement still in ``app.jobs.transitions``)."""
    statements = registry()
    explained: dict[str, str] = {}
    for example in SCENARIO:
        statement = statements[example.name]
        if example.dialect == "sqlite":
            continue
        if isinstance(statement, RowsInsert):
            columns = {name: [row[name] for row in example.params] for name in statement.columns}
            for notify in (False, True):
                explained[f"{example.name}(notify={notify})"] = statement.unnest(notify).asyncpg_args(columns)[0]
        else:
            explained.setdefault(example.name, statement.asyncpg_args(example.params)[0])
    explained["transitions.prunable"] = Statement(transitions.prunable(NOW, 500)).asyncpg_args({})[0]
    return explained


@pytest.mark.postgres
@pytest.mark.parametrize("name, sql", list(_explained().items()), ids=list(_explained()))
async def test_each_statement_reads_an_index_on_postgresql(realistic_url, name, sql):
    """The plan the node runs: asyncpg prepares each statement once per connection, and
    PostgreSQL soon keeps its generic plan (forced here), under the pool's session settings."""
    conn = await asyncpg.connect(
        realistic_url.replace("postgresql+asyncpg://", "postgresql://"), server_settings=direct._SESSION
    )
    try:
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        await conn.execute(f"PREPARE statement AS {sql}")
        count = await conn.fetchval(
            "SELECT cardinality(parameter_types) FROM pg_prepared_statements WHERE name = 'statement'"
        )
        arguments = f"({', '.join(['NULL'] * count)})" if count else ""
        plan = "\n".join(row[0] for row in await conn.fetch(f"EXPLAIN EXECUTE statement{arguments}"))
    finally:
        await conn.close()
    assert "Seq Scan" not in plan, plan
    if name.startswith("reads.client_job_ids"):
        assert "ix_jobs_client_" in plan, plan
        if name.endswith("True)"):  # a page (LIMIT): in the index's order, never all sorted first
            assert "Sort" not in plan, plan
    elif name in EXPECTED_INDEX:
        assert EXPECTED_INDEX[name] in plan, plan


def _sqlite_statements() -> dict[str, str]:
    """The SQL of every statement that runs on SQLite, with the prune batch."""
    statements = registry()
    chosen: dict[str, str] = {}
    shapes = [(example.name, statements[example.name], example.params) for example in SCENARIO]
    shapes.append(("transitions.prunable", Statement(transitions.prunable(NOW, 500)), {}))
    for name, statement, params in shapes:
        if isinstance(statement, Statement) and name != "claims.RENEW.postgresql" and name not in chosen:
            compiled = statement.statement.compile(dialect=sqlite.dialect())  # type: ignore[attr-defined]
            chosen[name] = compiled.construct_expanded_state(statement.sqlalchemy_params(params)).statement
    return chosen


#: Scans that SQLite plans (3.40, tables without statistics), each read through an index:
SQLITE_KNOWN_SCANS = {
    #: By design: every unfinished job is counted, from the partial index of them.
    "reads.UNFINISHED_COUNTS": ["SCAN jobs USING INDEX ix_jobs_unfinished_source"],
    #: A correlated subquery in a RETURNING clause is planned without its index: the
    #: claim's "has committed steps" reads all of ``job_steps``' covering index per job.
    "claims.CLAIM": ["SCAN job_steps USING COVERING INDEX sqlite_autoindex_job_steps_1"],
    #: A row-value IN of several claims reads every running job (the partial lease index)
    #: instead of looking each id up. Both left as they are (the statements' text stays);
    #: written down here so that no other scan comes in unnoticed.
    "claims.EXTEND_OWNED": ["SCAN jobs USING INDEX ix_jobs_lease"],
}


async def test_each_statement_reads_an_index_on_sqlite(sqlite_url):
    database = Database(sqlite_url)
    plans: dict[str, str] = {}
    try:
        async with database.reader.connect() as connection:
            for name, sql in _sqlite_statements().items():
                nulls = (None,) * sql.count("?")
                rows = (await connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", nulls)).all()
                plans[name] = "\n".join(str(row[-1]) for row in rows)
    finally:
        await database.dispose()
    for name, plan in plans.items():
        lines = plan.splitlines()
        full_scans = [line for line in lines if line.split()[:2] in (["SCAN", "jobs"], ["SCAN", "job_steps"])]
        assert full_scans == SQLITE_KNOWN_SCANS.get(name, []), (name, plan)
        if name.startswith("reads.client_job_ids"):
            assert "TEMP B-TREE" not in plan, (name, plan)
