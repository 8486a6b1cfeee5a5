"""Every statement of ``app.db.statements``: each has an example in the scenario of
``tests/statement_scenario.py`` (which uses them all, with their answers), and each is
served by an index: EXPLAIN on PostgreSQL with a realistic table, as the node plans it, and
on SQLite. ``test_statement_drivers`` runs the scenario through each driver."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy.dialects import sqlite

from app.db import direct
from app.db.direct import RowsInsert, Statement
from app.db.engine import Database
from app.db.statements.inspection import RETRYABLE
from tests.statement_scenario import NEWEST_STATUSES, SCENARIO, registry
from tests.support import create_pg_database, drop_pg_database, migrated, unavailable


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
INSERT INTO subscriptions (id, client, containers, input, requires_proof, period, frequency, active_at,
                           next_interval, next_due_at, status, missed, created_at)
SELECT gen_random_uuid(), '10.1.' || (i % {CLIENTS} / 250) || '.' || (i % 250), '["first"]'::jsonb,
       jsonb_build_object('n', i), false, 60, 10, 1800000000, 2,
       CASE WHEN i % 10 = 0 THEN now() + make_interval(secs => i % 60) END,
       CASE WHEN i % 10 = 0 THEN 'active' WHEN i % 10 = 1 THEN 'cancelled' ELSE 'completed' END, 0, now()
FROM generate_series(1, {JOBS} / 10) AS i;
INSERT INTO idempotency_keys (client, key, request_hash, answer, created_at, expires_at)
SELECT '10.1.' || (i % {CLIENTS} / 250) || '.' || (i % 250), 'key-' || i, md5(i::text) || md5(i::text),
       jsonb_build_object('id', gen_random_uuid()), now() - make_interval(secs => i),
       now() - make_interval(secs => i) + interval '24 hours'
FROM generate_series(1, {JOBS} / 4) AS i;
INSERT INTO step_attempts (job_id, position, container, attempt, error, reason, node, started_at, finished_at,
                           retry_at)
SELECT id, 0, (containers ->> 0), 1, 'HTTP 503', '5xx', 'node-0', created_at, created_at, created_at
FROM jobs WHERE status = 'failed';
INSERT INTO webhook_deliveries (id, job_id, url, status, attempts, next_attempt_at, created_at, delivered_at)
SELECT gen_random_uuid(), id, 'https://hooks.example.com/' || (seq % 50),
       CASE WHEN seq % 100 < 96 THEN 'delivered' WHEN seq % 100 < 98 THEN 'failed' ELSE 'pending' END,
       1, finished_at, finished_at, finished_at
FROM jobs WHERE finished_at IS NOT NULL AND seq % 2 = 0;
INSERT INTO webhook_attempts (delivery_id, attempt, started_at, finished_at, status_code)
SELECT id, 1, created_at, created_at, 200 FROM webhook_deliveries;
ANALYZE webhook_deliveries;
ANALYZE webhook_attempts;
ANALYZE jobs;
ANALYZE job_steps;
ANALYZE step_attempts;
ANALYZE idempotency_keys;
ANALYZE subscriptions;
"""

