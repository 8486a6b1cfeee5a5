"""The stored-jobs generator's ids (``tests/bench/stored.py``, PostgreSQL): random v4 by
default, as the node makes them, and time-ordered v7 on request, so that the measurement of
time-ordered ids can be repeated on a node that does not make them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import asyncpg
import pytest

from tests.bench.procs import asyncpg_dsn
from tests.bench.stored import Layout, pg_job_id

CREATED = datetime(2026, 12, 5, 8, 0, 0, 123456, tzinfo=UTC)


async def _ids(url: str, layout: str, count: int = 200) -> list[uuid.UUID]:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        rows = await conn.fetch(
            f"SELECT {pg_job_id(layout, 't')} AS id FROM (SELECT $1::timestamptz AS t, i "
            "FROM generate_series(1, $2::int) AS i) AS g",
            CREATED,
            count,
        )
    finally:
        await conn.close()
    return [uuid.UUID(str(row["id"])) for row in rows]


def test_stored_jobs_get_the_ids_the_node_makes_unless_told_otherwise() -> None:
    assert Layout(total=10, big_jobs=1, pending=1).ids == "v4"
    assert Layout.for_total(1000).ids == "v4"


async def test_v4_ids_are_random_version_4(postgresql_url: str) -> None:
    ids = await _ids(postgresql_url, "v4")
    assert {i.version for i in ids} == {4}
    assert {i.variant for i in ids} == {uuid.RFC_4122}
    assert len(set(ids)) == len(ids)
    # Random: not all of one creation time's ids share their first 48 bits.
    assert len({i.int >> 80 for i in ids}) > 1


async def test_v7_ids_carry_the_creation_time_and_version_7(postgresql_url: str) -> None:
    ids = await _ids(postgresql_url, "v7")
    assert {i.version for i in ids} == {7}
    assert {i.variant for i in ids} == {uuid.RFC_4122}
    assert len(set(ids)) == len(ids)
    assert {i.int >> 80 for i in ids} == {int(CREATED.timestamp() * 1000)}


def test_an_unknown_id_layout_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown id layout"):
        pg_job_id("v1", "now()")
