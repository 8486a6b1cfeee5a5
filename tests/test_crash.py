"""Restart safety with real processes: SIGKILL, SIGTERM, several nodes, a PostgreSQL restart.

Services count their calls per job (key ``data["job"]``), one service per chain
position, so "no committed step ran again" is checked against what the containers saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from app.db import migrate
from app.db.engine import Database
from app.db.models import Job, JobStep
from tests.support import NodeProcess, free_port, migrated, unavailable, wait_finished

pytestmark = pytest.mark.slow


async def _open(url: str) -> AsyncIterator[Database]:
    db = Database(url)
    await migrate.upgrade(db)
    yield db
    await db.dispose()


@pytest.fixture
async def database(fresh_url: str) -> AsyncIterator[Database]:
    async for db in _open(fresh_url):
        yield db


@pytest.fixture
async def pg_database(pg_fresh_url: str) -> AsyncIterator[Database]:
    async for db in _open(pg_fresh_url):
        yield db


def _config(url: str, services: list[Any], **scheduler: Any) -> dict[str, Any]:
    return {
        "database": {"url": url},
        "manage_containers": False,
        "server": {"rate_limit": None},
        "scheduler": {"max_concurrent_jobs": 16, "lease_seconds": 3, "poll_interval": 0.2, **scheduler},
        "containers": [{"id": f"s{i}", "url": s.url, "concurrency": 16} for i, s in enumerate(services)],
    }


async def _submit(node: NodeProcess, count: int, chain: list[str]) -> list[str]:
    async with node.client() as http:
        ids: list[str] = []
        for start in range(0, count, 500):
            body = [{"containers": chain, "data": {"job": str(i)}} for i in range(start, min(count, start + 500))]
            response = await http.post("/api/jobs/batch", json=body)
            assert response.status_code == 200, response.text
            ids += [answer["id"] for answer in response.json()]
    return ids


async def _count_finished(database: Database) -> int:
    async with database.read() as conn:
        stmt = select(func.count()).select_from(Job).where(Job.finished_at.is_not(None))
        return (await conn.execute(stmt)).scalar_one()


async def _wait_progress(database: Database, at_least: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while await _count_finished(database) < at_least:
        assert time.monotonic() < deadline, "no progress"
        await asyncio.sleep(0.05)


async def _committed_steps(database: Database) -> set[tuple[str, int]]:
    async with database.read() as conn:
        return {(str(r.job_id), r.position) for r in await conn.execute(select(JobStep.job_id, JobStep.position))}


async def _wait_all(node: NodeProcess, ids: list[str], timeout: float = 120) -> dict[str, dict[str, Any]]:
    async with node.client() as http:
        return await wait_finished(http, ids, timeout=timeout, intermediate=False)


def _check_calls(
    services: list[Any], ids: list[str], committed_before: set[tuple[str, int]], allowed_reruns: int
) -> None:
    """A step committed before the crash was called once; only steps in flight may run twice."""
    reruns = 0
    for position, service in enumerate(services):
        calls = service.calls()
        for i, job_id in enumerate(ids):
            count = calls.get(str(i), 0)
            if (job_id, position) in committed_before:
                assert count == 1, f"committed step {position} of job {i} ran {count} times"
            else:
                assert count in (1, 2), f"step {position} of job {i} ran {count} times"
                reruns += count - 1
    assert reruns <= allowed_reruns


async def test_sigkill_mid_run_then_restart(fresh_url, database, tmp_path, host_service):
    services = [host_service("count", DELAY=0.002) for _ in range(3)]
    node = NodeProcess(tmp_path, _config(fresh_url, services, node_id="crashy"))
    try:
        node.start()
        ids = await _submit(node, 300, ["s0", "s1", "s2"])
        await _wait_progress(database, 40)
        node.kill()
        committed = await _committed_steps(database)
        assert 0 < len(committed) < 900, "the kill must land in the middle of the work"
        node.start()  # same identity: its orphaned jobs are taken back at once
        results = await _wait_all(node, ids)
    finally:
        node.kill()
    assert {r["status"] for r in results.values()} == {"success"}
    assert all(
        r["result"] == {"container": "s2", "output": {"job": str(i)}} for i, r in enumerate(results[i] for i in ids)
    )
    _check_calls(services, ids, committed, allowed_reruns=16)


async def test_sigterm_hands_jobs_back_and_exits_within_grace(fresh_url, database, tmp_path, host_service):
    services = [host_service("count", DELAY=0.4)]
    grace = 2.0
    node = NodeProcess(tmp_path, _config(fresh_url, services, max_concurrent_jobs=4, shutdown_grace=grace))
    try:
        node.start()
        ids = await _submit(node, 40, ["s0"])
        await _wait_progress(database, 4)
        started = time.monotonic()
        code = node.terminate(timeout=30)
        elapsed = time.monotonic() - started
        assert code == 0, node.log()[-2000:]
        assert elapsed < 2 * grace + 5, f"shutdown took {elapsed:.1f} s"
        async with database.read() as conn:
            statuses = dict((await conn.execute(select(Job.status, func.count()).group_by(Job.status))).all())
            leftover = (await conn.execute(select(func.max(Job.attempts)).where(Job.status == "pending"))).scalar()
        assert "running" not in statuses, f"jobs left running after a graceful stop: {statuses}"
        assert statuses.get("pending", 0) > 0
        assert (leftover or 0) == 0, "a job handed back at shutdown must not use up an attempt"
        node.start()
        results = await _wait_all(node, ids)
    finally:
        node.kill()
    assert {r["status"] for r in results.values()} == {"success"}
    calls = services[0].calls()
    assert all(calls.get(str(i)) == 1 for i in range(40)), "a step that finished before SIGTERM ran again"


async def test_three_nodes_share_the_work_exactly_once(pg_fresh_url, pg_database, tmp_path, host_service):
    # Steps take 20 ms: one node alone would need seconds, so every node claims work even
    # when the node the jobs were submitted to claims first (it is woken in-process).
    services = [host_service("count", DELAY=0.02) for _ in range(2)]
    config = _config(pg_fresh_url, services)
    nodes = [
        NodeProcess(tmp_path, {**config, "scheduler": {**config["scheduler"], "node_id": f"n{k}"}}, f"n{k}")
        for k in range(3)
    ]
    try:
        for node in nodes:  # all at once: migrations on a fresh database must serialise
            node.spawn()
        for node in nodes:
            node.wait_healthy()
        ids = await _submit(nodes[0], 2000, ["s0", "s1"])
        results = await _wait_all(nodes[1], ids, timeout=180)
    finally:
        for node in nodes:
            node.kill()
    assert {r["status"] for r in results.values()} == {"success"}
    for service in services:
        assert service.calls() == {str(i): 1 for i in range(2000)}
    async with pg_database.read() as conn:
        by_node = dict((await conn.execute(select(JobStep.node, func.count()).group_by(JobStep.node))).all())
    assert set(by_node) == {"n0", "n1", "n2"}, f"work not spread: {by_node}"
    assert await migrate.current_revision(pg_database) == migrate.head_revision()


async def test_killed_node_jobs_finish_on_the_others(pg_fresh_url, pg_database, tmp_path, host_service):
    services = [host_service("count", DELAY=0.005) for _ in range(2)]
    config = _config(pg_fresh_url, services, lease_seconds=2)
    nodes = [
        NodeProcess(tmp_path, {**config, "scheduler": {**config["scheduler"], "node_id": f"k{k}"}}, f"k{k}")
        for k in range(2)
    ]
    try:
        for node in nodes:
            node.start()
        ids = await _submit(nodes[0], 400, ["s0", "s1"])
        await _wait_progress(pg_database, 50)
        nodes[1].kill()
        committed = await _committed_steps(pg_database)
        results = await _wait_all(nodes[0], ids, timeout=120)
    finally:
        for node in nodes:
            node.kill()
    assert {r["status"] for r in results.values()} == {"success"}
    _check_calls(services, ids, committed, allowed_reruns=32)


class PrivateServer:
    """A PostgreSQL server of this test's own (``initdb`` into a scratch directory, a free
    port, as the ``postgres`` user when run as root): stopping it stops no other test's
    database, so the suite's other workers go on meanwhile."""

    def __init__(self) -> None:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        if not found:
            unavailable("initdb", "no PostgreSQL server binaries under /usr/lib/postgresql")
        self.bin = found[-1].parent
        self.data = Path(tempfile.mkdtemp(prefix="jobnode-pg-"))
        self.port = free_port()
        self.url = f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bin / program), *args]
        if os.geteuid() == 0:  # the server refuses to run as root
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    def create(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.data, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.data / "server.log"), "-o", options, "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.data, ignore_errors=True)


