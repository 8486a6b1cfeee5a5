"""The collector's settings for the node's process (``app.heap``): what lives at start is
frozen, the youngest generation collected less often, and cycles made afterwards are still
collected."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from app import heap


@pytest.fixture
def restored() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


class _Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the collector frees it


@pytest.mark.usefixtures("restored")
def test_settle_freezes_what_lives_and_still_collects_cycles() -> None:
    kept = _Node()
    heap.settle()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold()[0] == heap.YOUNG_THRESHOLD
    made_after = _Node()
    gone = weakref.ref(made_after)
    del made_after
    gc.collect()
    assert gone() is None
    assert kept.me is kept
