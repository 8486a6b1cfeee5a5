"""Real parts for the tests: databases, a node served over real sockets, clients bound
to chosen loopback addresses.

``JOBNODE_REQUIRE_SERVICES=1`` (set by ``.ci/run``) turns "PostgreSQL/Docker is not
here" from a skip into a failure, so CI cannot pass without running those tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from app.config.loading import settings_from_dict
from app.config.settings import Settings
from app.http.wire import server_options
from app.node import Node

PG_ADMIN_URL = os.environ.get("JOBNODE_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")
REQUIRE_SERVICES = os.environ.get("JOBNODE_REQUIRE_SERVICES", "") not in ("", "0", "false")


def unavailable(what: str, why: str) -> None:
    """Skip locally, fail in CI."""
    import pytest  # here, not at the top: the benchmark imports this module and runs without pytest

    message = f"{what} is not available: {why}"
    if REQUIRE_SERVICES:
        pytest.fail(message + " (JOBNODE_REQUIRE_SERVICES is set, so this is a failure)", pytrace=False)
    pytest.skip(message)


def _asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def create_pg_database(admin_url: str = PG_ADMIN_URL, prefix: str = "jobnode_test") -> str:
    """A fresh database for this test run; returns its SQLAlchemy URL."""
    import asyncpg

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(_asyncpg_dsn(admin_url), timeout=5)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return admin_url.rsplit("/", 1)[0] + "/" + name


async def drop_pg_database(url: str, admin_url: str = PG_ADMIN_URL) -> None:
    import asyncpg

    name = url.rsplit("/", 1)[1]
    conn = await asyncpg.connect(_asyncpg_dsn(admin_url), timeout=5)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def own_pg_database() -> Iterator[str]:
    """A PostgreSQL database of the caller's own, dropped afterwards, for sync fixtures of
    process-level tests (``yield from own_pg_database()``); unavailable when the server is not."""
    try:
        url = asyncio.run(create_pg_database())
    except Exception as exc:
        unavailable("PostgreSQL", str(exc))
    yield url
    asyncio.run(drop_pg_database(url))


async def migrated(url: str) -> None:
    """Apply every migration to the database at ``url``."""
    from app.db import migrate
    from app.db.engine import Database

    database = Database(url)
    try:
        await migrate.upgrade(database)
    finally:
        await database.dispose()


@asynccontextmanager
async def sqlite_threads_joined() -> AsyncIterator[None]:
    """Joins the aiosqlite threads started inside it. aiosqlite stops a connection that
    failed to open without awaiting the stop, so that thread's last answer could reach the
    test's event loop after it closed (a warning pinned on the next test)."""
    before = set(threading.enumerate())
    try:
        yield
    finally:
        for thread in set(threading.enumerate()) - before:
            if thread.name.endswith("(_connection_worker_thread)"):
                await asyncio.to_thread(thread.join, 5)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def node_settings(database_url: str, config: dict[str, Any] | None = None) -> Settings:
    raw: dict[str, Any] = {"manage_containers": False, "containers": []}
    raw.update(config or {})
    raw.setdefault("database", {})["url"] = database_url
    return settings_from_dict(raw, environ={})


class RunningNode:
    """A node served by uvicorn on a dual-stack socket: IPv4 peers arrive IPv4-mapped."""

    def __init__(self, node: Node, port: int) -> None:
        self.node = node
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.url6 = f"http://[::1]:{port}"

    def client(self, address: str = "127.0.0.1", **kwargs: Any) -> httpx.AsyncClient:
        """An HTTP client whose requests come from ``address`` (any 127.x.y.z, or ::1)."""
        base = self.url6 if ":" in address else self.url
        transport = httpx.AsyncHTTPTransport(local_address=address)
        return httpx.AsyncClient(base_url=base, transport=transport, timeout=30, **kwargs)


