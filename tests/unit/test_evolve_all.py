"""evolve_all (the replay's fold, changing one private copy) gives exactly the state that
evolve gives one event after the other, over every recorded AWS execution's history."""

from __future__ import annotations

import msgspec
import pytest

from engine.core import events as ev
from engine.core.asl.compile import compile_definition
from engine.core.inmemory import run_in_memory
from engine.core.state import ExecutionState, evolve, evolve_all, initial_state
from engine.core.timestamps import parse_iso
from tests.conformance.cases import load_cases

CASES = load_cases()


def one_by_one(state: ExecutionState, events: list[ev.Event], stamps: list[str]) -> ExecutionState:
    for event, stamp in zip(events, stamps, strict=True):
        state = evolve(state, event, stamp)
    return state


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_evolve_all_gives_the_state_evolve_gives(case: dict) -> None:
    run = run_in_memory(
        compile_definition(case["definition"]),
        case["input"],
        name="conformance",
        workflow="conformance",
        state_machine_type=case.get("state_machine_type", "STANDARD"),
    )
    events, stamps = run.events, run.timestamps
    start = initial_state("e")
    expected = one_by_one(start, events, stamps)
    assert evolve_all(start, zip(events, stamps, strict=True)) == expected
    # Times given as datetimes (as the store loads them) make the same text.
    times = [parse_iso(s) for s in stamps]
    assert evolve_all(start, zip(events, times, strict=True)) == expected
    # From a state part way (a cached state and the events after it), leaving it as it was.
    half = len(events) // 2
    middle = one_by_one(start, events[:half], stamps[:half])
    snapshot = msgspec.json.encode(middle)
    rest = zip(events[half:], times[half:], strict=True)
    assert evolve_all(middle, rest) == expected
    assert msgspec.json.encode(middle) == snapshot


def test_an_event_without_a_time_keeps_the_last_time() -> None:
    stamp = "2026-01-01T00:00:00.123Z"
    started = ev.ExecutionStarted(input={}, workflow="wf", version=1, name="n")
    events: list[ev.Event] = [started, ev.PassStateEntered(name="P")]
    state = evolve_all(initial_state("e"), [(events[0], stamp), (events[1], "")])
    assert state == one_by_one(initial_state("e"), events, [stamp, ""])
    assert state.last_event_time == stamp and state.seq == 2
