from __future__ import annotations

import asyncio
import itertools
import random
import socketserver
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

from tests.support import (
    HostService,
    RunningNode,
    create_pg_database,
    drop_pg_database,
    migrated,
    node_settings,
    own_pg_database,
    serve_node,
    unavailable,
)

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def postgresql_url() -> Iterator[str]:
    """One fresh PostgreSQL database for the whole run, dropped at the end."""
    try:
        url = asyncio.run(create_pg_database())
    except Exception as exc:
        unavailable("PostgreSQL", f"{type(exc).__name__}: {exc}")
    try:
        asyncio.run(migrated(url))
        yield url
    finally:
        asyncio.run(drop_pg_database(url))


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('sqlite') / 'jobnode.db'}"
    asyncio.run(migrated(url))
    return url


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest) -> str:
    """The conformance suite runs unchanged on each backend."""
    return request.getfixturevalue(f"{request.param}_url")


_addresses = itertools.count(1)
_run_octet = random.randrange(1, 250)


@pytest.fixture(params=BACKENDS)
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of this test's own, for node processes: a node claims any pending
    job, so nothing may be shared with other tests."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
        return
    yield from own_pg_database()


@pytest.fixture
def pg_fresh_url() -> Iterator[str]:
    """``fresh_url`` for several node processes: they share PostgreSQL only."""
    yield from own_pg_database()


@pytest.fixture
def client_address() -> str:
    """A loopback address of this test's own: tests share a database, not a client."""
    n = next(_addresses)
    return f"127.{_run_octet}.{n // 250}.{n % 250 + 1}"


@pytest.fixture
def make_node(database_url: str) -> Callable[..., AbstractAsyncContextManager[RunningNode]]:
    def factory(config: dict[str, Any] | None = None) -> AbstractAsyncContextManager[RunningNode]:
        return serve_node(node_settings(database_url, config))

    return factory


@pytest.fixture
async def node(make_node: Callable[..., AbstractAsyncContextManager[RunningNode]]) -> AsyncIterator[RunningNode]:
    async with make_node(STANDARD_CONFIG) as running:
        yield running


class _Acceptor(socketserver.ThreadingTCPServer):
    """A loopback port that accepts connections (and says nothing): up for the node's TCP
    probe of an unmanaged container. Bound at import, so that its URL can be a constant."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), socketserver.BaseRequestHandler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


_STANDARD_PORT = _Acceptor()
#: Where the standard containers are: a port that accepts connections (so the node's probe
#: finds them up) and speaks no HTTP (the scheduler is off: jobs are only stored).
STANDARD_URL = _STANDARD_PORT.url


@pytest.fixture(scope="session", autouse=True)
def standard_port() -> Iterator[str]:
    thread = threading.Thread(target=_STANDARD_PORT.serve_forever, name="standard-port", daemon=True)
    thread.start()
    yield STANDARD_URL
    _STANDARD_PORT.shutdown()
    _STANDARD_PORT.server_close()


#: Unmanaged containers at a port that accepts connections (issue 2 only stores jobs).
STANDARD_CONFIG: dict[str, Any] = {
    "scheduler": {"enabled": False},
    "containers": [
        {"id": "echo", "url": STANDARD_URL, "description": "returns its input"},
        {"id": "inner", "url": STANDARD_URL, "external": False},
        {"id": "prover", "url": STANDARD_URL, "generates_proofs": True},
        {"id": "private", "url": STANDARD_URL, "allowed_ips": ["10.1.0.0/16", "::2"]},
        {"id": "local", "url": STANDARD_URL, "allowed_ips": ["127.0.0.0/8"]},
    ],
}


@pytest.fixture
def root() -> Path:
    return Path(__file__).resolve().parents[1]


@pytest.fixture
def host_service() -> Iterator[Callable[..., HostService]]:
    """Start test services as host processes; all are killed after the test."""
    started: list[HostService] = []

    def start(mode: str, **env: str | float) -> HostService:
        service = HostService(mode, **env)
        started.append(service)
        service.wait_ready()
        return service

    yield start
    for service in started:
        service.stop()


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[None]:
    """The real Docker Engine, the test image built once, no test container left behind."""
    from tests.docker_support import docker_session

    yield from docker_session()
