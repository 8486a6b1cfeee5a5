"""The operator CLI against the database straight (``jobnode jobs|stats|db prune``) and
against a running node (``jobnode containers``); on SQLite and PostgreSQL, each test on
a database of its own (the CLI counts and re-queues every job in it)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import insert

from app.cli import main
from app.clock import utcnow
from app.db.engine import Database
from app.db.models import JobStatus, StepAttempt
from tests.conftest import BACKENDS
from tests.operator_support import TOKEN, add_job, container, fresh_database, scheduled, set_job
from tests.support import node_settings, serve_node


@pytest.fixture(params=BACKENDS)
async def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with fresh_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
async def database(fresh_url: str) -> AsyncIterator[Database]:
    db = Database(fresh_url)
    yield db
    await db.dispose()


@pytest.fixture
def config_path(fresh_url: str, tmp_path: Path) -> str:
    path = tmp_path / "jobnode.json"
    path.write_text(json.dumps({"database": {"url": fresh_url}, "retention": {"finished_jobs_days": 30}}))
    return str(path)


async def cli(*args: str, ok: bool = True) -> Result:
    """``jobnode …`` in a thread (it runs its own event loop), with stdout and stderr apart."""
    result = await asyncio.to_thread(CliRunner().invoke, main, list(args), catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, (args, result.stdout, result.stderr)
    return result


def _ids() -> list[str]:
    return [str(uuid.uuid4()) for _ in range(5)]


async def _jobs(database: Database) -> dict[str, str]:
    """pending, running, success, failed (with an error step) and a second failed job."""
    ids = dict(zip(("pending", "running", "success", "failed", "failed2"), _ids(), strict=True))
    old = utcnow() - timedelta(minutes=3)
    await add_job(database, ids["pending"], client="10.0.0.1", created_at=old)
    await add_job(database, ids["running"], client="10.0.0.1", status=JobStatus.RUNNING)
    await add_job(
        database,
        ids["success"],
        client="10.0.0.2",
        status=JobStatus.SUCCESS,
        steps=[{"container": "echo", "output": {"y": 2}}],
    )
    await add_job(
        database,
        ids["failed"],
        client="10.0.0.2",
        containers=["echo", "fail"],
        status=JobStatus.FAILED,
        steps=[{"container": "echo", "output": {"y": 2}}, {"container": "fail", "error": "HTTP 500: boom"}],
    )
    await add_job(
        database,
        ids["failed2"],
        client="10.0.0.3",
        status=JobStatus.FAILED,
        steps=[{"container": "echo", "error": "connection refused"}],
    )
    return ids


async def test_list_and_show(database, config_path):
    ids = await _jobs(database)
    out = (await cli("jobs", "list", "--config", config_path)).stdout
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "STATUS", "CLIENT", "CONTAINERS", "ATTEMPTS", "CREATED", "(UTC)", "ERROR"]
    assert [line.split()[0] for line in lines[2:]] == [
        ids[k] for k in ("failed2", "failed", "success", "running", "pending")
    ], out
    assert "fail: HTTP 500: boom" in out and "echo,fail" in out
    assert lines[0].index("STATUS") == lines[2].index("failed"), "columns are not aligned"

    out = (await cli("jobs", "list", "--config", config_path, "--status", "failed")).stdout
    assert [line.split()[0] for line in out.splitlines()[2:]] == [ids["failed2"], ids["failed"]]
    out = (await cli("jobs", "list", "--config", config_path, "--client", "10.0.0.1", "--limit", "1")).stdout
    assert [line.split()[0] for line in out.splitlines()[2:]] == [ids["running"]]
    assert (await cli("jobs", "list", "--config", config_path, "--client", "10.9.9.9")).stdout == "no jobs\n"
    listed = json.loads((await cli("jobs", "list", "--config", config_path, "--json", "--limit", "2")).stdout)
    assert [j["id"] for j in listed] == [ids["failed2"], ids["failed"]]

    out = (await cli("jobs", "show", ids["failed"], "--config", config_path)).stdout
    assert f"id          {ids['failed']}" in out
    assert "status      failed (API: failed)" in out and "containers  echo -> fail" in out
    assert "error: HTTP 500: boom" in out and '{"y": 2}' in out
    shown = json.loads((await cli("jobs", "show", ids["failed"], "--config", config_path, "--json")).stdout)
    assert shown["id"] == ids["failed"] and [s["container"] for s in shown["steps"]] == ["echo", "fail"]

    missing = await cli("jobs", "show", str(uuid.uuid4()), "--config", config_path, ok=False)
    assert missing.exit_code == 1 and "Job not found" in missing.stderr
    invalid = await cli("jobs", "show", "nope", "--config", config_path, ok=False)
    assert invalid.exit_code == 2 and "Invalid job id" in invalid.stderr


async def test_cancel_and_retry(database, config_path):
    ids = await _jobs(database)
    out = (await cli("jobs", "cancel", ids["running"], "--config", config_path)).stdout
    assert out == f"cancelled {ids['running']} (at container echo)\n"
    again = await cli("jobs", "cancel", ids["running"], "--config", config_path, ok=False)
    assert again.exit_code == 1 and "Job already finished" in again.stderr

    out = (await cli("jobs", "retry", ids["failed"], "--config", config_path)).stdout
    assert out == f"re-queued {ids['failed']}\n"
    shown = json.loads((await cli("jobs", "show", ids["failed"], "--config", config_path, "--json")).stdout)
    assert shown["status"] == "pending" and [s["error"] for s in shown["steps"]] == [None]
    not_failed = await cli("jobs", "retry", ids["success"], "--config", config_path, ok=False)
    assert not_failed.exit_code == 1 and "Job is not failed" in not_failed.stderr
    usage = await cli("jobs", "retry", "--config", config_path, ok=False)
    assert usage.exit_code == 2

    result = await cli("jobs", "retry", "--all-failed", "--config", config_path)
    assert result.stdout == "re-queued 2 of 2 failed or cancelled jobs\n"  # failed2 and the cancelled one
    assert "re-queueing 2 jobs" in result.stderr
    out = (await cli("jobs", "list", "--config", config_path, "--status", "pending")).stdout
    assert {line.split()[0] for line in out.splitlines()[2:]} == {
        ids[k] for k in ("pending", "running", "failed", "failed2")
    }


async def test_stats(database, config_path):
    await _jobs(database)
    out = (await cli("stats", "--config", config_path)).stdout
    rows = dict(line.split() for line in out.split("\n\n")[0].splitlines()[2:])
    assert rows == {"pending": "1", "running": "1", "success": "1", "failed": "2", "cancelled": "0"}
    assert "queue depth             1" in out
    oldest = next(line for line in out.splitlines() if line.startswith("oldest pending"))
    assert oldest.split()[-1] == "min" and 2.9 <= float(oldest.split()[-2]) <= 3.5, oldest
    assert "finished, last minute   3 jobs/min" in out


async def test_db_prune(database, config_path):
    old = utcnow() - timedelta(days=40)
    old_ids = _ids() + _ids()
    for job_id in old_ids:
        await add_job(
            database, job_id, status=JobStatus.SUCCESS, created_at=old, steps=[{"container": "echo", "output": 1}]
        )
    yesterday = str(uuid.uuid4())
    await add_job(database, yesterday, status=JobStatus.FAILED, created_at=utcnow() - timedelta(days=1))
    recent = await _jobs(database)
    result = await cli("db", "prune", "--config", config_path)
    assert result.stdout == "deleted 10 finished jobs older than 30 days\n"
    assert "deleting 10 finished jobs" in result.stderr
    out = (await cli("jobs", "list", "--config", config_path, "--limit", "100")).stdout
    assert {line.split()[0] for line in out.splitlines()[2:]} == {*recent.values(), yesterday}
    result = await cli("db", "prune", "--config", config_path, "--days", "0.5")
    assert result.stdout == "deleted 1 finished jobs older than 0.5 days\n"
    # --days 0 is refused as an option (it would delete every finished job), not blamed on
    # the config; a config that turns retention off prunes nothing unless --days says so.
    result = await cli("db", "prune", "--config", config_path, "--days", "0", ok=False)
    assert result.exit_code == 2 and "'--days'" in result.stderr and "retention" not in result.stderr
    raw = json.loads(Path(config_path).read_text())
    Path(config_path).write_text(json.dumps({**raw, "retention": {"finished_jobs_days": 0}}))
    result = await cli("db", "prune", "--config", config_path)
    assert result.stdout.startswith("retention is off (retention.finished_jobs_days is 0)")


async def test_containers_from_a_running_node(fresh_url, host_service):
    echo = host_service("echo")
    config = scheduled(
        container("echo", echo.url),
        container("down", "http://127.0.0.1:9", health_path="/health"),
        server={"operator_token": TOKEN},
    )
    async with serve_node(node_settings(fresh_url, config)) as node:
        out = (await cli("containers", "--url", node.url, "--token", TOKEN)).stdout
        lines = out.splitlines()
        assert lines[0].split()[:3] == ["CONTAINER", "STATE", "IN"]
        assert lines[2].split()[:6] == ["echo", "ready", "0/16", "0", "0", "0"]
        assert lines[3].split()[:2] == ["down", "starting"] or lines[3].split()[:2] == ["down", "failed"]
        denied = await cli("containers", "--url", node.url, ok=False)
        assert denied.exit_code == 1 and "401: Operator token required" in denied.stderr
    gone = await cli("containers", "--url", node.url, "--token", TOKEN, ok=False)
    assert gone.exit_code == 1 and "cannot reach" in gone.stderr


async def test_show_lists_the_calls_of_retried_steps(database, config_path):
    """``jobs show``: every call of a step that was retried, and a step waiting for its next."""
    done, waiting = _ids()[:2]
    now = utcnow()
    await add_job(
        database,
        done,
        status=JobStatus.SUCCESS,
        steps=[{"container": "echo", "output": {"y": 2}}],
        retries=1,
    )
    await add_job(database, waiting, retries=2)
    await set_job(database, waiting, run_after=now + timedelta(minutes=5))
    async with database.write() as conn:
        for job_id, attempts in ((done, 1), (waiting, 2)):
            for attempt in range(1, attempts + 1):
                await conn.execute(
                    insert(StepAttempt).values(
                        job_id=job_id,
                        position=0,
                        container="echo",
                        attempt=attempt,
                        error=f"HTTP 503: busy {attempt}",
                        reason="5xx",
                        node="test-node",
                        started_at=now,
                        finished_at=now,
                        retry_at=now + timedelta(seconds=attempt),
                    )
                )
    out = (await cli("jobs", "show", done, "--config", config_path)).stdout
    assert "retries     1" in out
    assert "HTTP 503: busy 1" in out and "5xx" in out and "ok" in out
    out = (await cli("jobs", "show", waiting, "--config", config_path)).stdout
    assert "status      pending (API: running)" in out
    assert "HTTP 503: busy 1" in out and "HTTP 503: busy 2" in out
    assert "step 0 waits for its next call at" in out
    shown = json.loads((await cli("jobs", "show", waiting, "--config", config_path, "--json")).stdout)
    assert shown["waiting"]["position"] == 0 and [a["attempt"] for a in shown["waiting"]["attempts"]] == [1, 2]
    assert shown["waiting"]["next_attempt_at"] == shown["run_after"]