#: The index each statement must read (besides: no sequential scan of a table at all).
EXPECTED_INDEX: dict[str, str | tuple[str, ...]] = {
    "claims.CLAIM.postgresql": "ix_jobs_claim",
    "claims.COMMITTED_STEPS": "uq_job_steps_job_position",
    "claims.EXTEND_OWNED.postgresql": "uq_jobs_id",
    "claims.FINISH_OWNED.postgresql": "uq_jobs_id",
    **dict.fromkeys(("claims.EXTEND_STEPS", "claims.FINISH_STEPS"), "uq_jobs_id"),
    "claims.RENEW.postgresql": "uq_jobs_id",
    "claims.RELEASE": "uq_jobs_id",
    "retries.RETRY_OWNED": "uq_jobs_id",
    "retries.NEXT_DUE": "ix_jobs_claim",
    **dict.fromkeys(
        ("retries.STEP_ATTEMPT_COUNTS", "retries.JOB_STEP_ATTEMPTS", "retries.DROP_STEP_ATTEMPTS"),
        "ix_step_attempts_job",
    ),
    "reads.RESULTS": "uq_jobs_id",
    "reads.CLIENT_JOB_SEQ": "uq_jobs_id",
    "reads.UNFINISHED_COUNTS": "ix_jobs_unfinished_source",
    "maintenance.EXPIRED": "ix_jobs_lease",  # the reaper: running jobs by lease expiry
    "maintenance.EXHAUSTED_ORPHANS": "ix_jobs_lease",
    "maintenance.REQUEUE_ORPHANS": "ix_jobs_lease",
    "maintenance.PRUNE_BATCH": "ix_jobs_finished_at",
    "maintenance.PRUNE.postgresql": "jobs_pkey",
    "maintenance.PRUNABLE_COUNT": "ix_jobs_finished_at",
    **dict.fromkeys(("maintenance.FAIL", "maintenance.REQUEUE_EXPIRED"), "uq_jobs_id"),
    **dict.fromkeys(("maintenance.CANCEL", "maintenance.REQUEUE", "inspection.JOB"), "uq_jobs_id"),
    **dict.fromkeys(("maintenance.STEP_COUNT", "maintenance.DROP_ERROR_STEPS"), "uq_job_steps_job_position"),
    **dict.fromkeys(("inspection.JOB_STEPS", "inspection.ERRORS"), "uq_job_steps_job_position"),
    "inspection.UNFINISHED_BY_STATE": "ix_jobs_unfinished_source",
    "inspection.RUNNABLE": "ix_jobs_claim",
    "subscriptions.DUE": "ix_subscriptions_due",
    "subscriptions.NEXT_DUE": "ix_subscriptions_due",
    "subscriptions.ADVANCE": "uq_subscriptions_id",
    "subscriptions.DUE_ONE": "uq_subscriptions_id",
    "subscriptions.POSTPONE": "uq_subscriptions_id",
    "subscriptions.CLIENT_SUBSCRIPTION": "uq_subscriptions_id",
    "subscriptions.LATEST_JOBS": "uq_subscriptions_id",
    "subscriptions.ACTIVE_COUNT": "ix_subscriptions_client_active",
    "subscriptions.ACTIVE_TOTAL": "ix_subscriptions_due",
    "subscriptions.ENDED_BY_STATE": "ix_subscriptions_ended",
    "subscriptions.JOB_COUNTS": "uq_jobs_subscription_interval",
    "subscriptions.subscription_jobs(True,)": "uq_jobs_subscription_interval",
    "subscriptions.subscription_jobs(False,)": "uq_jobs_subscription_interval",
    **dict.fromkeys(
        (
            "idempotency.CLAIM_KEY.postgresql",
            "idempotency.READ_KEY",
            "idempotency.CLAIM_KEYS.postgresql",
            "idempotency.READ_KEYS.postgresql",
        ),
        "idempotency_keys_pkey",
    ),
    "idempotency.PRUNE_KEYS.postgresql": "ix_idempotency_keys_expires_at",
    "inspection.FINISHED_SINCE": "ix_jobs_finished_at",
    "webhooks.CLAIM_DUE": "ix_webhook_deliveries_due",
    "webhooks.NEXT_DUE": "ix_webhook_deliveries_due",
    "webhooks.RETRYING_ENDPOINTS": "ix_webhook_deliveries_due",
    "webhooks.FAILED_ENDPOINTS": "ix_webhook_deliveries_failed",
    "webhooks.DELIVERED": "webhook_deliveries_pkey",
    "webhooks.NOT_DELIVERED": "webhook_deliveries_pkey",
    "webhooks.JOB_WEBHOOK": "uq_jobs_id",
    "webhooks.JOB_DELIVERIES": "ix_webhook_deliveries_job",
    "webhooks.DELIVERY_ATTEMPTS": "uq_webhook_attempts_delivery_attempt",
    "inspection.FINISHED_PER_MINUTE.postgresql": "ix_jobs_finished_at",
    # The last failed jobs from the index of them alone, not past every success since.
    "inspection.RECENTLY_FAILED": "ix_jobs_failed",
    "inspection.RETRYABLE_IDS": "ix_jobs_failed",  # ``jobnode jobs retry --all-failed``
    # The newest jobs: a client's from its indexes, others backwards along the primary key
    # (running ones from the lease index of them, then sorted).
    **{f"inspection.newest_jobs{(status, True)!r}": "ix_jobs_client_" for status in NEWEST_STATUSES},
    **{f"inspection.newest_jobs{(status, False)!r}": "jobs_pkey" for status in NEWEST_STATUSES},
    # Failed or cancelled ones either way: backwards along the primary key until enough,
    # or the index of them alone, sorted (fewer rows when they are rare).
    **{f"inspection.newest_jobs{(status, False)!r}": ("jobs_pkey", "ix_jobs_failed") for status in RETRYABLE},
    "inspection.newest_jobs('running', False)": "ix_jobs_lease",
}
#: Operator statements that read every job, by design, and that only the CLI runs: there
#: is no index of these states (a scrape never runs them).
FULL_SCANS = {
    "inspection.COUNT_BY_STATUS",  # ``jobnode stats``: every job counted by state
}


