"""The machine's TimeoutSeconds, the Retry delay options (MaxDelaySeconds,
JitterStrategy), values nested too deeply and the history limit, as given / when / then."""

from __future__ import annotations

from typing import Any

from engine.core import events as ev
from engine.core.decide import timer_key
from engine.core.triggers import TaskErrored, TimerFired
from tests.unit.test_decide import (
    EXECUTION_ID,
    at,
    given,
    local_timer,
    one_task,
    pending_task,
    types,
)


def test_machine_timeout_ends_the_execution_timed_out() -> None:
    h = given({**one_task(), "TimeoutSeconds": 60})
    then = h.when(TimerFired(timer_id=timer_key(EXECUTION_ID, "execution-timeout"), now=at(60)))
    assert types(then.events) == ["ExecutionTimedOut"]
    assert h.state.status == "TIMED_OUT"
    assert h.state.error == "States.Timeout"
    assert h.state.tasks == {} and h.state.timers == {}


def test_begin_asks_for_the_machine_timeout_timer() -> None:
    from engine.core.asl.compile import compile_definition
    from engine.core.decide import decide
    from engine.core.state import evolve, initial_state
    from engine.core.triggers import Begin

    definition = compile_definition({**one_task(), "TimeoutSeconds": 60})
    state = evolve(
        initial_state(EXECUTION_ID), ev.ExecutionStarted(input={}), "2026-01-01T00:00:00.000Z"
    )
    decision = decide(definition, state, Begin(now=at(0)))
    requested = {t.timer_id: t.due for t in decision.timers_to_set}
    assert requested[timer_key(EXECUTION_ID, "execution-timeout")] == at(60)


def _retry_delays(retrier: dict[str, Any], failures: int) -> list[float]:
    h = given(one_task(Retry=[{"ErrorEquals": ["Boom"], **retrier}]))
    delays = []
    for n in range(failures):
        then = h.when(TaskErrored(task_id=pending_task(h), error="Boom", now=at(10 * n + 1)))
        retried = then.events[-1]
        assert isinstance(retried, ev.StateRetryScheduled)
        delays.append(retried.delay_seconds)
        h.when(TimerFired(timer_id=local_timer(h), now=at(10 * n + 5)))
    return delays


def test_max_delay_seconds_caps_the_back_off() -> None:
    delays = _retry_delays(
        {"IntervalSeconds": 2, "BackoffRate": 3, "MaxAttempts": 4, "MaxDelaySeconds": 10}, 4
    )
    assert delays == [2.0, 6.0, 10.0, 10.0]


def test_full_jitter_draws_each_delay_between_zero_and_the_back_off() -> None:
    retrier = {"IntervalSeconds": 4, "BackoffRate": 2, "MaxAttempts": 3, "JitterStrategy": "FULL"}
    delays = _retry_delays(retrier, 3)
    assert all(0 <= d <= cap for d, cap in zip(delays, [4, 8, 16], strict=True))
    # Recorded in the event, and the same on every replay of the same history.
    assert _retry_delays(retrier, 3) == delays


def test_exhausted_retries_fail_the_execution_with_the_task_error() -> None:
    h = given(one_task(Retry=[{"ErrorEquals": ["Boom"], "MaxAttempts": 1, "IntervalSeconds": 1}]))
    h.when(TaskErrored(task_id=pending_task(h), error="Boom", cause="c", now=at(1)))
    h.when(TimerFired(timer_id=local_timer(h), now=at(2)))
    then = h.when(TaskErrored(task_id=pending_task(h), error="Boom", cause="c2", now=at(3)))
    assert types(then.events) == ["TaskFailed", "ExecutionFailed"]
    assert (h.state.error, h.state.cause) == ("Boom", "c2")


def test_a_value_nested_too_deeply_fails_the_state_not_the_engine() -> None:
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    doc = {
        "StartAt": "A",
        "States": {
            "A": {"Type": "Pass", "Parameters": {"s.$": "States.JsonToString($.v)"}, "End": True}
        },
    }
    h = given(doc, {"v": deep})
    assert h.state.status == "FAILED"
    assert h.state.error == "States.Runtime"
    assert h.state.cause is not None and h.state.cause.endswith("nested too deeply.")


def test_a_loop_that_never_blocks_fails_at_the_history_limit() -> None:
    from engine.core.decide import MAX_HISTORY_EVENTS

    doc = {
        "StartAt": "A",
        "States": {"A": {"Type": "Pass", "Next": "B"}, "B": {"Type": "Pass", "Next": "A"}},
    }
    h = given(doc)
    assert h.state.status == "FAILED"
    assert h.state.error == "States.Runtime"
    assert MAX_HISTORY_EVENTS < h.state.seq <= MAX_HISTORY_EVENTS + 3
    assert isinstance(h.events[-1], ev.ExecutionFailed)