@asynccontextmanager
async def serve_node(settings: Settings) -> AsyncIterator[RunningNode]:
    node = Node(settings)
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # uvicorn sets TCP_NODELAY on sockets it binds itself, not on one handed to it: without
    # it every response waits out delayed ACKs (~40 ms).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("::", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(node.app(), proxy_headers=False, log_level="warning", lifespan="on", **server_options())
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            # uvicorn exits the process (SystemExit) when start-up fails: keep that a plain
            # test error, or it takes the event loop of every later test down with it.
            try:
                task.result()
            except SystemExit as exc:
                raise RuntimeError(f"node start-up failed (uvicorn exit {exc.code})") from None
            raise RuntimeError("node did not start")
        await asyncio.sleep(0.01)
    try:
        yield RunningNode(node, port)
    finally:
        server.should_exit = True
        await task
        sock.close()


SERVICE = Path(__file__).resolve().parent / "services" / "server.py"


class HostService:
    """The container-protocol test service run as a plain process (an unmanaged container)."""

    def __init__(self, mode: str, **env: str | float) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environment = {**os.environ, "MODE": mode, "PORT": str(self.port), "HOST": "127.0.0.1"}
        environment.update({k: str(v) for k, v in env.items()})
        self.process = subprocess.Popen(
            [sys.executable, str(SERVICE)], env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return
            time.sleep(0.02)
        raise RuntimeError(f"test service on {self.port} did not start")

    def calls(self) -> dict[str, int]:
        return httpx.get(f"{self.url}/calls", timeout=5).json()

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(5)


async def wait_finished(
    http: httpx.AsyncClient, job_ids: list[str], timeout: float = 30.0, intermediate: bool = True
) -> dict[str, dict[str, Any]]:
    """Poll until every job left ``running``; returns the results by id."""
    deadline = time.monotonic() + timeout
    pending = list(job_ids)
    done: dict[str, dict[str, Any]] = {}
    while pending:
        for start in range(0, len(pending), 500):
            params = [("id", i) for i in pending[start : start + 500]]
            if intermediate:
                params.append(("intermediate", "true"))
            response = await http.get("/api/jobs", params=params)
            assert response.status_code == 200, response.text
            for result in response.json():
                if result["status"] != "running":
                    done[result["id"]] = result
        pending = [i for i in pending if i not in done]
        if pending:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(pending)} jobs still running after {timeout} s")
            await asyncio.sleep(0.02)
    return done


JOBNODE = Path(sys.executable).parent / "jobnode"


def run_jobnode(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``jobnode ARGS`` as a user runs it, with only ``env`` of the JOBNODE_* variables (the
    rest of this environment, PYTHONPATH included, is kept: it runs this tree's code)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("JOBNODE_")}
    return subprocess.run(
        [str(JOBNODE), *args], capture_output=True, text=True, timeout=120, cwd=cwd, env={**environ, **env}
    )


class NodeProcess:
    """``jobnode serve`` as a real process, for crash, restart and multi-node tests."""

    def __init__(self, directory: Path, config: dict[str, Any], name: str = "node", port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = {**config, "server": {**config.get("server", {}), "port": self.port}}
        self.config_path = directory / f"{name}.json"
        self.config_path.write_text(json.dumps(self.config))
        self.log_path = directory / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> NodeProcess:
        return self.spawn().wait_healthy(timeout)

    def spawn(self) -> NodeProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [str(JOBNODE), "serve", "--config", str(self.config_path)], stdout=log, stderr=subprocess.STDOUT
        )
        return self

    def wait_healthy(self, timeout: float = 60.0) -> NodeProcess:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"node exited with {self.process.returncode}: {self.log()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"node did not become healthy: {self.log()[-2000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def terminate(self, timeout: float = 60.0) -> int:
        assert self.process is not None
        self.process.terminate()
        return self.process.wait(timeout)

    def client(self, address: str = "127.0.0.1") -> httpx.AsyncClient:
        transport = httpx.AsyncHTTPTransport(local_address=address, retries=3)
        return httpx.AsyncClient(base_url=self.url, transport=transport, timeout=30)


class PortListener:
    """A loopback TCP port that accepts connections and closes them: what the node's TCP
    probe of an unmanaged container sees as a container that is up. ``open()`` and
    ``close()`` it to make the container come and go; the port stays the same."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: asyncio.Server | None = None

    async def open(self) -> PortListener:
        self._server = await asyncio.start_server(self._refuse_to_talk, "127.0.0.1", self.port, reuse_address=True)
        return self

    async def close(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            server.close()
            await server.wait_closed()

    @staticmethod
    def _refuse_to_talk(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()