@pytest.fixture
def private_server() -> Iterator[PrivateServer]:
    server = PrivateServer()
    try:
        server.create()
        server.start()
        yield server
    finally:
        server.remove()


@pytest.mark.postgres
async def test_postgresql_restart_under_load(private_server: PrivateServer, tmp_path, host_service):
    await migrated(private_server.url)
    services = [host_service("count", DELAY=0.01)]
    node = NodeProcess(tmp_path, _config(private_server.url, services))
    statuses_during_outage: list[int] = []
    try:
        node.start()
        ids = await _submit(node, 300, ["s0"])
        private_server.stop()
        try:
            async with node.client() as http:
                for _ in range(3):
                    statuses_during_outage.append((await http.get("/api/jobs")).status_code)
                    health = await http.get("/health")
                    assert health.status_code == 503 and health.json()["status"] == "unhealthy"
                response = await http.post("/api/jobs", json={"containers": ["s0"], "data": {"job": "x"}})
                assert response.status_code == 503
                assert response.json() == {"error": "Database unavailable"}
        finally:
            private_server.start()
        async with node.client() as http:  # the API recovers by itself, without a node restart
            for _ in range(100):
                if (await http.get("/health")).status_code == 200:
                    break
                await asyncio.sleep(0.1)
        ids += await _submit(node, 50, ["s0"])
        results = await _wait_all(node, ids)
    finally:
        node.kill()
    assert set(statuses_during_outage) == {503}
    assert {r["status"] for r in results.values()} == {"success"}