@pytest.fixture(scope="module")
def realistic_url() -> AsyncIterator[str]:
    async def create() -> str:
        url = await create_pg_database()
        await migrated(url)
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            await conn.execute(SEED)
            # As autovacuum leaves it: the visibility map lets counts read the index only.
            await conn.execute("VACUUM subscriptions")
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
    """The SQL of every PostgreSQL statement as asyncpg runs it, by name."""
    statements = registry()
    explained: dict[str, str] = {}
    for example in SCENARIO:
        statement = statements[example.name]
        if example.dialect == "sqlite":
            continue
        if isinstance(statement, RowsInsert):
            rows = {"rows": example.params}
            for notify in (False, True):
                explained[f"{example.name}(notify={notify})"] = statement.recordset(notify).asyncpg_args(rows)[0]
        else:
            explained.setdefault(example.name, statement.asyncpg_args(example.params)[0])
    return explained


#: The modules whose statements run on SQLAlchemy's connections (``Statement.run``).
SQLALCHEMY_RUN = ("maintenance.", "inspection.", "subscriptions.", "idempotency.PRUNE_KEYS.")


@pytest.mark.postgres
@pytest.mark.parametrize("name, sql", list(_explained().items()), ids=list(_explained()))
async def test_each_statement_reads_an_index_on_postgresql(realistic_url, name, sql):
    """The plan the node runs: asyncpg prepares each statement once per connection, and
    PostgreSQL soon keeps its generic plan (forced here), under the session settings of the
    asyncpg pool (hot statements) or SQLAlchemy's engine (cold ones: the planner's defaults)."""
    settings = {} if name.startswith(SQLALCHEMY_RUN) else direct._SESSION
    conn = await asyncpg.connect(
        realistic_url.replace("postgresql+asyncpg://", "postgresql://"), server_settings=settings
    )
    try:
        plan = await _generic_plan(conn, sql)
    finally:
        await conn.close()
    assert ("Seq Scan" in plan) == (name in FULL_SCANS), plan
    if name.startswith("reads.client_job_ids"):
        assert "ix_jobs_client_" in plan, plan
        if name.endswith("True)"):  # a page (LIMIT): in the index's order, never all sorted first
            assert "Sort" not in plan, plan
    elif name.startswith("subscriptions.client_subscription_ids"):
        assert "ix_subscriptions_client_" in plan, plan
        if name.endswith("True)"):  # a page (LIMIT): in the index's order, never all sorted first
            assert "Sort" not in plan, plan
    elif name.startswith("claims.CLAIM"):
        # Read in the claim index's order, stopping at the LIMIT: never every pending job
        # sorted first (what it cost with 10 M jobs stored: tests/bench/claimplan.py).
        assert "Scan using ix_jobs_claim on jobs" in plan, plan
        if name == "claims.CLAIM_AFTER":
            # The cursor bounds the scan (an index condition, not a filter of every entry);
            # the jobs pending again come from their own index; each read locks as it goes
            # (up to the LIMIT); only what the two found is sorted, and the rows are then
            # updated by their key, never by reading the claim index from its start.
            assert "Index Cond: ((run_after <= $" in plan and "AND (ROW(run_after, seq) > ROW($" in plan, plan
            assert "Scan using ix_jobs_claim_again on jobs" in plan and plan.count("LockRows") == 2, plan
            assert plan.count("Sort Key:") == 1 and "Sort Key: onward.run_after, onward.seq" in plan, plan
            assert "Index Cond: (seq = claimable.seq)" in plan, plan
        else:
            assert "Sort" not in plan, plan
    elif name in EXPECTED_INDEX:
        expected = EXPECTED_INDEX[name]
        assert any(index in plan for index in ((expected,) if isinstance(expected, str) else expected)), plan


def _sqlite_statements() -> dict[str, str]:
    """The SQL of every statement that runs on SQLite, by name."""
    statements = registry()
    chosen: dict[str, str] = {}
    shapes = [(ex.name, statements[ex.name], ex.params) for ex in SCENARIO if ex.dialect != "postgresql"]
    for name, statement, params in shapes:
        if isinstance(statement, Statement) and name not in chosen:
            compiled = statement.statement.compile(dialect=sqlite.dialect())  # type: ignore[attr-defined]
            chosen[name] = compiled.construct_expanded_state(statement.sqlalchemy_params(params)).statement
    return chosen


