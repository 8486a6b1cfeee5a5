"""``/info``'s pending counts with a large backlog (``app.jobs.backlog_counts``): a count
answers for a while and the requests that come when it is older share the next one, so
that clients asking ``/info`` in a loop cannot take the database's CPU from the jobs; below
``LARGE`` unfinished jobs each request counts, exact (``test_api_node``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import httpx

from app.jobs.backlog_counts import LARGE
from tests.bench.procs import asyncpg_dsn
from tests.bench.scale import set_backlog
from tests.helpers import submit
from tests.support import migrated, node_settings, serve_node

Counts = dict[str, int]
CONFIG: dict[str, Any] = {"scheduler": {"enabled": False}, "containers": [{"id": "echo", "url": "http://127.0.0.1:9"}]}


async def _info(http: httpx.AsyncClient) -> Counts:
    r = await http.get("/info")
    assert r.status_code == 200, r.text
    pending: Counts = r.json()["pending"]
    return pending


def _counted(
    count: Callable[[], Awaitable[Counts]], calls: list[int], gate: asyncio.Event | None = None
) -> Callable[[], Awaitable[Counts]]:
    """The node's own count of the database, each call noted (and held until ``gate``)."""

    async def counting() -> Counts:
        calls.append(1)
        if gate is not None:
            await gate.wait()
        return await count()

    return counting


async def _pending(url: str, jobs: int) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await set_backlog(conn, jobs, "v4")
    finally:
        await conn.close()


async def test_a_large_backlog_is_counted_once_for_the_requests_that_come_meanwhile(
    pg_fresh_url: str, client_address: str
) -> None:
    await migrated(pg_fresh_url)
    await _pending(pg_fresh_url, LARGE)
    async with serve_node(node_settings(pg_fresh_url, CONFIG)) as node, node.client(client_address) as http:
        counts = node.node.jobs._unfinished
        calls: list[int] = []
        counts._count = _counted(counts._count, calls)
        counts.seconds = 60.0  # no count goes stale while the test runs, however slow the machine
        assert await _info(http) == {"offchain": LARGE, "onchain": 0}
        await submit(http)
        # The count answers every request until it is older than ``seconds``.
        assert await asyncio.gather(*(_info(http) for _ in range(8))) == [{"offchain": LARGE, "onchain": 0}] * 8
        assert len(calls) == 1
        # Stale: the requests that come while the next count runs wait for it, and only it.
        gate = asyncio.Event()
        counts._count = _counted(node.node.jobs._count_unfinished, calls, gate)
        counts.seconds, counts.share = 0.0, 1.0  # stale as soon as it answered
        waiting = [asyncio.create_task(node.node.jobs.pending_counts()) for _ in range(8)]
        for _ in range(5):
            await asyncio.sleep(0)
        gate.set()
        assert await asyncio.gather(*waiting) == [{"offchain": LARGE + 1, "onchain": 0}] * 8
        assert len(calls) == 2


async def test_a_small_backlog_is_counted_for_each_request(pg_fresh_url: str, client_address: str) -> None:
    await migrated(pg_fresh_url)
    await _pending(pg_fresh_url, LARGE - 2)
    async with serve_node(node_settings(pg_fresh_url, CONFIG)) as node, node.client(client_address) as http:
        node.node.jobs._unfinished.seconds = 60.0
        assert await _info(http) == {"offchain": LARGE - 2, "onchain": 0}
        await submit(http)
        assert await _info(http) == {"offchain": LARGE - 1, "onchain": 0}
        # Large from here: the count that found it answers the next request.
        await submit(http)
        assert await _info(http) == {"offchain": LARGE, "onchain": 0}
        await submit(http)
        assert await _info(http) == {"offchain": LARGE, "onchain": 0}


async def test_the_queue_numbers_of_a_large_backlog_are_shared_the_same_way(
    pg_fresh_url: str, client_address: str
) -> None:
    """``/metrics`` and the dashboard read the queue's numbers, which count every unfinished
    job twice (150 ms a scrape with 450,000 pending)."""
    await migrated(pg_fresh_url)
    await _pending(pg_fresh_url, LARGE)
    async with serve_node(node_settings(pg_fresh_url, CONFIG)) as node, node.client(client_address) as http:
        numbers = node.node.numbers
        numbers._queue.seconds = 60.0
        assert (await numbers.queue()).queue_depth == LARGE
        await submit(http)
        assert (await numbers.queue()).queue_depth == LARGE
        numbers._queue.seconds, numbers._queue.share = 0.0, 1.0
        assert (await numbers.queue()).queue_depth == LARGE + 1


async def test_a_large_count_answers_the_longer_the_more_it_cost(pg_fresh_url: str, client_address: str) -> None:
    """A count of a backlog answers for what it took divided by ``share``, so that counting
    takes no more than that share of the time however large the backlog (the dashboard's
    sampler counts every 5 s in every node process: 0.28 s of the database's time a count
    with 1 M pending)."""
    await migrated(pg_fresh_url)
    await _pending(pg_fresh_url, LARGE)
    async with serve_node(node_settings(pg_fresh_url, CONFIG)) as node, node.client(client_address) as http:
        counts = node.node.jobs._unfinished
        calls: list[int] = []
        count = counts._count

        async def dear() -> Counts:
            await asyncio.sleep(0.2)  # as a count of a backlog a hundred times larger
            return await count()

        counts._count = _counted(dear, calls)
        counts.seconds = 0.0
        assert await _info(http) == {"offchain": LARGE, "onchain": 0}
        await submit(http)
        # 0.2 s at a share of 1 %: the count answers for 20 s.
        assert [await _info(http) for _ in range(3)] == [{"offchain": LARGE, "onchain": 0}] * 3
        assert len(calls) == 1
        counts.share = 1.0  # the same count at a share of all the time: stale already
        assert await _info(http) == {"offchain": LARGE + 1, "onchain": 0}
        assert len(calls) == 2
