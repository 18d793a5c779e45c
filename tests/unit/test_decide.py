"""decide, one behaviour per test: given these events, when this trigger, then these events.

``given`` starts an execution and applies earlier triggers; the state each
``when`` acts on is always rebuilt by folding the recorded events through
``evolve`` (and checked against the state decide returned), so every test also
exercises invariant 3.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from engine.core import events as ev
from engine.core.asl.compile import compile_definition
from engine.core.decide import Decision, decide, timer_key
from engine.core.state import ExecutionState, evolve, initial_state
from engine.core.triggers import (
    Begin,
    StopRequested,
    TaskCompleted,
    TaskErrored,
    TimerFired,
    Trigger,
)

EXECUTION_ID = "00000000-0000-4000-8000-0000000000aa"
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def iso(t: dt.datetime) -> str:
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


class History:
    """The events of one execution so far, and the state they fold to."""

    def __init__(self, doc: dict[str, Any], execution_input: Any) -> None:
        self.definition = compile_definition(doc)
        started = ev.ExecutionStarted(input=execution_input, workflow="wf", version=1, name="n")
        self.events: list[ev.Event] = [started]
        self.stamps = [iso(T0)]

    @property
    def state(self) -> ExecutionState:
        state = initial_state(EXECUTION_ID)
        for event, stamp in zip(self.events, self.stamps, strict=True):
            state = evolve(state, event, stamp)
        return state

    def when(self, trigger: Trigger) -> Decision:
        decision = decide(self.definition, self.state, trigger)
        self.events.extend(decision.events)
        self.stamps.extend([iso(trigger.now)] * len(decision.events))
        assert self.state == decision.state, "the fold of the events is the state decided on"
        return decision


def given(doc: dict[str, Any], execution_input: Any = None, *triggers: Trigger) -> History:
    history = History(doc, {} if execution_input is None else execution_input)
    history.when(Begin(now=T0))
    for trigger in triggers:
        history.when(trigger)
    return history


def types(events: list[ev.Event]) -> list[str]:
    return [ev.event_type(e) for e in events]


def scheduled(h: History) -> list[ev.TaskScheduled]:
    return [e for e in h.events if isinstance(e, ev.TaskScheduled)]


def pending_task(h: History, index: int = -1) -> str:
    return scheduled(h)[index].task_id


def local_timer(h: History) -> str:
    (timer,) = h.state.timers
    return timer_key(EXECUTION_ID, timer)


def task(name: str = "Work", next_state: str | None = None, **extra: Any) -> dict[str, Any]:
    ending = {"Next": next_state} if next_state else {"End": True}
    return {name: {"Type": "Task", "Resource": "test:echo", **ending, **extra}}


WAIT_FOREVER = {"Wait": {"Type": "Wait", "Seconds": 100000, "End": True}}


def one_task(**extra: Any) -> dict[str, Any]:
    return {"StartAt": "Work", "States": task(**extra)}


# --- simple states ---------------------------------------------------------------


def test_pass_state_runs_to_the_end_on_begin() -> None:
    h = given({"StartAt": "P", "States": {"P": {"Type": "Pass", "Result": 7, "End": True}}})
    assert types(h.events) == [
        "ExecutionStarted",
        "PassStateEntered",
        "PassStateExited",
        "ExecutionSucceeded",
    ]
    assert h.state.status == "SUCCEEDED"
    assert h.state.output == 7


def test_choice_follows_the_first_matching_rule() -> None:
    doc = {
        "StartAt": "C",
        "States": {
            "C": {
                "Type": "Choice",
                "Choices": [{"Variable": "$.n", "NumericGreaterThan": 1, "Next": "Big"}],
                "Default": "Small",
            },
            "Big": {"Type": "Pass", "Result": "big", "End": True},
            "Small": {"Type": "Pass", "Result": "small", "End": True},
        },
    }
    h = given(doc, {"n": 5})
    assert types(h.events)[1:4] == ["ChoiceStateEntered", "ChoiceStateExited", "PassStateEntered"]
    assert h.state.output == "big"


def test_choice_without_match_or_default_fails_with_no_choice_matched() -> None:
    doc = {
        "StartAt": "C",
        "States": {
            "C": {
                "Type": "Choice",
                "Choices": [{"Variable": "$.n", "NumericGreaterThan": 1, "Next": "End"}],
            },
            "End": {"Type": "Succeed"},
        },
    }
    h = given(doc, {"n": 0})
    assert types(h.events)[-1] == "ExecutionFailed"
    assert h.state.error == "States.NoChoiceMatched"


def test_succeed_state_ends_the_execution_with_its_input() -> None:
    h = given({"StartAt": "S", "States": {"S": {"Type": "Succeed"}}}, {"a": 1})
    assert types(h.events)[1:] == [
        "SucceedStateEntered",
        "SucceedStateExited",
        "ExecutionSucceeded",
    ]
    assert h.state.output == {"a": 1}


def test_fail_state_fails_the_execution_with_its_error_and_cause() -> None:
    doc = {"StartAt": "F", "States": {"F": {"Type": "Fail", "Error": "Bad", "Cause": "why"}}}
    h = given(doc)
    assert types(h.events)[1:] == ["FailStateEntered", "ExecutionFailed"]
    assert (h.state.error, h.state.cause) == ("Bad", "why")


def test_wait_state_sets_a_timer_and_blocks() -> None:
    h = given({"StartAt": "W", "States": {"W": {"Type": "Wait", "Seconds": 10, "End": True}}})
    entered = h.events[-1]
    assert isinstance(entered, ev.WaitStateEntered)
    assert entered.due == iso(at(10))
    assert h.state.status == "RUNNING"


def test_wait_decision_asks_the_runtime_for_the_timer() -> None:
    h = History({"StartAt": "W", "States": {"W": {"Type": "Wait", "Seconds": 10, "End": True}}}, {})
    then = h.when(Begin(now=T0))
    assert [t.due for t in then.timers_to_set] == [at(10)]


def test_wait_state_moves_on_when_its_timer_fires() -> None:
    h = given({"StartAt": "W", "States": {"W": {"Type": "Wait", "Seconds": 10, "End": True}}})
    then = h.when(TimerFired(timer_id=local_timer(h), now=at(10)))
    assert types(then.events) == ["WaitStateExited", "ExecutionSucceeded"]


# --- tasks -------------------------------------------------------------------------


def test_task_state_schedules_its_task_and_blocks() -> None:
    h = given(one_task(), {"x": 1})
    assert types(h.events)[1:] == ["TaskStateEntered", "TaskScheduled"]
    assert scheduled(h)[0].input == {"x": 1}
    assert scheduled(h)[0].resource == "test:echo"


def test_task_result_completes_the_task_state() -> None:
    h = given(one_task())
    then = h.when(TaskCompleted(task_id=pending_task(h), output={"ok": True}, now=at(1)))
    assert types(then.events) == ["TaskSucceeded", "TaskStateExited", "ExecutionSucceeded"]
    assert h.state.output == {"ok": True}


def test_task_failure_without_retry_or_catch_fails_the_execution() -> None:
    h = given(one_task())
    then = h.when(TaskErrored(task_id=pending_task(h), error="Boom", cause="c", now=at(1)))
    assert types(then.events) == ["TaskFailed", "ExecutionFailed"]
    assert (h.state.error, h.state.cause) == ("Boom", "c")


def test_retry_schedules_a_back_off_timer() -> None:
    retry = [{"ErrorEquals": ["Boom"], "IntervalSeconds": 2, "BackoffRate": 3, "MaxAttempts": 2}]
    h = given(one_task(Retry=retry))
    then = h.when(TaskErrored(task_id=pending_task(h), error="Boom", now=at(1)))
    assert types(then.events) == ["TaskFailed", "StateRetryScheduled"]
    retried = then.events[-1]
    assert isinstance(retried, ev.StateRetryScheduled)
    assert (retried.attempt, retried.delay_seconds, retried.due) == (1, 2.0, iso(at(3)))
    assert [t.due for t in then.timers_to_set] == [at(3)]


def test_retry_timer_runs_the_task_again() -> None:
    retry = [{"ErrorEquals": ["Boom"], "IntervalSeconds": 2, "MaxAttempts": 2}]
    h = given(one_task(Retry=retry))
    h.when(TaskErrored(task_id=pending_task(h), error="Boom", now=at(1)))
    then = h.when(TimerFired(timer_id=local_timer(h), now=at(3)))
    assert types(then.events) == ["TaskScheduled"]
    assert scheduled(h)[-1].attempt == 1
    assert scheduled(h)[-1].task_id != scheduled(h)[0].task_id


def test_second_retry_waits_interval_times_backoff_rate() -> None:
    retry = [{"ErrorEquals": ["Boom"], "IntervalSeconds": 2, "BackoffRate": 3, "MaxAttempts": 3}]
    h = given(one_task(Retry=retry))
    h.when(TaskErrored(task_id=pending_task(h), error="Boom", now=at(1)))
    h.when(TimerFired(timer_id=local_timer(h), now=at(3)))
    then = h.when(TaskErrored(task_id=pending_task(h), error="Boom", now=at(4)))
    retried = then.events[-1]
    assert isinstance(retried, ev.StateRetryScheduled)
    assert (retried.attempt, retried.delay_seconds) == (2, 6.0)


def test_retries_exhausted_fail_the_execution() -> None:
    retry = [{"ErrorEquals": ["Boom"], "IntervalSeconds": 1, "MaxAttempts": 1}]
    h = given(one_task(Retry=retry))
    h.when(TaskErrored(task_id=pending_task(h), error="Boom", now=at(1)))
    h.when(TimerFired(timer_id=local_timer(h), now=at(2)))
    then = h.when(TaskErrored(task_id=pending_task(h), error="Boom", now=at(3)))
    assert types(then.events) == ["TaskFailed", "ExecutionFailed"]


def test_catch_moves_to_its_next_state_with_the_error_output() -> None:
    doc = {
        "StartAt": "Work",
        "States": {
            **task(Catch=[{"ErrorEquals": ["States.ALL"], "Next": "Handled", "ResultPath": "$.e"}]),
            "Handled": {"Type": "Pass", "End": True},
        },
    }
    h = given(doc, {"x": 1})
    then = h.when(TaskErrored(task_id=pending_task(h), error="Boom", cause="c", now=at(1)))
    assert types(then.events) == [
        "TaskFailed",
        "TaskStateExited",
        "PassStateEntered",
        "PassStateExited",
        "ExecutionSucceeded",
    ]
    assert h.state.output == {"x": 1, "e": {"Error": "Boom", "Cause": "c"}}


def test_task_timeout_timer_times_the_task_out() -> None:
    h = given(one_task(TimeoutSeconds=5))
    assert scheduled(h)[0].timeout_due == iso(at(5))
    then = h.when(TimerFired(timer_id=local_timer(h), now=at(5)))
    assert types(then.events) == ["TaskTimedOut", "ExecutionFailed"]
    assert h.state.error == "States.Timeout"


def test_task_result_cancels_the_timeout_timer() -> None:
    h = given(one_task(TimeoutSeconds=5))
    timer = local_timer(h)
    then = h.when(TaskCompleted(task_id=pending_task(h), output=1, now=at(1)))
    assert timer in then.timers_to_cancel


def test_duplicate_task_result_is_ignored_without_events() -> None:
    h = given(
        {"StartAt": "Work", "States": {**task(next_state="Wait"), **WAIT_FOREVER}},
    )
    task_id = pending_task(h)
    h.when(TaskCompleted(task_id=task_id, output=1, now=at(1)))
    then = h.when(TaskCompleted(task_id=task_id, output=1, now=at(2)))
    assert then.events == []
    assert then.ignored == "duplicate task result"


def timeout_caught() -> dict[str, Any]:
    catch = [{"ErrorEquals": ["States.Timeout"], "Next": "Wait"}]
    return {
        "StartAt": "Work",
        "States": {**task(next_state="Wait", TimeoutSeconds=5, Catch=catch), **WAIT_FOREVER},
    }


def test_late_task_result_after_timeout_is_recorded_as_ignored() -> None:
    h = given(timeout_caught())
    task_id = pending_task(h)
    h.when(TimerFired(timer_id=local_timer(h), now=at(5)))
    then = h.when(TaskCompleted(task_id=task_id, output=1, now=at(6)))
    assert types(then.events) == ["TaskResultIgnored"]
    assert then.ignored is not None


def test_late_result_arriving_twice_is_recorded_once() -> None:
    h = given(timeout_caught())
    task_id = pending_task(h)
    h.when(TimerFired(timer_id=local_timer(h), now=at(5)))
    h.when(TaskCompleted(task_id=task_id, output=1, now=at(6)))
    then = h.when(TaskCompleted(task_id=task_id, output=1, now=at(7)))
    assert h.state.status == "RUNNING"
    assert then.events == []
    assert then.ignored == "duplicate task result"


def test_stale_timer_is_ignored() -> None:
    h = given(one_task())
    then = h.when(TimerFired(timer_id=timer_key(EXECUTION_ID, "999"), now=at(1)))
    assert then.events == []
    assert then.ignored == "timer no longer pending"


def test_fired_retry_timer_firing_again_is_ignored() -> None:
    retry = [{"ErrorEquals": ["Boom"], "IntervalSeconds": 1, "MaxAttempts": 2}]
    h = given(one_task(Retry=retry))
    h.when(TaskErrored(task_id=pending_task(h), error="Boom", now=at(1)))
    timer = local_timer(h)
    h.when(TimerFired(timer_id=timer, now=at(2)))
    then = h.when(TimerFired(timer_id=timer, now=at(2)))
    assert then.events == []


def test_stop_request_aborts_the_execution() -> None:
    h = given(one_task(TimeoutSeconds=5))
    timer = local_timer(h)
    then = h.when(StopRequested(error="Stopped", cause="by test", now=at(1)))
    assert types(then.events) == ["ExecutionAborted"]
    assert (h.state.status, h.state.error) == ("ABORTED", "Stopped")
    assert timer in then.timers_to_cancel


TERMINAL_TRIGGERS: list[Trigger] = [
    Begin(now=at(9)),
    TaskCompleted(task_id=f"{EXECUTION_ID}:3", output=1, now=at(9)),
    TaskErrored(task_id=f"{EXECUTION_ID}:3", error="E", now=at(9)),
    TimerFired(timer_id=timer_key(EXECUTION_ID, "3"), now=at(9)),
    StopRequested(now=at(9)),
]


@pytest.mark.parametrize("trigger", TERMINAL_TRIGGERS, ids=lambda t: type(t).__name__)
def test_ended_execution_absorbs_every_trigger(trigger: Trigger) -> None:
    h = given(one_task())
    h.when(StopRequested(now=at(1)))
    then = h.when(trigger)
    assert then.events == []
    assert then.ignored == "execution is ABORTED"


# --- Parallel and Map --------------------------------------------------------------


def parallel_of_tasks() -> dict[str, Any]:
    return {
        "StartAt": "P",
        "States": {
            "P": {
                "Type": "Parallel",
                "End": True,
                "Branches": [
                    {"StartAt": "A", "States": task("A")},
                    {"StartAt": "B", "States": task("B")},
                ],
            }
        },
    }


def test_parallel_schedules_every_branch() -> None:
    h = given(parallel_of_tasks())
    assert [e.frame for e in scheduled(h)] == ["P/0", "P/1"]


def test_parallel_waits_for_every_branch() -> None:
    h = given(parallel_of_tasks())
    then = h.when(TaskCompleted(task_id=pending_task(h, 1), output="b", now=at(1)))
    assert types(then.events) == ["TaskSucceeded", "TaskStateExited"]
    assert h.state.status == "RUNNING"


def test_parallel_results_keep_branch_order_when_branches_finish_out_of_order() -> None:
    h = given(parallel_of_tasks())
    h.when(TaskCompleted(task_id=pending_task(h, 1), output="b", now=at(1)))
    then = h.when(TaskCompleted(task_id=pending_task(h, 0), output="a", now=at(2)))
    assert types(then.events)[-2:] == ["ParallelStateExited", "ExecutionSucceeded"]
    assert h.state.output == ["a", "b"]


def test_parallel_branch_failure_fails_the_parallel_state() -> None:
    h = given(parallel_of_tasks())
    then = h.when(TaskErrored(task_id=pending_task(h, 0), error="Boom", now=at(1)))
    assert types(then.events) == ["TaskFailed", "ParallelStateFailed", "ExecutionFailed"]


def test_result_of_a_cancelled_branch_is_recorded_as_ignored() -> None:
    h = given(parallel_of_tasks())
    h.when(TaskErrored(task_id=pending_task(h, 0), error="Boom", now=at(1)))
    then = h.when(TaskCompleted(task_id=pending_task(h, 1), output="b", now=at(2)))
    assert then.events == []  # the execution has ended


def map_of_tasks(**extra: Any) -> dict[str, Any]:
    return {
        "StartAt": "M",
        "States": {
            "M": {
                "Type": "Map",
                "End": True,
                "ItemProcessor": {"StartAt": "T", "States": task("T")},
                **extra,
            }
        },
    }


def test_map_starts_one_iteration_per_item() -> None:
    h = given(map_of_tasks(), [10, 20, 30])
    assert [e.input for e in scheduled(h)] == [10, 20, 30]
    started = [e for e in h.events if isinstance(e, ev.MapStateStarted)]
    assert started[0].length == 3


def test_map_results_keep_item_order_when_iterations_finish_out_of_order() -> None:
    h = given(map_of_tasks(), [10, 20, 30])
    for index in (2, 0, 1):
        h.when(TaskCompleted(task_id=pending_task(h, index), output=index, now=at(1)))
    assert h.state.output == [0, 1, 2]


def test_map_max_concurrency_holds_back_iterations() -> None:
    h = given(map_of_tasks(MaxConcurrency=1), [10, 20])
    assert [e.input for e in scheduled(h)] == [10]
    then = h.when(TaskCompleted(task_id=pending_task(h), output=1, now=at(1)))
    assert "MapIterationStarted" in types(then.events)
    assert [e.input for e in scheduled(h)] == [10, 20]


def test_map_over_no_items_succeeds_at_once() -> None:
    h = given(map_of_tasks(), [])
    assert types(h.events)[-3:] == ["MapStateSucceeded", "MapStateExited", "ExecutionSucceeded"]
    assert h.state.output == []


def test_map_failure_within_tolerated_count_still_succeeds() -> None:
    h = given(map_of_tasks(ToleratedFailureCount=1), [1, 2])
    h.when(TaskErrored(task_id=pending_task(h, 0), error="Boom", now=at(1)))
    h.when(TaskCompleted(task_id=pending_task(h, 1), output="ok", now=at(2)))
    assert h.state.status == "SUCCEEDED"
    assert h.state.output == [None, "ok"]


def test_map_failures_beyond_tolerated_count_fail_the_map() -> None:
    h = given(map_of_tasks(ToleratedFailureCount=1), [1, 2, 3])
    h.when(TaskErrored(task_id=pending_task(h, 0), error="Boom", now=at(1)))
    then = h.when(TaskErrored(task_id=pending_task(h, 1), error="Boom", now=at(2)))
    assert types(then.events)[-3:] == ["MapIterationFailed", "MapStateFailed", "ExecutionFailed"]
    assert h.state.error == "States.ExceedToleratedFailureThreshold"


def test_map_retry_records_no_map_state_failed_until_retries_are_exhausted() -> None:
    h = given(map_of_tasks(Retry=[{"ErrorEquals": ["Boom"], "MaxAttempts": 1}]), [1])
    then = h.when(TaskErrored(task_id=pending_task(h), error="Boom", now=at(1)))
    assert types(then.events) == ["TaskFailed", "MapIterationFailed", "StateRetryScheduled"]


def test_parallel_retry_records_no_parallel_state_failed_for_the_retried_attempt() -> None:
    doc = parallel_of_tasks()
    doc["States"]["P"]["Retry"] = [{"ErrorEquals": ["Boom"], "MaxAttempts": 1}]
    h = given(doc)
    then = h.when(TaskErrored(task_id=pending_task(h, 0), error="Boom", now=at(1)))
    assert types(then.events) == ["TaskFailed", "StateRetryScheduled"]
    assert h.state.tasks == {}, "the other branch's task is dropped with its frame"


def test_distributed_map_iterations_are_not_in_the_aws_history() -> None:
    doc = map_of_tasks()
    doc["States"]["M"]["ItemProcessor"]["ProcessorConfig"] = {"Mode": "DISTRIBUTED"}
    h = given(doc, [1])
    h.when(TaskCompleted(task_id=pending_task(h), output=1, now=at(1)))
    assert types(ev.aws_history(h.events)) == [
        "ExecutionStarted",
        "MapStateEntered",
        "MapStateStarted",
        "MapStateSucceeded",
        "MapStateExited",
        "ExecutionSucceeded",
    ]


# --- data flow and the context object ----------------------------------------------


def test_context_entered_time_is_when_the_state_was_entered() -> None:
    h = given(one_task(ResultSelector={"entered.$": "$$.State.EnteredTime"}))
    h.when(TaskCompleted(task_id=pending_task(h), output={}, now=at(30)))
    assert h.state.output == {"entered": iso(T0)}


def test_output_over_the_payload_limit_fails_and_states_all_does_not_catch_it() -> None:
    doc = {
        "StartAt": "Big",
        "States": {
            "Big": {
                "Type": "Task",
                "Resource": "test:echo",
                "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "Caught"}],
                "End": True,
            },
            "Caught": {"Type": "Succeed"},
        },
    }
    h = given(doc)
    h.when(TaskCompleted(task_id=pending_task(h), output="x" * 300_000, now=at(1)))
    assert (h.state.status, h.state.error) == ("FAILED", "States.DataLimitExceeded")
