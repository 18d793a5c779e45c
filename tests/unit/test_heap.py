"""steplog.heap.freeze_heap: what a serving process does to its heap once roles run."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from steplog.heap import YOUNG_COLLECTION_AT, freeze_heap


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restored_gc")
def test_the_start_up_heap_is_frozen_and_young_collections_are_rarer() -> None:
    gc.set_threshold(700, 11, 12)
    freeze_heap()
    assert gc.get_freeze_count() > 1000  # the modules, the test session, ...
    # Only the youngest generation's threshold moves; the older ones are left as set.
    assert gc.get_threshold() == (YOUNG_COLLECTION_AT, 11, 12)
    assert YOUNG_COLLECTION_AT > 700
