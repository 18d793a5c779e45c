"""Task tokens and activities in the pure core: given a Task waiting for its token
(a .waitForTaskToken resource or an activity ARN), when it is scheduled, then its
token is in $$.Task.Token and in TaskScheduled, made from the execution's recorded key
alone (deterministic), and its outcome arrives like any task's."""

from __future__ import annotations

from typing import Any

from engine.core import events as ev
from engine.core import tasktokens as tt
from engine.core.arns import ArnScope
from engine.core.triggers import Begin, TaskCompleted, TaskErrored, TaskHeartbeat, TimerFired
from tests.unit.test_decide import EXECUTION_ID, T0, History, at, scheduled, types

KEY = "0123456789abcdef0123456789abcdef"
ACTIVITY = ArnScope().activity("default", "approve")


def token_task(resource: str = "test:echo.waitForTaskToken", **extra: Any) -> dict[str, Any]:
    return {
        "StartAt": "Work",
        "States": {
            "Work": {
                "Type": "Task",
                "Resource": resource,
                "Parameters": {"token.$": "$$.Task.Token", "order.$": "$.order"},
                "End": True,
                "Catch": [{"ErrorEquals": ["Rejected"], "Next": "Caught"}],
                **extra,
            },
            "Caught": {"Type": "Pass", "End": True},
        },
    }


def given(doc: dict[str, Any], key: str = KEY) -> History:
    h = History(doc, {"order": 7})
    h.events[0] = ev.ExecutionStarted(
        input={"order": 7}, workflow="wf", version=1, name="n", task_token_key=key
    )
    h.when(Begin(now=T0))
    return h


def test_a_wait_for_task_token_task_gets_its_token_in_the_context_and_the_event() -> None:
    h = given(token_task())
    (task,) = scheduled(h)
    local = task.task_id.rsplit(":", 1)[1]
    assert task.task_token == tt.make_token(KEY, EXECUTION_ID, local)
    assert task.input == {"token": task.task_token, "order": 7}
    assert task.queue == ev.DEFAULT_QUEUE
    assert h.state.status == "RUNNING" and task.task_id in h.state.tasks


def test_the_token_verifies_under_the_key_only_and_names_its_task() -> None:
    h = given(token_task())
    (task,) = scheduled(h)
    parsed = tt.parse_token(task.task_token)
    assert parsed is not None
    assert parsed.task_id(EXECUTION_ID) == task.task_id
    assert parsed.verify(KEY, EXECUTION_ID)
    assert not parsed.verify("f" * 32, EXECUTION_ID)
    assert not parsed.verify("", EXECUTION_ID)
    other = "00000000-0000-4000-8000-0000000000bb"
    assert not parsed.verify(KEY, other)


def test_malformed_tokens_do_not_parse() -> None:
    good = tt.make_token(KEY, EXECUTION_ID, "3")
    prefix, hexid, local, mac = good.split(".")
    for bad in (
        "",
        "x" * 2000,
        good + ".",
        f"{prefix}.{hexid}.03.{mac}",  # a second spelling of the same seq
        f"{prefix}.{hexid}.0.{mac}",
        f"stt2.{hexid}.{local}.{mac}",
        f"{prefix}.{hexid[:-1]}.{local}.{mac}",
        f"{prefix}.{hexid}.{local}.{mac.upper()}",
    ):
        assert tt.parse_token(bad) is None, bad


def test_the_same_history_gives_the_same_token_on_replay() -> None:
    first, second = given(token_task()), given(token_task())
    assert scheduled(first)[0].task_token == scheduled(second)[0].task_token


def test_the_callback_result_leaves_the_state_like_a_task_result() -> None:
    h = given(token_task())
    task_id = scheduled(h)[0].task_id
    then = h.when(TaskCompleted(task_id=task_id, output={"approved": True}, now=at(5)))
    assert types(then.events) == ["TaskSucceeded", "TaskStateExited", "ExecutionSucceeded"]
    assert h.state.output == {"approved": True}


def test_a_callback_failure_is_caught_by_catch() -> None:
    h = given(token_task())
    task_id = scheduled(h)[0].task_id
    h.when(TaskErrored(task_id=task_id, error="Rejected", cause="no", now=at(1)))
    assert h.state.status == "SUCCEEDED"
    assert [e.name for e in h.events if isinstance(e, ev.PassStateEntered)] == ["Caught"]


def test_a_retry_gets_a_new_token_and_the_old_one_is_no_longer_pending() -> None:
    doc = token_task(Retry=[{"ErrorEquals": ["States.ALL"], "IntervalSeconds": 1}])
    h = given(doc)
    first = scheduled(h)[0]
    h.when(TaskErrored(task_id=first.task_id, error="Boom", now=at(1)))
    (timer,) = h.state.timers
    h.when(TimerFired(timer_id=f"{EXECUTION_ID}:{timer}", now=at(2)))
    second = scheduled(h)[-1]
    assert second.task_token != first.task_token
    assert first.task_id not in h.state.tasks and second.task_id in h.state.tasks


def test_no_heartbeat_in_time_times_the_token_task_out() -> None:
    h = given(token_task(HeartbeatSeconds=2))
    task_id = scheduled(h)[0].task_id
    h.when(TaskHeartbeat(task_id=task_id, now=at(1)))
    (timer,) = [t for t, i in h.state.timers.items() if i.purpose == "heartbeat"]
    h.when(TimerFired(timer_id=f"{EXECUTION_ID}:{timer}", now=at(3)))
    assert h.state.error == "States.HeartbeatTimeout"


def test_an_activity_task_goes_to_the_activitys_queue_with_a_token() -> None:
    h = given(token_task(ACTIVITY))
    (task,) = scheduled(h)
    assert task.queue == tt.activity_queue("default", "approve") == "activity:default:approve"
    assert task.task_token and task.input["token"] == task.task_token
    assert tt.activity_name(ACTIVITY) == "approve"
    assert tt.activity_name("arn:aws:states:us-east-1:000000000000:activity:a{b}") is None
    assert tt.activity_name("test:echo") is None


def test_an_ordinary_task_has_no_token() -> None:
    doc = token_task("test:echo")
    doc["States"]["Work"]["Parameters"] = {"order.$": "$.order"}
    h = given(doc)
    assert scheduled(h)[0].task_token == ""


def test_an_execution_without_a_token_key_fails_the_state_with_runtime() -> None:
    h = given(token_task(), key="")
    assert h.state.status == "FAILED" and h.state.error == "States.Runtime"
    assert "before steplog issued task tokens" in (h.state.cause or "")
