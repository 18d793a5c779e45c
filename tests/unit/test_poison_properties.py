"""No execution is stranded by its own data, checked with hypothesis.

For random small definitions whose number, time and data fields read values from the
input (huge numbers, far timestamps, strings with NUL or escaped surrogates, wrong
types) and random inputs, run through the pure core (engine.core.inmemory):

- decide never raises (run_in_memory would propagate it);
- every execution ends within a bounded number of decisions;
- every event it records can be encoded (so the store is never handed a value the
  encoder refuses), and the fold of the events is the state decide returned.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from engine.core import events as ev
from engine.core.asl.compile import compile_definition
from engine.core.decide import MAX_HISTORY_EVENTS
from engine.core.inmemory import TaskError, echo, run_in_memory
from engine.core.state import ExecutionState, evolve, initial_state
from engine.errors import InvalidDefinition

EXECUTION_ID = "00000000-0000-4000-8000-0000000000cc"
FIELDS = ("a", "b", "c", "s", "t", "arr")

# --- values: what the input's fields hold ------------------------------------------------

EXTREME_NUMBERS = st.sampled_from(
    [0, 1, -1, 2**31, 2**63 - 1, 2**63, 10**30, -(10**30), 1e300, -1e300, 1.5, 5e-324, 1e15]
)
TIMESTAMPS = st.sampled_from(
    [
        "2026-01-01T00:00:10Z",
        "1970-01-01T00:00:00Z",
        "9999-12-31T23:59:59Z",
        "9999-12-31T23:59:59-05:00",
        "0001-01-01T00:00:00+01:00",
        "99999-01-01T00:00:00Z",
        "2026-13-01T00:00:00Z",
        "not a time",
    ]
)
ODD_STRINGS = st.sampled_from(
    [
        "",
        "a,b",
        '"\\u0000"',  # a JSON text whose value holds a NUL
        '"\\ud800"',  # a JSON text whose value is a lone surrogate
        '{"k": [1, 2]}',
        "[" * 50 + "]" * 50,
        "1e400",
        "SGVsbG8=",
        "\x00",
    ]
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    EXTREME_NUMBERS,
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    TIMESTAMPS,
    ODD_STRINGS,
    st.text(max_size=8),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(FIELDS), inner, max_size=3)
    ),
    max_leaves=8,
)
# Each field mostly holds what the states read it as (so the odd values reach the
# number, time and intrinsic code), sometimes anything.
NUMBERISH = st.one_of(EXTREME_NUMBERS, st.integers(), VALUES)
INPUTS = st.fixed_dictionaries(
    {},
    optional={
        "a": NUMBERISH,
        "b": NUMBERISH,
        "c": NUMBERISH,
        "s": st.one_of(ODD_STRINGS, VALUES),
        "t": st.one_of(TIMESTAMPS, VALUES),
        "arr": st.one_of(st.lists(SCALARS, max_size=4), VALUES),
    },
)

# --- states that read those values --------------------------------------------------------

INTRINSICS = [
    "States.StringToJson($.s)",
    "States.JsonToString($.a)",
    "States.MathAdd($.a, $.b)",
    "States.MathRandom($.a, $.b)",
    "States.ArrayRange($.a, $.b, $.c)",
    "States.ArrayGetItem($.arr, $.a)",
    "States.ArrayPartition($.arr, $.a)",
    "States.ArrayLength($.arr)",
    "States.ArrayUnique($.arr)",
    "States.ArrayContains($.arr, $.a)",
    "States.Format('{} and {}', $.a, $.s)",
    "States.StringSplit($.s, ',')",
    "States.Base64Encode($.s)",
    "States.Base64Decode($.s)",
    "States.Hash($.s, 'SHA-256')",
    "States.UUID()",
    "States.Array($.a, $.t)",
]
JSONATA = [
    "{% $states.input.a + $states.input.b %}",
    "{% $toMillis($states.input.t) %}",
    "{% $fromMillis($states.input.a) %}",
    "{% $power($states.input.a, $states.input.b) %}",
    "{% $string($states.input.a) %}",
    "{% $number($states.input.s) %}",
    "{% $parse($states.input.s) %}",
    "{% $states.input.a * 1e300 %}",
    "{% $round($states.input.a, $states.input.b) %}",
]
PATHS = st.sampled_from([f"$.{f}" for f in FIELDS])


def _pass(draw: st.DrawFn) -> dict[str, Any]:
    if draw(st.booleans()):
        return {
            "Type": "Pass",
            "QueryLanguage": "JSONata",
            "Output": {"v": draw(st.sampled_from(JSONATA)), "a": "{% $states.input.a %}"},
        }
    call = draw(st.sampled_from(INTRINSICS))
    return {"Type": "Pass", "Parameters": {"v.$": call, "a.$": "$"}, "OutputPath": "$.a"}


def _wait(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["SecondsPath", "TimestampPath", "JSONataSeconds"]))
    if kind == "JSONataSeconds":
        return {"Type": "Wait", "QueryLanguage": "JSONata", "Seconds": "{% $states.input.a %}"}
    return {"Type": "Wait", kind: draw(PATHS)}


def _task(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {
        "Type": "Task",
        "Resource": draw(st.sampled_from(["test:echo", "test:flaky"])),
    }
    if draw(st.booleans()):
        body["Parameters"] = {"v.$": draw(st.sampled_from(INTRINSICS)), "a.$": "$.a"}
        body["ResultPath"] = "$.r"
    for field in ("TimeoutSecondsPath", "HeartbeatSecondsPath"):
        if draw(st.booleans()):
            body[field] = draw(PATHS)
    if draw(st.booleans()):
        retrier: dict[str, Any] = {
            "ErrorEquals": ["States.ALL"],
            "IntervalSeconds": draw(st.sampled_from([1, 3600, 99999999])),
            "MaxAttempts": draw(st.integers(0, 4)),
            "BackoffRate": draw(st.sampled_from([1.0, 2.0, 1e6, 1e300])),
        }
        if draw(st.booleans()):
            retrier["JitterStrategy"] = "FULL"
        body["Retry"] = [retrier]
    if draw(st.booleans()):
        body["Catch"] = [{"ErrorEquals": ["States.ALL"], "Next": "Done"}]
    return body


def _choice(draw: st.DrawFn, nxt: str) -> dict[str, Any]:
    rule = draw(
        st.sampled_from(
            [
                {"Variable": "$.a", "NumericGreaterThanPath": "$.b"},
                {"Variable": "$.t", "TimestampLessThan": "2026-06-01T00:00:00Z"},
                {"Variable": "$.t", "TimestampGreaterThanPath": "$.s"},
                {"Variable": "$.s", "StringMatches": "a*"},
                {"Variable": "$.a", "IsNumeric": True},
            ]
        )
    )
    return {"Type": "Choice", "Choices": [{**rule, "Next": "Done"}], "Default": nxt}


def _map(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {
        "Type": "Map",
        "ItemsPath": draw(st.sampled_from(["$.arr", "$.a", "$"])),
        "ResultPath": "$.m",
        "ItemProcessor": {
            "StartAt": "I",
            "States": {"I": {"Type": "Task", "Resource": "test:echo", "End": True}},
        },
    }
    for field in ("MaxConcurrencyPath", "ToleratedFailureCountPath"):
        if draw(st.booleans()):
            body[field] = draw(PATHS)
    if draw(st.booleans()):
        body["ItemBatcher"] = {"MaxItemsPerBatchPath": draw(PATHS)}
    return body


@st.composite
def definitions(draw: st.DrawFn) -> dict[str, Any]:
    kinds = draw(
        st.lists(st.sampled_from(["Pass", "Wait", "Task", "Choice", "Map"]), min_size=1, max_size=5)
    )
    states: dict[str, Any] = {}
    for i, kind in enumerate(kinds):
        nxt = f"S{i + 1}" if i + 1 < len(kinds) else "Done"
        match kind:
            case "Pass":
                body = _pass(draw)
            case "Wait":
                body = _wait(draw)
            case "Task":
                body = _task(draw)
            case "Choice":
                body = _choice(draw, nxt)
            case _:
                body = _map(draw)
        if kind != "Choice":
            body["Next"] = nxt
        states[f"S{i}"] = body
    states["Done"] = {"Type": "Succeed"}
    doc: dict[str, Any] = {"StartAt": "S0", "States": states}
    if draw(st.booleans()):
        doc["TimeoutSeconds"] = draw(st.sampled_from([5, 99999999, 10**15]))
    return doc


def flaky(value: Any) -> Any:
    if isinstance(value, dict) and isinstance(value.get("a"), int) and value["a"] % 2:
        raise TaskError("Flaky", "odd a")
    return value


def fold(events: list[ev.Event], stamps: list[str]) -> ExecutionState:
    state = initial_state(EXECUTION_ID)
    for event, stamp in zip(events, stamps, strict=True):
        state = evolve(state, event, stamp)
    return state


# Each decision advances the execution; far fewer than this end any generated one.
MAX_DECISIONS = 2_000


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(doc=definitions(), execution_input=INPUTS)
def test_every_execution_ends_and_decide_never_raises(
    doc: dict[str, Any], execution_input: dict[str, Any]
) -> None:
    try:
        definition = compile_definition(doc)
    except InvalidDefinition:
        assume(False)
    run = run_in_memory(
        definition,
        execution_input,
        handlers={"test:echo": echo, "test:flaky": flaky},
        execution_id=EXECUTION_ID,
        start=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        max_steps=MAX_DECISIONS,
    )
    assert run.state.ended, f"still {run.state.status} after {len(run.events)} events"
    assert len(run.events) <= MAX_HISTORY_EVENTS
    for event in run.events:
        ev.encode_event(event)
    assert fold(run.events, run.timestamps) == run.state
