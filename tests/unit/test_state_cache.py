"""The engine's state cache is bounded in bytes as well as in states (issue #13)."""

from __future__ import annotations

from uuid import UUID, uuid4

import msgspec

from engine.core.state import ExecutionState, initial_state
from engine.loops.engine_loop import StateCache


def state(execution_id: UUID, payload: int) -> ExecutionState:
    s = initial_state(execution_id)
    s.input = "x" * payload
    return s


def size(s: ExecutionState) -> int:
    return len(msgspec.json.encode(s))


def test_the_oldest_states_go_when_the_bytes_run_out() -> None:
    ids = [uuid4() for _ in range(12)]
    one = size(state(ids[0], 1000))
    cache = StateCache(size=100, max_bytes=one * 10 + one // 2)
    for execution_id in ids:
        cache.put(execution_id, state(execution_id, 1000))
    assert len(cache) == 10 and cache.bytes == 10 * one <= cache.max_bytes
    assert [cache.get(i) is not None for i in ids] == [False] * 2 + [True] * 10


def test_a_state_used_again_is_kept_longer() -> None:
    ids = [uuid4() for _ in range(11)]
    one = size(state(ids[0], 500))
    cache = StateCache(size=100, max_bytes=10 * one + one // 2)
    for execution_id in ids[:10]:
        cache.put(execution_id, state(execution_id, 500))
    assert cache.get(ids[0]) is not None  # now the newest
    cache.put(ids[10], state(ids[10], 500))
    assert cache.get(ids[0]) is not None and cache.get(ids[1]) is None


def test_a_state_put_again_is_counted_once_at_its_new_size() -> None:
    execution_id = uuid4()
    cache = StateCache(size=10, max_bytes=1_000_000)
    cache.put(execution_id, state(execution_id, 100))
    bigger = state(execution_id, 5000)
    cache.put(execution_id, bigger)
    assert len(cache) == 1 and cache.bytes == size(bigger)
    cache.drop(execution_id)
    assert len(cache) == 0 and cache.bytes == 0
    cache.drop(execution_id)  # dropping what is not there changes nothing
    assert cache.bytes == 0


def test_a_state_larger_than_a_tenth_of_the_budget_is_not_kept() -> None:
    small, large = uuid4(), uuid4()
    cache = StateCache(size=10, max_bytes=10_000)
    cache.put(small, state(small, 100))
    cache.put(large, state(large, 2_000))
    assert cache.get(large) is None and cache.get(small) is not None
    assert cache.bytes == size(state(small, 100))


def test_the_count_of_states_still_bounds_it() -> None:
    ids = [uuid4() for _ in range(4)]
    cache = StateCache(size=2, max_bytes=10_000_000)
    for execution_id in ids:
        cache.put(execution_id, state(execution_id, 10))
    assert len(cache) == 2 and cache.get(ids[0]) is None and cache.get(ids[3]) is not None
    assert cache.bytes == 2 * size(state(ids[0], 10))


def test_no_budget_keeps_nothing() -> None:
    execution_id = uuid4()
    cache = StateCache(size=10, max_bytes=0)
    cache.put(execution_id, state(execution_id, 1))
    assert len(cache) == 0 and cache.get(execution_id) is None
