"""evolve, one behaviour per test: given these events, when this event, then this state."""

from __future__ import annotations

import msgspec

from engine.core import events as ev
from engine.core.state import ExecutionState, evolve, initial_state

STAMP = "2026-01-01T00:00:00.000Z"


def given(*events: ev.Event) -> ExecutionState:
    state = initial_state("e")
    for event in events:
        state = evolve(state, event, STAMP)
    return state


STARTED = ev.ExecutionStarted(input={"a": 1}, workflow="wf", version=2, name="run")
TASK = ev.TaskScheduled(
    name="T", task_id="e:3", resource="test:echo", timeout_timer_id="3:timeout", timeout_due=STAMP
)


def test_execution_started_makes_the_execution_running_with_a_root_frame() -> None:
    s = given(STARTED)
    assert (s.status, s.input, s.workflow, s.version, s.name) == (
        "RUNNING",
        {"a": 1},
        "wf",
        2,
        "run",
    )
    assert s.frames[""].data == {"a": 1}
    assert s.started_at == STAMP


def test_every_event_advances_seq_by_one() -> None:
    s = given(STARTED, ev.PassStateEntered(name="P"), ev.TaskResultIgnored(task_id="x", reason="r"))
    assert s.seq == 3


def test_evolve_never_changes_the_state_it_is_given() -> None:
    before = given(STARTED)
    snapshot = msgspec.json.encode(before)
    evolve(before, ev.PassStateEntered(name="P", input=1), STAMP)
    assert msgspec.json.encode(before) == snapshot


def test_state_entered_makes_it_the_frames_current_state() -> None:
    s = given(STARTED, ev.PassStateEntered(name="P", input={"b": 2}))
    root = s.frames[""]
    assert (root.current, root.state_input, root.entered_seq, root.entered_time) == (
        "P",
        {"b": 2},
        2,
        STAMP,
    )


def test_state_exited_carries_its_output_and_assigned_variables() -> None:
    s = given(
        STARTED,
        ev.PassStateEntered(name="P"),
        ev.PassStateExited(name="P", output=5, assigned_variables={"x": 1}),
    )
    root = s.frames[""]
    assert (root.current, root.data, root.variables, root.status) == (None, 5, {"x": 1}, "running")


def test_exit_with_end_finishes_the_frame() -> None:
    s = given(STARTED, ev.PassStateEntered(name="P"), ev.PassStateExited(name="P", end=True))
    assert s.frames[""].status == "succeeded"


def test_wait_entered_with_a_timer_registers_it() -> None:
    s = given(STARTED, ev.WaitStateEntered(name="W", timer_id="2", due=STAMP))
    assert s.timers["2"].purpose == "wait"
    assert s.frames[""].timer_id == "2"


def test_wait_exited_forgets_its_timer() -> None:
    s = given(
        STARTED,
        ev.WaitStateEntered(name="W", timer_id="2", due=STAMP),
        ev.WaitStateExited(name="W"),
    )
    assert s.timers == {}


def test_task_scheduled_registers_the_pending_task_and_its_timeout() -> None:
    s = given(STARTED, ev.TaskStateEntered(name="T"), TASK)
    assert s.tasks == {"e:3": ""}
    assert s.timers["3:timeout"].purpose == "task_timeout"


def test_task_succeeded_clears_the_task_and_its_timeout() -> None:
    s = given(
        STARTED, ev.TaskStateEntered(name="T"), TASK, ev.TaskSucceeded(name="T", task_id="e:3")
    )
    assert (s.tasks, s.timers) == ({}, {})
    assert "e:3" in s.completed_tasks


def test_task_timed_out_leaves_the_task_open_to_a_late_result() -> None:
    s = given(
        STARTED, ev.TaskStateEntered(name="T"), TASK, ev.TaskTimedOut(name="T", task_id="e:3")
    )
    assert s.tasks == {}
    assert "e:3" not in s.completed_tasks


def test_task_result_ignored_marks_the_result_as_seen() -> None:
    s = given(STARTED, ev.TaskResultIgnored(task_id="e:9", reason="late"))
    assert "e:9" in s.completed_tasks


def test_retry_scheduled_counts_the_attempt_and_sets_its_timer() -> None:
    s = given(
        STARTED,
        ev.TaskStateEntered(name="T"),
        ev.StateRetryScheduled(
            name="T", error="E", retrier=1, attempt=1, delay_seconds=1, timer_id="5", due=STAMP
        ),
    )
    assert s.frames[""].retry_attempts == (0, 1)
    assert s.timers["5"].purpose == "retry"