#: Scans that SQLite plans (3.40, tables without statistics), each read through an index:
SQLITE_KNOWN_SCANS = {
    #: By design: every unfinished job is counted, from the partial index of them.
    "reads.UNFINISHED_COUNTS": ["SCAN jobs USING INDEX ix_jobs_unfinished_source"],
    #: A restarted node's orphans are among the running jobs: the partial lease index of them.
    "maintenance.EXHAUSTED_ORPHANS": ["SCAN jobs USING INDEX ix_jobs_lease"],
    "maintenance.REQUEUE_ORPHANS": ["SCAN jobs USING INDEX ix_jobs_lease"],
    "inspection.UNFINISHED_BY_STATE": ["SCAN jobs USING INDEX ix_jobs_unfinished_source"],
    #: Every client's newest subscriptions walk the table from the newest (rowid order) and
    #: stop at the LIMIT, as the newest jobs do.
    **{f"subscriptions.newest_subscriptions{(active,)!r}": ["SCAN subscriptions"] for active in (False, True)},
    #: Every active subscription counted, from the partial index of them.
    "subscriptions.ACTIVE_TOTAL": ["SCAN subscriptions USING INDEX ix_subscriptions_due"],
    #: Every ended one counted by state, from the partial index of them alone.
    "subscriptions.ENDED_BY_STATE": ["SCAN subscriptions USING COVERING INDEX ix_subscriptions_ended"],
    #: Operator statements that read every job, by design (only the CLI runs them):
    #: ``jobnode stats`` counts every state, ``retry --all-failed`` finds every failed job.
    "inspection.COUNT_BY_STATUS": ["SCAN jobs"],
    "inspection.RETRYABLE_IDS": ["SCAN jobs"],
    #: The newest jobs in any state walk the table (its rowid order) from the newest and
    #: stop at the LIMIT: never sorted (asserted below).
    **{f"inspection.newest_jobs{(status, False)!r}": ["SCAN jobs"] for status in NEWEST_STATUSES},
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
        full_scans = [
            line
            for line in lines
            if line.split()[:2]
            in (["SCAN", table] for table in ("jobs", "job_steps", "subscriptions", "idempotency_keys"))
        ]
        assert full_scans == SQLITE_KNOWN_SCANS.get(name, []), (name, plan)
        if name.startswith(("reads.client_job_ids", "inspection.newest_jobs")):
            assert "TEMP B-TREE" not in plan, (name, plan)


@pytest.mark.postgres
@pytest.mark.parametrize(
    "name",
    [
        "claims.EXTEND_STEPS",
        "claims.FINISH_STEPS",
        "claims.EXTEND_OWNED.postgresql",
        "claims.FINISH_OWNED.postgresql",
        "claims.RENEW.postgresql",
        "claims.RELEASE",
        "retries.RETRY_OWNED",
    ],
)
async def test_a_write_to_held_jobs_reads_them_by_id_whatever_the_statistics_saw(realistic_url, name):
    """Statistics taken while few jobs ran (between two autovacuums) must not turn a write to
    the jobs a node holds (a step commit, a lease renewal, a hand-back) into a read of every
    running job of every node through ``ix_jobs_lease``: their status check is a bound
    parameter (``status_checked``), and their jobs come from ``uq_jobs_id`` by their ids.
    (With 5,000 jobs running on other nodes, a one-node drain's PostgreSQL CPU per job was
    0.19–0.21 ms that way, 0.15–0.16 ms by id: README.)"""
    conn = await asyncpg.connect(
        realistic_url.replace("postgresql+asyncpg://", "postgresql://"), server_settings=direct._SESSION
    )
    statistics = conn.transaction()  # of no running job, rolled back after
    await statistics.start()
    try:
        await conn.execute("UPDATE jobs SET status = 'pending' WHERE status = 'running'")
        await conn.execute("ANALYZE jobs")
        await conn.execute("UPDATE jobs SET status = 'running' WHERE lease_owner IS NOT NULL")
        plan = await _generic_plan(conn, _explained()[name])
    finally:
        await statistics.rollback()
        await conn.close()
    assert "Scan on uq_jobs_id" in plan or "Scan using uq_jobs_id" in plan, plan
    assert "ix_jobs_lease" not in plan, plan


async def _generic_plan(conn: asyncpg.Connection, sql: str) -> str:
    """``sql``'s generic plan, as a connection that prepared it runs it (``EXPLAIN``)."""
    await conn.execute("SET plan_cache_mode = force_generic_plan")
    await conn.execute(f"PREPARE statement AS {sql}")
    count = await conn.fetchval(
        "SELECT cardinality(parameter_types) FROM pg_prepared_statements WHERE name = 'statement'"
    )
    arguments = f"({', '.join(['NULL'] * count)})" if count else ""
    return "\n".join(row[0] for row in await conn.fetch(f"EXPLAIN EXECUTE statement{arguments}"))
