"""evolve_all (the replay's fold, changing one private copy) gives exactly the state that
evolve gives one event after the other, over every recorded AWS execution's history."""

from __future__ import annotations

import msgspec
import pytest

from engine.core import events as ev
from engine.core.asl.compile import compile_definition
from engine.core.inmemory import run_in_memory
from engine.core.state import (
    ExecutionState,
    evolve,
    evolve_all,
    initial_state,
)
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
    # Payloads left as JSON text and times as datetimes until the end (a long replay).
    lazy = [ev.decode_event_lazy(ev.encode_event(e)) for e in events]
    folded = evolve_all(start, zip(lazy, stamps, strict=True), lazy=True)
    assert folded == expected
    assert msgspec.json.encode(folded) == msgspec.json.encode(expected)
    folded = evolve_all(middle, zip(lazy[half:], times[half:], strict=True), lazy=True)
    assert folded == expected
    assert msgspec.json.encode(folded) == msgspec.json.encode(expected)
    folded = evolve_all(start, zip(lazy, times, strict=True), lazy=True)
    assert msgspec.json.encode(folded) == msgspec.json.encode(expected)
    assert msgspec.json.encode(middle) == snapshot


def test_an_event_without_a_time_keeps_the_last_time() -> None:
    stamp = "2026-01-01T00:00:00.123Z"
    started = ev.ExecutionStarted(input={}, workflow="wf", version=1, name="n")
    events: list[ev.Event] = [started, ev.PassStateEntered(name="P")]
    state = evolve_all(initial_state("e"), [(events[0], stamp), (events[1], "")])
    assert state == one_by_one(initial_state("e"), events, [stamp, ""])
    assert state.last_event_time == stamp and state.seq == 2


def test_lazy_payloads_decode_to_what_the_events_held() -> None:
    """A payload absent from the JSON (None, omitted) and present ones of every JSON kind
    come out of a lazy `evolve_all` as `decode_event` gives them, also through a Map's
    results (kept per iteration, then made the Map's data)."""
    stamp = "2026-01-01T00:00:00.000Z"
    items = [{"a": 1}, [1, "x"], "s", 2.5, None, True]
    events: list[ev.Event] = [
        ev.ExecutionStarted(input=None, workflow="wf", version=1, name="n"),
        ev.MapStateEntered(name="M", input=items),
        ev.MapStateStarted(name="M", items=items, max_concurrency=0),
    ]
    for i, item in enumerate(items):
        frame = f"M/{i}"
        events += [
            ev.MapIterationStarted(name="M", index=i),
            ev.PassStateEntered(frame=frame, name="P", input=item),
            ev.PassStateExited(frame=frame, name="P", output=item, end=True),
            ev.MapIterationSucceeded(name="M", index=i),
        ]
    events.append(ev.MapStateSucceeded(name="M"))
    stamps = [stamp] * len(events)
    expected = one_by_one(initial_state("e"), events, stamps)
    lazy = [ev.decode_event_lazy(ev.encode_event(e)) for e in events]
    folded = evolve_all(initial_state("e"), zip(lazy, stamps, strict=True), lazy=True)
    assert folded == expected
    assert folded.frames[""].data == items
