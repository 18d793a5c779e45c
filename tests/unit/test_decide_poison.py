"""No execution is stranded by its own data: given values that no clock, number type or
encoder can hold, decide fails the state (or the execution) with States.Runtime and a
cause that names the problem, and never raises. One test per kind of poison.

Before, each of these raised out of decide (OverflowError, ValueError, ...), and the
engine retried the same trigger every few seconds for as long as it lived.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from engine.core import events as ev
from engine.core.asl import errors as E
from engine.core.decide import decide
from engine.core.decide.decider import Decider, describe_exception, printable
from engine.core.decide.failures import fail
from engine.core.replay import Recorded, verify_history
from engine.core.triggers import Begin, FailRequested, TaskErrored, TimerFired
from tests.unit.test_decide import EXECUTION_ID, T0, History, at, given, scheduled, types


def wait_on(field: str, value: Any) -> dict[str, Any]:
    return {"StartAt": "W", "States": {"W": {"Type": "Wait", field: value, "End": True}}}


def task_with(field: str, value: Any, **extra: Any) -> dict[str, Any]:
    body = {"Type": "Task", "Resource": "test:echo", field: value, "End": True, **extra}
    return {"StartAt": "T", "States": {"T": body}}


def failure(h: History) -> ev.ExecutionFailed:
    last = h.events[-1]
    assert isinstance(last, ev.ExecutionFailed), types(h.events)
    assert h.state.status == "FAILED"
    return last


def runtime_cause(h: History) -> str:
    failed = failure(h)
    assert failed.error == E.RUNTIME
    assert failed.cause is not None
    return failed.cause


# --- Wait ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seconds", [1e300, 10**30, 2**63])
def test_a_seconds_path_past_a_long_fails_the_wait_as_aws_words_it(seconds: Any) -> None:
    h = given(wait_on("SecondsPath", "$.s"), {"s": seconds})
    assert types(h.events) == ["ExecutionStarted", "WaitStateEntered", "ExecutionFailed"]
    assert runtime_cause(h) == (
        "An error occurred while executing the state 'W' (entered at the event id #2). "
        "The SecondsPath parameter cannot be parsed as a long value: $.s == "
        + ("1.0E300" if isinstance(seconds, float) else str(seconds))
    )
    assert h.state.timers == {}


def test_a_seconds_path_that_fits_a_long_but_not_the_calendar_fails_the_wait() -> None:
    h = given(wait_on("SecondsPath", "$.s"), {"s": 2**63 - 1})
    cause = runtime_cause(h)
    assert "The Wait state's due time is out of range" in cause
    assert f"SecondsPath parameter: $.s == {2**63 - 1}" in cause


def test_jsonata_seconds_out_of_range_fail_the_wait() -> None:
    doc = wait_on("Seconds", "{% $states.input.s %}")
    doc["QueryLanguage"] = "JSONata"
    h = given(doc, {"s": 1e300})
    assert "The Wait state's due time is out of range" in runtime_cause(h)


def test_literal_seconds_out_of_range_fail_the_wait() -> None:
    h = given(wait_on("Seconds", 10**15))
    assert runtime_cause(h).endswith(
        "out of range (the latest time steplog can record is "
        "9999-12-31T23:59:59Z): Seconds parameter: 1000000000000000"
    )


def test_a_timestamp_with_a_five_digit_year_is_not_a_timestamp() -> None:
    h = given(wait_on("TimestampPath", "$.t"), {"t": "99999-01-01T00:00:00Z"})
    assert runtime_cause(h).endswith(
        "The TimestampPath parameter does not reference a valid ISO-8601 extended offset "
        "date-time format string: $.t == 99999-01-01T00:00:00Z"
    )


@pytest.mark.parametrize("stamp", ["9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+01:00"])
def test_a_timestamp_whose_offset_leaves_the_calendar_fails_the_wait(stamp: str) -> None:
    h = given(wait_on("TimestampPath", "$.t"), {"t": stamp})
    assert runtime_cause(h).endswith(
        "The Wait state's due time is out of range (the latest time steplog can record "
        f"is 9999-12-31T23:59:59Z): TimestampPath parameter: $.t == {stamp}"
    )


def test_the_last_representable_timestamp_still_waits() -> None:
    h = given(wait_on("TimestampPath", "$.t"), {"t": "9999-12-31T23:59:59Z"})
    assert types(h.events) == ["ExecutionStarted", "WaitStateEntered"]
    [timer] = h.state.timers.values()
    assert timer.due == "9999-12-31T23:59:59.000Z"


# --- Task timeouts ------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["TimeoutSecondsPath", "HeartbeatSecondsPath"])
def test_a_timeout_path_too_large_for_the_calendar_fails_the_task(field: str) -> None:
    # States.Runtime is not caught by States.ALL: the execution fails.
    catch = [{"ErrorEquals": ["States.ALL"], "Next": "Caught"}]
    doc = task_with(field, "$.n", Catch=catch)
    doc["States"]["Caught"] = {"Type": "Succeed"}
    h = given(doc, {"n": 10**30})
    assert types(h.events) == ["ExecutionStarted", "TaskStateEntered", "ExecutionFailed"]
    assert runtime_cause(h).endswith(
        f'The {field} field refers to value "{10**30}" which is too large: the deadline is '
        "out of range (the latest time steplog can record is 9999-12-31T23:59:59Z)"
    )
    assert scheduled(h) == []


def test_a_literal_timeout_too_large_for_the_calendar_fails_the_task() -> None:
    h = given(task_with("TimeoutSeconds", 10**15))
    assert "The TimeoutSeconds field refers to value" in runtime_cause(h)


def test_an_execution_timeout_past_the_calendar_fails_the_execution_at_once() -> None:
    doc = {"TimeoutSeconds": 10**15, **wait_on("Seconds", 1)}
    h = given(doc)
    assert types(h.events) == ["ExecutionStarted", "ExecutionFailed"]
    assert runtime_cause(h).startswith(f"The execution's TimeoutSeconds ({10**15}) puts its")


# --- Retry --------------------------------------------------------------------------------


@pytest.mark.parametrize(("backoff", "retries"), [(10**6, [1, 2]), (1e300, [1])])
def test_a_retry_delay_past_the_calendar_fails_the_task(backoff: float, retries: list[int]) -> None:
    retry = [{"ErrorEquals": ["States.ALL"], "MaxAttempts": 5, "BackoffRate": backoff}]
    h = given(task_with("Comment", "flaky", Retry=retry))
    for attempt in range(5):
        task_id = scheduled(h)[-1].task_id
        h.when(TaskErrored(task_id=task_id, error="Boom", now=at(attempt * 10)))
        if h.state.ended:
            break
        [timer_id] = h.state.timers
        h.when(TimerFired(timer_id=timer_id, now=at(attempt * 10 + 1)))
    cause = runtime_cause(h)
    assert "The state failed with Boom and its Retry #1 would wait longer" in cause
    assert [e.attempt for e in h.events if isinstance(e, ev.StateRetryScheduled)] == retries


# --- data no store can hold ---------------------------------------------------------------


def test_a_lone_surrogate_built_by_an_intrinsic_fails_the_state() -> None:
    doc = {
        "StartAt": "P",
        "States": {
            "P": {
                "Type": "Pass",
                "Parameters": {"v.$": "States.StringToJson($.s)"},
                "End": True,
            }
        },
    }
    h = given(doc, {"s": '"\\ud800"'})
    assert types(h.events) == ["ExecutionStarted", "PassStateEntered", "ExecutionFailed"]
    assert "A string is not valid Unicode (UnicodeEncodeError: " in runtime_cause(h)


def test_a_nul_built_by_an_intrinsic_is_data_like_any_other() -> None:
    # AWS keeps it; whether a store can is the engine's concern (tests/integration).
    doc = {
        "StartAt": "P",
        "States": {
            "P": {"Type": "Pass", "Parameters": {"v.$": "States.StringToJson($.s)"}, "End": True}
        },
    }
    h = given(doc, {"s": '"a\\u0000b"'})
    assert h.state.status == "SUCCEEDED"
    assert h.state.output == {"v": "a\x00b"}


# --- anything else ------------------------------------------------------------------------


def test_an_exception_raised_while_a_state_runs_fails_the_state_with_states_runtime() -> None:
    h = given(task_with("Comment", "x"))
    d = Decider(h.definition, h.state, at(1), fail)

    def broken() -> None:
        raise KeyError("missing")

    d.guard("", "T", broken)
    decision = d.decision()
    [failed] = decision.events
    assert isinstance(failed, ev.ExecutionFailed) and failed.error == E.RUNTIME
    assert failed.cause == (
        "An error occurred while executing the state 'T' (entered at the event id #2). "
        "The state could not be processed (KeyError: 'missing')."
    )


def test_a_fail_request_fails_the_execution_and_cancels_its_timers() -> None:
    h = given(wait_on("Seconds", 60))
    [timer] = h.state.timers
    decision = h.when(FailRequested(error=E.RUNTIME, cause="the store refused", now=at(1)))
    assert types(decision.events) == ["ExecutionFailed"]
    assert runtime_cause(h) == "the store refused"
    assert decision.timers_to_cancel == [f"{EXECUTION_ID}:{timer}"]


def test_a_fail_request_for_an_ended_execution_is_ignored() -> None:
    h = given(wait_on("Seconds", 0))
    assert h.state.status == "SUCCEEDED"
    decision = h.when(FailRequested(error=E.RUNTIME, cause="late", now=at(1)))
    assert decision.events == [] and decision.ignored == "execution is SUCCEEDED"


def test_decide_turns_an_escaping_exception_into_the_executions_failure() -> None:
    # A definition object the trigger handling cannot read stands for a bug outside
    # every state's guard.
    h = given(wait_on("Seconds", 60))

    class Unreadable:
        timeout_seconds = None

        def machine_at(self, scope: Any) -> Any:
            raise AttributeError("no machine")

    [timer] = h.state.timers
    decision = decide(Unreadable(), h.state, TimerFired(timer_id=timer, now=at(60)))  # type: ignore[arg-type]
    [failed] = decision.events
    assert isinstance(failed, ev.ExecutionFailed) and failed.error == E.RUNTIME
    assert failed.cause == (
        "An error occurred while deciding the execution's next step on a TimerFired "
        "trigger: The state could not be processed (AttributeError: no machine)."
    )
    assert decision.state.status == "FAILED"


def test_causes_quote_exceptions_shortened_and_storable() -> None:
    text = printable("a\x00b\ud800" + "x" * 1000, 40)
    assert text.startswith("a\\u0000b\\ud800") and text.endswith("...")
    assert "\x00" not in text
    text.encode("utf-8")  # no lone surrogate left
    assert describe_exception(OverflowError("date value out of range")) == (
        "A number or a date is out of range (OverflowError: date value out of range)."
    )


def test_begin_at_a_time_near_the_end_of_the_calendar_fails_the_wait_not_decide() -> None:
    late = dt.datetime(9999, 12, 31, 23, 0, tzinfo=dt.UTC)
    h = History(wait_on("Seconds", 7200), {})
    h.when(Begin(now=late))
    assert "The Wait state's due time is out of range" in runtime_cause(h)
    assert T0 < late


def test_replay_reproduces_an_execution_the_engine_failed() -> None:
    # The engine failed the execution while it waited (the store refused a decision):
    # the recorded ExecutionFailed is rebuilt as a FailRequested, so the history verifies.
    h = given(wait_on("Seconds", 60))
    h.when(FailRequested(error=E.RUNTIME, cause="the database refused its data", now=at(5)))
    stamps = [dt.datetime.fromisoformat(s.replace("Z", "+00:00")) for s in h.stamps]
    history = [
        Recorded(seq, event, stamp)
        for seq, (event, stamp) in enumerate(zip(h.events, stamps, strict=True), start=1)
    ]
    verdict = verify_history(h.definition, EXECUTION_ID, history)
    assert verdict.ok and verdict.decisions == 2
