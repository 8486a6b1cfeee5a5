"""Helpers of the operator tests (job detail, cancel/retry, metrics, CLI, dashboard)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import insert, update

from app.clock import utcnow
from app.db import migrate
from app.db.engine import Database
from app.db.models import Job, JobStatus, JobStep
from tests.support import create_pg_database, drop_pg_database, unavailable

T = TypeVar("T")
TOKEN = "operator-s3cret"


def scheduled(*containers: dict[str, Any], server: dict[str, Any] | None = None, **scheduler: Any) -> dict[str, Any]:
    """A node config that runs jobs: short leases (a cancel is noticed within lease/3)."""
    config: dict[str, Any] = {
        "scheduler": {"poll_interval": 0.2, "lease_seconds": 0.6, **scheduler},
        "containers": list(containers),
    }
    if server:
        config["server"] = server
    return config


def container(cid: str, url: str, **extra: Any) -> dict[str, Any]:
    return {"id": cid, "url": url, **extra}


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def wait_for(check: Callable[[], Awaitable[T]], timeout: float = 10.0, interval: float = 0.02) -> T:
    """Poll ``check`` until it returns something truthy; returns that."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met after {timeout} s (last value {value!r})")
        await asyncio.sleep(interval)


@asynccontextmanager
async def fresh_database(backend: str, directory: Path) -> AsyncIterator[str]:
    """A new migrated database of its own (the CLI counts and re-queues every job)."""
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{directory / 'operator.db'}"
        drop = None
    else:
        try:
            url = await create_pg_database()
        except Exception as exc:
            unavailable("PostgreSQL", f"{type(exc).__name__}: {exc}")
        drop = url
    database = Database(url)
    try:
        await migrate.upgrade(database)
    finally:
        await database.dispose()
    try:
        yield url
    finally:
        if drop is not None:
            await drop_pg_database(drop)


async def add_job(
    database: Database,
    job_id: str,
    *,
    client: str = "127.0.0.1",
    containers: list[str] | None = None,
    status: str = JobStatus.PENDING,
    steps: list[dict[str, Any]] = (),  # type: ignore[assignment]
    created_at: datetime | None = None,
    finished_at: datetime | None = None,
    data: dict[str, Any] | None = None,
    **columns: Any,
) -> None:
    """A job row (and step rows ``{"container", "output"|"error"}``) as the node would have written them."""
    now = created_at or utcnow()
    if finished_at is None and status in JobStatus.FINISHED:
        finished_at = now
    async with database.write() as conn:
        await conn.execute(
            insert(Job).values(
                id=job_id,
                client=client,
                source="offchain",
                containers=containers or ["echo"],
                input=data if data is not None else {"x": 1},
                requires_proof=False,
                status=status,
                attempts=1 if status != JobStatus.PENDING else 0,
                stream=False,
                run_after=now,
                created_at=now,
                started_at=None if status == JobStatus.PENDING else now,
                finished_at=finished_at,
                **columns,
            )
        )
        for position, step in enumerate(steps):
            await conn.execute(
                insert(JobStep).values(
                    job_id=job_id,
                    position=position,
                    container=step["container"],
                    output=step.get("output"),
                    error=step.get("error"),
                    attempt=1,
                    node="test-node",
                    started_at=now,
                    finished_at=finished_at or now,
                )
            )


async def set_job(database: Database, job_id: str, **values: Any) -> None:
    async with database.write() as conn:
        await conn.execute(update(Job).where(Job.id == job_id).values(**values))


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """``{(sample name, labels): value}`` of a Prometheus text exposition."""
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def metric(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """One sample's value; 0 when the series does not exist (yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)