def test_task_scheduled_after_a_retry_forgets_the_fired_retry_timer() -> None:
    s = given(
        STARTED,
        ev.TaskStateEntered(name="T"),
        ev.StateRetryScheduled(
            name="T", error="E", retrier=0, attempt=1, delay_seconds=1, timer_id="5", due=STAMP
        ),
        ev.TaskScheduled(name="T", task_id="e:6", resource="test:echo"),
    )
    assert s.timers == {}


def test_parallel_started_creates_one_frame_per_branch() -> None:
    s = given(
        STARTED,
        ev.ParallelStateEntered(name="P"),
        ev.ParallelStateStarted(name="P", branches=2, branch_input=7),
    )
    assert {k: (f.parent, f.index, f.data) for k, f in s.frames.items() if k} == {
        "P/0": ("", 0, 7),
        "P/1": ("", 1, 7),
    }


def test_parallel_failed_drops_branches_and_their_pending_tasks() -> None:
    s = given(
        STARTED,
        ev.ParallelStateEntered(name="P"),
        ev.ParallelStateStarted(name="P", branches=2),
        ev.TaskStateEntered(frame="P/1", name="T"),
        ev.TaskScheduled(frame="P/1", name="T", task_id="e:6", resource="test:echo"),
        ev.ParallelStateFailed(name="P", error="E"),
    )
    assert list(s.frames) == [""]
    assert s.tasks == {}


def test_map_iteration_started_creates_a_frame_for_its_item() -> None:
    s = given(
        STARTED,
        ev.MapStateEntered(name="M"),
        ev.MapStateStarted(name="M", length=2, items=["a", "b"]),
        ev.MapIterationStarted(name="M", index=1),
    )
    assert s.frames["M/1"].data == "b"
    assert s.frames[""].launched == 1


def test_map_iteration_succeeded_keeps_the_result_and_drops_the_frame() -> None:
    s = given(
        STARTED,
        ev.MapStateEntered(name="M"),
        ev.MapStateStarted(name="M", length=2, items=["a", "b"]),
        ev.MapIterationStarted(name="M", index=1),
        ev.PassStateEntered(frame="M/1", name="P"),
        ev.PassStateExited(frame="M/1", name="P", output="B", end=True),
        ev.MapIterationSucceeded(name="M", index=1),
    )
    assert "M/1" not in s.frames
    assert s.frames[""].results == (None, "B")
    assert s.frames[""].finished == 1


def test_map_iteration_failed_counts_the_failure() -> None:
    s = given(
        STARTED,
        ev.MapStateEntered(name="M"),
        ev.MapStateStarted(name="M", length=1, items=["a"]),
        ev.MapIterationStarted(name="M", index=0),
        ev.MapIterationFailed(name="M", index=0, error="E"),
    )
    assert (s.frames[""].finished, s.frames[""].failed) == (1, 1)


def test_map_state_succeeded_collects_the_results() -> None:
    s = given(
        STARTED,
        ev.MapStateEntered(name="M"),
        ev.MapStateStarted(name="M", length=0, items=[]),
        ev.MapStateSucceeded(name="M"),
    )
    assert s.frames[""].data == []


def test_execution_succeeded_ends_it_and_forgets_pending_work() -> None:
    s = given(
        STARTED, ev.TaskStateEntered(name="T"), TASK, ev.ExecutionSucceeded(output={"done": 1})
    )
    assert (s.status, s.output, s.ended, s.tasks, s.timers) == (
        "SUCCEEDED",
        {"done": 1},
        True,
        {},
        {},
    )


def test_execution_failed_records_error_and_cause() -> None:
    s = given(STARTED, ev.ExecutionFailed(error="E", cause="c"))
    assert (s.status, s.error, s.cause) == ("FAILED", "E", "c")


def test_execution_aborted_records_error_and_cause() -> None:
    s = given(STARTED, ev.ExecutionAborted(error="Stop", cause="asked"))
    assert (s.status, s.error, s.cause) == ("ABORTED", "Stop", "asked")


def test_execution_timed_out_ends_it() -> None:
    s = given(STARTED, ev.ExecutionTimedOut())
    assert (s.status, s.error) == ("TIMED_OUT", "States.Timeout")


def test_events_round_trip_through_the_codec() -> None:
    event = ev.MapStateStarted(name="M", length=1, items=[1], mode="DISTRIBUTED")
    assert ev.decode_event(ev.encode_event(event)) == event
