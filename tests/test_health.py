"""``/health/live`` and ``/health/ready`` (SPEC §11): liveness is the process answering;
readiness is the database answering with its schema at head and the node not stopping."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Connection

from app.db import migrate
from app.health import DRAINING
from tests.conftest import BACKENDS, STANDARD_CONFIG
from tests.helpers import fresh_database
from tests.support import RunningNode, node_settings, serve_node
from tests.test_api_limits import make_unreachable

LIVE = (200, {"status": "live"})
READY = (200, {"status": "ready"})


async def probe(node: RunningNode, path: str) -> tuple[int, dict]:
    async with node.client() as http:
        r = await http.get(path)
        return r.status_code, r.json()


async def test_live_and_ready(node):
    assert await probe(node, "/health/live") == LIVE
    assert await probe(node, "/health/ready") == READY
    assert await probe(node, "/health") == (200, {"status": "healthy"})


async def test_draining_node_is_unready_at_once_and_still_live(make_node):
    async with make_node(STANDARD_CONFIG) as node:
        assert await probe(node, "/health/ready") == READY
        node.node.drain()  # what the SIGTERM handler of `jobnode serve` calls first
        assert await probe(node, "/health/ready") == (503, {"status": "unready", "reason": DRAINING})
        assert await probe(node, "/health/live") == LIVE
        assert await probe(node, "/health") == (200, {"status": "healthy"})  # unchanged


async def test_unreachable_database_is_unready(node, tmp_path):
    await make_unreachable(node, tmp_path)
    status, body = await probe(node, "/health/ready")
    assert (status, body["status"]) == (503, "unready")
    assert body["reason"].startswith("database unreachable: "), body
    assert len(body["reason"]) > len("database unreachable: ") + 5  # names what went wrong
    assert await probe(node, "/health/live") == LIVE


@pytest.fixture(params=BACKENDS)
async def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with fresh_database(request.param, tmp_path) as url:
        yield url


async def test_schema_behind_head_is_unready(fresh_url):
    """A node started before someone downgraded (or a node newer than the schema)."""
    async with serve_node(node_settings(fresh_url, STANDARD_CONFIG)) as node:
        assert await probe(node, "/health/ready") == READY
        config = migrate.alembic_config()

        def downgrade(connection: Connection) -> None:
            config.attributes["connection"] = connection
            command.downgrade(config, "0001")

        async with node.node.database.writer.connect() as connection:
            await connection.run_sync(downgrade)
            await connection.commit()
        head = migrate.head_revision()
        assert await probe(node, "/health/ready") == (
            503,
            {
                "status": "unready",
                "reason": f"database schema at revision 0001, this node needs {head} (run: jobnode db upgrade)",
            },
        )
        await migrate.upgrade(node.node.database)
        assert await probe(node, "/health/ready") == READY
