"""Small helpers shared by the API conformance tests (not fixtures: see conftest.py)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, insert, select, update

from app.clock import utcnow
from app.db.engine import Database
from app.db.models import Job, JobStatus, JobStep
from tests.support import create_pg_database, drop_pg_database, unavailable

#: A param value that ``assert_error`` reads as "the body has no params key".
NO_PARAMS: Any = object()


def job(*containers: str, data: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """A JobRequest body."""
    return {"containers": list(containers), "data": {"x": 1} if data is None else data, **extra}


def other_address(address: str, k: int = 1) -> str:
    """Another loopback address of this test only: ``127.<249+k>.c.d``.

    ``client_address`` is ``127.<run>.c.d`` with ``<run>`` below 250 and ``c.d`` unique
    per test, so these never belong to another test of the run.
    """
    assert 1 <= k <= 5
    _, _, c, d = address.split(".")
    return f"127.{249 + k}.{c}.{d}"


def assert_uuid4(value: Any) -> str:
    assert isinstance(value, str), value
    parsed = uuid.UUID(value)
    assert parsed.version == 4 and str(parsed) == value, value
    return value


def assert_error(response: httpx.Response, status: int, error: str, params: Any = NO_PARAMS) -> None:
    """The exact error body: ``{"error"}`` or ``{"error", "params"}``, as JSON."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    expected: dict[str, Any] = {"error": error}
    if params is not NO_PARAMS:
        expected["params"] = params
    assert response.json() == expected


def assert_invalid_request(body: dict[str, Any], field: str | None) -> None:
    """A 400 ``Invalid job request`` whose reason names ``field`` (when there is one)."""
    assert body.get("error") == "Invalid job request", body
    assert set(body) == {"error", "params"} and set(body["params"]) == {"reason"}, body
    reason = body["params"]["reason"]
    assert isinstance(reason, str) and reason, body
    if field is not None:
        assert field in reason, f"reason {reason!r} does not name {field!r}"


async def submit(http: httpx.AsyncClient, body: Any = None, **kwargs: Any) -> str:
    """POST /api/jobs that must be accepted; returns the new job id."""
    r = await http.post("/api/jobs", json=job("echo") if body is None else body, **kwargs)
    assert r.status_code == 200, r.text
    assert set(r.json()) == {"id"}, r.text
    return assert_uuid4(r.json()["id"])


async def submit_batch(http: httpx.AsyncClient, bodies: list[Any], **kwargs: Any) -> list[dict[str, Any]]:
    r = await http.post("/api/jobs/batch", json=bodies, **kwargs)
    assert r.status_code == 200, r.text
    answers = r.json()
    assert isinstance(answers, list) and len(answers) == len(bodies), answers
    return answers


async def listed(http: httpx.AsyncClient, **params: Any) -> list[str]:
    """GET /api/jobs without ids: this client's job ids."""
    r = await http.get("/api/jobs", params=params)
    assert r.status_code == 200, r.text
    return r.json()


async def results(http: httpx.AsyncClient, *ids: str, **params: Any) -> list[dict[str, Any]]:
    """GET /api/jobs?id=…: results of those ids."""
    r = await http.get("/api/jobs", params=[("id", i) for i in ids] + list(params.items()))
    assert r.status_code == 200, r.text
    return r.json()


async def jobs_of_client(database: Database, client: str) -> int:
    """How many rows the database holds for ``client`` (straight from SQL)."""
    async with database.read() as conn:
        return (await conn.execute(select(func.count()).select_from(Job).where(Job.client == client))).scalar_one()


async def finish(database: Database, job_id: str, status: str, steps: list[dict[str, Any]]) -> None:
    """Write what the scheduler would have: a status and step rows ``{"container", "output"|"error"}``."""
    now = utcnow()
    async with database.write() as conn:
        finished_at = now if status in JobStatus.FINISHED else None
        await conn.execute(update(Job).where(Job.id == job_id).values(status=status, finished_at=finished_at))
        if steps:
            await conn.execute(
                insert(JobStep),
                [
                    {
                        "job_id": job_id,
                        "position": position,
                        "container": step["container"],
                        "output": step.get("output"),
                        "error": step.get("error"),
                        "attempt": 1,
                        "started_at": now,
                        "finished_at": now,
                    }
                    for position, step in enumerate(steps)
                ],
            )


@asynccontextmanager
async def fresh_database(backend: str, directory: Path) -> AsyncIterator[str]:
    """The URL of a database with nothing in it: a new SQLite file, or a new PostgreSQL
    database that is dropped afterwards."""
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{directory / 'fresh.db'}"
        return
    try:
        url = await create_pg_database()
    except Exception as exc:
        unavailable("PostgreSQL", f"{type(exc).__name__}: {exc}")
    try:
        yield url
    finally:
        await drop_pg_database(url)
