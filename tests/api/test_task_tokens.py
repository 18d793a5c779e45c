"""Task tokens (the callback pattern) through the whole stack: a Task whose Resource ends
in .waitForTaskToken runs its base handler, then waits until POST /v1/tasks/success,
failure or heartbeat names its token, sent here by another process (curl-like, a Python
subprocess with nothing but urllib). Step Functions' answers for tokens used twice,
tokens of ended executions, forged and malformed tokens."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import pytest

from engine.core.events import decode_event
from engine.core.replay import Recorded, verify_history
from engine.errors import InvalidToken
from steplog.settings import Settings
from tests.serving import Running, running_steplog


def waiting(**extra: Any) -> dict[str, Any]:
    return {
        "StartAt": "Approve",
        "States": {
            "Approve": {
                "Type": "Task",
                "Resource": "test:echo.waitForTaskToken",
                "Parameters": {"token.$": "$$.Task.Token", "order.$": "$.order"},
                "ResultPath": "$.approval",
                "Catch": [{"ErrorEquals": ["Rejected"], "Next": "Rejected"}],
                "End": True,
                **extra,
            },
            "Rejected": {"Type": "Pass", "Result": "rejected", "End": True},
        },
    }


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[Running]:
    async with running_steplog(settings) as running:
        await running.register("approval", waiting())
        await running.register("heartbeat", waiting(HeartbeatSeconds=2))
        await running.register("timeout", waiting(TimeoutSeconds=1))
        yield running


async def token_of(app: Running, eventually: Any, execution_id: str) -> str:
    """The token the execution's TaskScheduled carries (as a worker's input shows it)."""

    async def scheduled() -> str | None:
        status, body = await app.call("GET", f"/v1/executions/{execution_id}/history")
        assert status == 200, body
        tasks = [e for e in body["events"] if e["type"] == "TaskScheduled"]
        return tasks[-1]["details"]["input"]["token"] if tasks else None

    return await eventually(scheduled)


async def events(app: Running, execution_id: str) -> list[str]:
    status, body = await app.call("GET", f"/v1/executions/{execution_id}/history")
    assert status == 200
    return [e["type"] for e in body["events"]]


_SENDER = """
import json, sys, urllib.request, urllib.error
url, body = sys.argv[1], sys.argv[2]
request = urllib.request.Request(url, data=body.encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
try:
    with urllib.request.urlopen(request) as resp:
        print(resp.status, resp.read().decode())
except urllib.error.HTTPError as err:
    print(err.code, err.read().decode())
"""


async def send_from_another_process(app: Running, route: str, body: Any) -> tuple[int, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _SENDER,
        f"{app.base_url}/v1/tasks/{route}",
        json.dumps(body),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0
    status, _, text = out.decode().strip().partition(" ")
    return int(status), json.loads(text)


async def test_a_token_task_is_completed_by_another_process(app: Running, eventually: Any) -> None:
    execution_id = await app.start_id("approval", {"order": 42})
    token = await token_of(app, eventually, execution_id)
    status, body = await send_from_another_process(
        app, "success", {"taskToken": token, "output": {"approved": True, "by": "ann"}}
    )
    assert (status, body) == (200, {})
    # 200 means committed: the TaskSucceeded is in the history already.
    assert "TaskSucceeded" in await events(app, execution_id)
    done = await app.ended(eventually, execution_id)
    assert done["status"] == "SUCCEEDED", done
    assert json.loads(json.dumps(done["output"])) == {
        "order": 42,
        "approval": {"approved": True, "by": "ann"},
    }


async def test_a_failure_is_caught_by_catch(app: Running, eventually: Any) -> None:
    execution_id = await app.start_id("approval", {"order": 1})
    token = await token_of(app, eventually, execution_id)
    status, body = await send_from_another_process(
        app, "failure", {"taskToken": token, "error": "Rejected", "cause": "over budget"}
    )
    assert (status, body) == (200, {})
    done = await app.ended(eventually, execution_id)
    assert done["status"] == "SUCCEEDED" and done["output"] == "rejected", done
    history = await app.call("GET", f"/v1/executions/{execution_id}/history")
    failed = [e for e in history[1]["events"] if e["type"] == "TaskFailed"]
    assert failed[0]["details"]["error"] == "Rejected"
    assert failed[0]["details"]["cause"] == "over budget"


async def test_a_token_used_twice_is_task_timed_out_the_second_time(
    app: Running, eventually: Any
) -> None:
    execution_id = await app.start_id("approval", {"order": 2})
    token = await token_of(app, eventually, execution_id)
    assert (await app.call("POST", "/v1/tasks/success", {"taskToken": token, "output": 1}))[
        0
    ] == 200
    before = await events(app, execution_id)
    for route, body in (
        ("success", {"taskToken": token, "output": 2}),
        ("failure", {"taskToken": token, "error": "Late"}),
        ("heartbeat", {"taskToken": token}),
    ):
        status, problem = await app.call("POST", f"/v1/tasks/{route}", body)
        assert status == 409 and problem["code"] == "task_timed_out", (route, problem)
    await app.ended(eventually, execution_id)
    after = await events(app, execution_id)
    assert after[: len(before)] == before
    assert "TaskResultIgnored" not in after  # a refused callback records nothing


async def test_the_token_of_an_ended_execution_is_task_timed_out(
    app: Running, eventually: Any
) -> None:
    execution_id = await app.start_id("approval", {"order": 3})
    token = await token_of(app, eventually, execution_id)
    status, _ = await app.call("POST", f"/v1/executions/{execution_id}/stop", {})
    assert status == 200
    status, problem = await app.call(
        "POST", "/v1/tasks/success", {"taskToken": token, "output": {}}
    )
    assert status == 409 and problem["code"] == "task_timed_out"
    assert "ABORTED" in problem["detail"]


async def test_malformed_forged_and_foreign_tokens_are_invalid_and_change_nothing(
    app: Running, eventually: Any
) -> None:
    execution_id = await app.start_id("approval", {"order": 4})
    token = await token_of(app, eventually, execution_id)
    before = await events(app, execution_id)
    forged = token[:-4] + ("0000" if not token.endswith("0000") else "1111")
    other_seq = token.split(".")
    other_seq[2] = "1"  # seq 1 is ExecutionStarted: the MAC does not verify for it
    for bad in ("nope", forged, ".".join(other_seq), token.upper()):
        status, problem = await app.call(
            "POST", "/v1/tasks/success", {"taskToken": bad, "output": {}}
        )
        assert status == 400 and problem["code"] == "invalid_token", (bad, problem)
    status, problem = await app.call("POST", "/v1/tasks/success", {"taskToken": token})
    assert status == 422 and problem["code"] == "invalid_body"  # output is required
    # A token of another namespace is not one of its own: invalid, like a forged one.
    tasks = app.resources.tasks
    assert tasks is not None
    with pytest.raises(InvalidToken):
        await tasks.succeed("elsewhere", token, {}, dt.datetime.now(dt.UTC))
    assert await events(app, execution_id) == before
    status, _ = await app.call("POST", "/v1/tasks/success", {"taskToken": token, "output": {}})
    assert status == 200


async def test_heartbeats_keep_a_token_task_alive_past_heartbeat_seconds(
    app: Running, eventually: Any
) -> None:
    execution_id = await app.start_id("heartbeat", {"order": 5})
    token = await token_of(app, eventually, execution_id)
    loop = asyncio.get_running_loop()
    until = loop.time() + 4.5  # more than twice HeartbeatSeconds (2)
    while loop.time() < until:
        status, body = await app.call("POST", "/v1/tasks/heartbeat", {"taskToken": token})
        assert (status, body) == (200, {})
        await asyncio.sleep(0.5)
    status, _ = await app.call("POST", "/v1/tasks/success", {"taskToken": token, "output": 5})
    assert status == 200
    done = await app.ended(eventually, execution_id)
    assert done["status"] == "SUCCEEDED", done
    assert (await events(app, execution_id)).count("TaskHeartbeatRecorded") >= 8


async def test_without_heartbeats_the_token_task_times_out(app: Running, eventually: Any) -> None:
    execution_id = await app.start_id("heartbeat", {"order": 6})
    token = await token_of(app, eventually, execution_id)
    done = await app.ended(eventually, execution_id)
    assert done["status"] == "FAILED" and done["error"] == "States.HeartbeatTimeout", done
    status, problem = await app.call("POST", "/v1/tasks/heartbeat", {"taskToken": token})
    assert status == 409 and problem["code"] == "task_timed_out"


async def test_timeout_seconds_ends_the_wait_and_a_late_callback_is_refused(
    app: Running, eventually: Any
) -> None:
    execution_id = await app.start_id("timeout", {"order": 7})
    token = await token_of(app, eventually, execution_id)
    done = await app.ended(eventually, execution_id)
    assert done["status"] == "FAILED" and done["error"] == "States.Timeout", done
    status, problem = await app.call(
        "POST", "/v1/tasks/success", {"taskToken": token, "output": {}}
    )
    assert status == 409 and problem["code"] == "task_timed_out"


async def test_a_failing_base_handler_fails_the_task_without_a_callback(
    app: Running, eventually: Any
) -> None:
    definition = waiting()
    definition["States"]["Approve"]["Resource"] = "test:fail.waitForTaskToken"
    definition["States"]["Approve"]["Parameters"] = {
        "token.$": "$$.Task.Token",
        "error": "Rejected",
    }
    await app.register("failing", definition)
    execution_id = await app.start_id("failing", {"order": 8})
    done = await app.ended(eventually, execution_id)
    assert done["status"] == "SUCCEEDED" and done["output"] == "rejected", done


async def test_a_history_with_callbacks_replays_to_the_same_events(
    app: Running, eventually: Any
) -> None:
    """Invariant 3: tokens come from the recorded key, callbacks are rebuilt as task
    results and heartbeats: `steplog verify` reproduces the history."""
    execution_id = await app.start_id("heartbeat", {"order": 9})
    token = await token_of(app, eventually, execution_id)
    assert (await app.call("POST", "/v1/tasks/heartbeat", {"taskToken": token}))[0] == 200
    status, _ = await app.call("POST", "/v1/tasks/success", {"taskToken": token, "output": [1]})
    assert status == 200
    await app.ended(eventually, execution_id)
    service = app.resources.service
    stored = await app.resources.store.load(UUID(execution_id))
    history = [
        Recorded(seq=e.seq, event=decode_event(e.data), timestamp=e.timestamp) for e in stored
    ]
    definition = await service.definition("default", "heartbeat", 1)
    verdict = verify_history(definition, execution_id, history)
    assert verdict.ok, verdict
    assert verdict.events == len(history) and "TaskHeartbeatRecorded" in [e.type for e in stored]
