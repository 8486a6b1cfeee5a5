"""``server.workers``: several node processes behind one port, as real processes."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from app.db.models import JobStep
from tests.support import NodeProcess
from tests.test_crash import (  # noqa: F401  (fixtures)
    _check_calls,
    _committed_steps,
    _config,
    _submit,
    _wait_all,
    _wait_progress,
    database,
    pg_database,
)

pytestmark = pytest.mark.slow


def _workers(url: str, services: list[Any], workers: int = 2, **scheduler: Any) -> dict[str, Any]:
    config = _config(url, services, node_id="w", **scheduler)
    config["server"] = {**config["server"], "workers": workers}
    return config


def _children(pid: int) -> list[int]:
    """The worker processes of a node (not multiprocessing's resource tracker)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                command = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"spawn_main" in command:
                found.append(int(entry.name))
    return found


def _listening(port: int) -> int:
    """Listening TCP sockets on ``port`` (``/proc/net/tcp``: state 0A)."""
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for line in lines if line.split()[1].endswith(f":{port:04X}") and line.split()[3] == "0A")


def _port_is_closed(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


async def test_two_workers_share_the_work_once_and_stop_together(fresh_url, database, tmp_path, host_service):
    # 20 ms a call: the worker that stores the jobs cannot run all 600 before the other
    # one's poll (0.2 s, the only wake-up between workers on SQLite) finds work.
    services = [host_service("count", DELAY=0.02)]
    node = NodeProcess(tmp_path, _workers(fresh_url, services))
    try:
        node.start()
        assert node.process is not None
        assert len(_children(node.process.pid)) == 2
        ids = await _submit(node, 600, ["s0"])
        async with node.client() as http:  # one waiting read, whichever worker runs the job
            r = await http.get("/api/jobs", params={"id": ids[-1], "wait": "30"})
            assert r.json()[0]["status"] == "success", r.text
        results = await _wait_all(node, ids)
        workers = _children(node.process.pid)
        assert node.terminate(timeout=60) == 0, node.log()[-2000:]
    finally:
        node.kill()
    assert {r["status"] for r in results.values()} == {"success"}
    assert services[0].calls() == {str(i): 1 for i in range(600)}
    async with database.read() as conn:
        by_node = dict((await conn.execute(select(JobStep.node, func.count()).group_by(JobStep.node))).all())
    assert set(by_node) == {"w/0", "w/1"}, f"work not spread over the workers: {by_node}"
    assert _port_is_closed(node.port)
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()], "a worker outlived the node"
    assert "database is locked" not in node.log()


async def test_connections_opened_at_once_are_spread_over_the_workers(
    pg_fresh_url, pg_database, tmp_path, host_service
):
    """32 connections opened together (a load generator's clients) go to both workers,
    about half each: each worker listens on a socket of its own (``SO_REUSEPORT``). On one
    shared socket the worker that woke first accepted all it found waiting (23/9 and
    worse in the benchmark). A job runs where it was submitted (claimed by its INSERT), so
    its step's node says which worker took the connection."""
    node = NodeProcess(tmp_path, _workers(pg_fresh_url, [host_service("count")], max_concurrent_jobs=64))
    clients = [httpx.AsyncClient(base_url=node.url, limits=httpx.Limits(max_connections=1)) for _ in range(32)]
    try:
        node.start()
        deadline = time.monotonic() + 30
        while _listening(node.port) < 2:  # the second worker may still be starting
            assert time.monotonic() < deadline, "the workers do not listen on sockets of their own"
            await asyncio.sleep(0.1)
        await asyncio.gather(*(http.get("/health") for http in clients))  # every connection open
        answers = await asyncio.gather(
            *(
                http.post("/api/jobs", json={"containers": ["s0"], "data": {"job": str(i)}})
                for i, http in enumerate(clients)
            )
        )
        ids = [answer.json()["id"] for answer in answers]
        results = await _wait_all(node, ids)
    finally:
        await asyncio.gather(*(http.aclose() for http in clients))
        node.kill()
    assert {r["status"] for r in results.values()} == {"success"}
    async with pg_database.read() as conn:
        by_node = dict((await conn.execute(select(JobStep.node, func.count()).group_by(JobStep.node))).all())
    assert set(by_node) == {"w/0", "w/1"} and min(by_node.values()) >= 6, f"connections not spread: {by_node}"


async def test_a_killed_worker_is_replaced_and_no_committed_step_runs_again(
    pg_fresh_url, pg_database, tmp_path, host_service
):
    services = [host_service("count", DELAY=0.002) for _ in range(2)]
    node = NodeProcess(tmp_path, _workers(pg_fresh_url, services, lease_seconds=2))
    try:
        node.start()
        assert node.process is not None
        ids = await _submit(node, 400, ["s0", "s1"])
        await _wait_progress(pg_database, 30)
        victim = _children(node.process.pid)[0]
        os.kill(victim, signal.SIGKILL)
        committed = await _committed_steps(pg_database)
        deadline = time.monotonic() + 30
        while len(_children(node.process.pid)) < 2:
            assert time.monotonic() < deadline, "the killed worker was not replaced"
            time.sleep(0.1)
        assert victim not in _children(node.process.pid)
        # (A connection the killed worker had accepted was reset; new ones are served.)
        results = await _wait_all(node, ids)
    finally:
        node.kill()
    assert {r["status"] for r in results.values()} == {"success"}
    _check_calls(services, ids, committed, allowed_reruns=16)


async def test_killing_the_parent_stops_its_workers(fresh_url, tmp_path, host_service):
    node = NodeProcess(tmp_path, _workers(fresh_url, [host_service("count")]))
    node.start()
    assert node.process is not None
    workers = _children(node.process.pid)
    node.kill()
    deadline = time.monotonic() + 30
    while [pid for pid in workers if Path(f"/proc/{pid}").exists() and "Z" not in _state(pid)]:
        assert time.monotonic() < deadline, "workers kept running without their parent"
        time.sleep(0.1)
    assert _port_is_closed(node.port)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def test_a_port_in_use_is_refused_though_workers_share_theirs():
    """The workers share the parent's port (``SO_REUSEPORT``), but the parent binds it alone
    first: a port another process listens on, or another node's parent holds, fails."""
    from app.workers import bind, own_socket

    parent = bind("127.0.0.1", 0)
    port = parent.getsockname()[1]
    worker = own_socket(parent.dup())
    worker.listen()
    try:
        with pytest.raises(OSError):
            bind("127.0.0.1", port)  # a second node on the same port
    finally:
        worker.close()
        parent.close()
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        with pytest.raises(OSError):
            bind("127.0.0.1", other.getsockname()[1])
