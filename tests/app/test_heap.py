"""app.heap.settle: the heap the app keeps for its lifetime leaves the collector's view; nothing is kept for good."""

from __future__ import annotations

import gc
import weakref

import pytest

from app.heap import settle


class Node:
    """An object in a cycle with itself: only the cycle collector can free it."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture(autouse=True)
def unfrozen():
    yield
    gc.unfreeze()  # the rest of the test session keeps an ordinary heap


def test_settle_freezes_what_is_alive_and_the_next_settle_frees_what_was_dropped_since():
    node = Node()
    ref = weakref.ref(node)
    frozen = settle()
    assert frozen > 0 and gc.get_freeze_count() > 0
    del node
    gc.collect()
    assert ref() is not None, "ordinary collections skip the frozen heap (the point of settling)"
    settle()
    assert ref() is None, "a settle looks at everything an earlier one froze, so a dropped cycle is freed"


def test_objects_made_after_a_settle_are_collected_as_usual():
    settle()
    node = Node()
    ref = weakref.ref(node)
    del node
    gc.collect()
    assert ref() is None
