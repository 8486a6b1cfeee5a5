"""Group commit (``app.db.batching``): how items are grouped into flushes. What a failing
flush does to its items is ``test_fate_sharing.py``'s."""

from __future__ import annotations

import asyncio

from app.db.batching import SMALL_FLUSH, SMALL_FLUSH_TURNS, GroupCommit


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


async def test_a_lane_that_had_company_waits_for_as_much_again():
    """After a flush of three items the lane expects three: a lone item waits for two more,
    each arriving after turns of the loop that brought nothing (within
    ``PATIENCE_SECONDS``), and the three share a flush."""
    group, flushes = recording()
    assert await asyncio.gather(group(1), group(2), group(3)) == [10, 20, 30]
    calls = [asyncio.ensure_future(group(4))]
    for n in (5, 6):
        for _ in range(SMALL_FLUSH_TURNS + 1):
            await asyncio.sleep(0)
        calls.append(asyncio.ensure_future(group(n)))
    assert await asyncio.gather(*calls) == [40, 50, 60]
    assert flushes == [[1, 2, 3], [4, 5, 6]]


async def test_a_lane_waits_for_company_no_longer_than_its_patience():
    """Company that does not come is waited for a while (``PATIENCE_SECONDS``), not for
    ever: the lone item goes alone, and the lane, alone now, waits for nobody after it."""
    group, flushes = recording()
    assert await asyncio.gather(group(1), group(2)) == [10, 20]
    third = asyncio.ensure_future(group(3))
    for _ in range(4 * SMALL_FLUSH_TURNS):
        await asyncio.sleep(0)
    assert flushes == [[1, 2]]  # still waiting for company
    assert await asyncio.wait_for(third, 1) == 30
    assert flushes == [[1, 2], [3]]
    assert await _item_then_another_after_an_empty_turn(group) == [40, 50]
    assert flushes == [[1, 2], [3], [4], [5]]


async def test_a_lone_lane_never_waits_for_company():
    """One client on an idle node: its flushes carry an item each, and an item that
    arrives after an empty turn goes in a flush of its own (its time to result is not
    stretched by a wait for company that never comes)."""
    group, flushes = recording()
    assert await group(7) == 70
    assert await _item_then_another_after_an_empty_turn(group) == [40, 50]
    assert flushes == [[7], [4], [5]]


async def _item_then_another_after_an_empty_turn(group: GroupCommit[int, int]) -> list[int]:
    first = asyncio.ensure_future(group(4))
    await asyncio.sleep(0)  # the first item is queued and its flush started
    await asyncio.sleep(0)  # a turn that brings nothing
    second = asyncio.ensure_future(group(5))
    return list(await asyncio.gather(first, second))
