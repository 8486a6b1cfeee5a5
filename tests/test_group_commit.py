"""Group commit (``app.db.batching``): how items are grouped into flushes. What a failing
flush does to its items is ``test_fate_sharing.py``'s."""

from __future__ import annotations

import asyncio

from app.db.batching import SMALL_FLUSH, GroupCommit


def recording() -> tuple[GroupCommit[int, int], list[list[int]]]:
    flushes: list[list[int]] = []

    async def flush(items: list[int]) -> list[int]:
        flushes.append(list(items))
        await asyncio.sleep(0.01)  # a round trip to the database
        return [item * 10 for item in items]

    return GroupCommit(flush), flushes


async def test_an_item_one_turn_of_the_loop_behind_a_lone_one_shares_its_flush():
    """A lightly loaded node: the second item arrives one turn of the event loop after the
    first started a flush; it goes in with it instead of a statement of its own."""
    group, flushes = recording()
    first = asyncio.ensure_future(group(1))
    await asyncio.sleep(0)  # the first item is queued and its flush started
    second = asyncio.ensure_future(group(2))
    assert await asyncio.gather(first, second) == [10, 20]
    assert flushes == [[1, 2]]


async def test_items_behind_a_flush_under_way_go_in_the_next_one_together():
    group, flushes = recording()
    first = asyncio.ensure_future(group(1))
    await asyncio.sleep(0.005)  # its flush is under way
    rest = [asyncio.ensure_future(group(n)) for n in range(2, 2 + SMALL_FLUSH)]
    assert await asyncio.gather(first, *rest) == [n * 10 for n in range(1, 2 + SMALL_FLUSH)]
    assert flushes == [[1], list(range(2, 2 + SMALL_FLUSH))]


async def test_a_lone_item_is_flushed_even_when_nothing_else_comes():
    group, flushes = recording()
    assert await asyncio.wait_for(group(7), 1) == 70
    assert flushes == [[7]]


async def test_items_arriving_turn_after_turn_join_a_small_flush_for_a_few_turns():
    """Company that keeps coming, an item a turn, is waited for while it comes, up to three
    turns (``SMALL_FLUSH_TURNS``): the first four items share a flush, the later ones go
    in the next."""
    group, flushes = recording()
    calls = []
    for n in range(1, 8):
        calls.append(asyncio.ensure_future(group(n)))
        await asyncio.sleep(0)
    assert await asyncio.gather(*calls) == [n * 10 for n in range(1, 8)]
    assert flushes == [[1, 2, 3, 4], [5, 6, 7]]
