"""steplog.client's task-token and activity calls, and ActivityWorker, against a whole
steplog with the routes of issue 12 items 2-3 (authentication on)."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from steplog.client import (
    ActivityFailure,
    ActivityTask,
    ActivityWorker,
    AsyncClient,
    Client,
    Conflict,
    InvalidRequest,
    NotFound,
)
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
                "Catch": [{"ErrorEquals": ["Rejected"], "ResultPath": "$.why", "Next": "No"}],
                "End": True,
                **extra,
            },
            "No": {"Type": "Pass", "End": True},
        },
    }


def on_activity(arn: str, **extra: Any) -> dict[str, Any]:
    return {
        "StartAt": "Work",
        "States": {"Work": {"Type": "Task", "Resource": arn, "End": True, **extra}},
    }


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[Running]:
    quick = msgspec.structs.replace(settings, auth=True, task_visibility_timeout_s=1.5)
    async with running_steplog(quick) as running:
        yield running


@pytest.fixture
async def steplog(app: Running) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(app.base_url, api_key=app.key) as client:
        yield client


async def token_of(steplog: AsyncClient, execution_id: str) -> str:
    for _ in range(500):
        async for event in steplog.history(execution_id):
            if event.type == "TaskScheduled":
                return str(event.details["input"]["token"])
        await asyncio.sleep(0.02)
    raise AssertionError("no TaskScheduled")


async def test_task_success_failure_and_heartbeat_by_token(steplog: AsyncClient) -> None:
    await steplog.register("approval", waiting())
    await steplog.register("beating", waiting(HeartbeatSeconds=60))
    ok = await steplog.start("approval", {"order": 1})
    token = await token_of(steplog, ok.execution_id)
    await steplog.send_task_success(token, {"approved": True})
    done = await steplog.wait(ok.execution_id, timeout_s=60)
    assert done.status == "SUCCEEDED"
    assert msgspec.json.decode(done.output) == {"approved": True}
    with pytest.raises(Conflict) as twice:  # a token used twice
        await steplog.send_task_success(token, 1)
    assert twice.value.code == "task_timed_out"

    no = await steplog.start("approval", {"order": 2})
    await steplog.send_task_failure(
        await token_of(steplog, no.execution_id), error="Rejected", cause="over budget"
    )
    rejected = await steplog.wait(no.execution_id, timeout_s=60)
    assert msgspec.json.decode(rejected.output)["why"] == {
        "Error": "Rejected",
        "Cause": "over budget",
    }

    beating = await steplog.start("beating", {"order": 3})
    beat_token = await token_of(steplog, beating.execution_id)
    await steplog.send_task_heartbeat(beat_token)
    assert (await steplog.describe(beating.execution_id)).status == "RUNNING"
    with pytest.raises(InvalidRequest) as bad:
        await steplog.send_task_heartbeat("not-a-token")
    assert bad.value.code in ("invalid_token", "invalid_body")
    await steplog.stop(beating.execution_id)


async def test_activities_are_created_listed_polled_and_deleted(steplog: AsyncClient) -> None:
    made = await steplog.create_activity("greeter")
    assert made.activity_arn.endswith(":activity:greeter")
    assert await steplog.create_activity("greeter") == made
    assert [a.name for a in await steplog.list_activities()] == ["greeter"]
    assert await steplog.describe_activity("greeter") == made
    assert await steplog.poll_activity("greeter", wait_s=0) is None
    await steplog.register("greet", on_activity(made.activity_arn))
    started = await steplog.start("greet", {"who": "Ann"})
    task = await steplog.poll_activity("greeter", worker_name="test", wait_s=10)
    assert isinstance(task, ActivityTask) and task.input == {"who": "Ann"}
    assert task.idempotency_key
    await steplog.send_task_success(task.task_token, {"hi": "Ann"})
    assert (await steplog.wait(started.execution_id, timeout_s=60)).status == "SUCCEEDED"
    await steplog.delete_activity("greeter")
    with pytest.raises(NotFound) as gone:
        await steplog.describe_activity("greeter")
    assert gone.value.code == "activity_not_found"


async def test_an_activity_worker_runs_executions_to_their_end(steplog: AsyncClient) -> None:
    activity = await steplog.create_activity("approver")
    await steplog.register("approve", on_activity(activity.activity_arn, HeartbeatSeconds=5))

    async def approve(order: Any, task: ActivityTask) -> Any:
        if order["amount"] > 1000:
            raise ActivityFailure("OrderRejected", "too large")
        await asyncio.sleep(0.2)
        return {"approved": order["amount"], "key": bool(task.idempotency_key)}

    worker = ActivityWorker(
        steplog, "approver", approve, heartbeat_s=0.1, concurrency=4, poll_wait_s=2
    )
    running = asyncio.create_task(worker.run())
    try:
        ids = [(await steplog.start("approve", {"amount": a})).execution_id for a in (5, 50, 5000)]
        ends = [await steplog.wait(i, timeout_s=60) for i in ids]
    finally:
        worker.stop()
        await asyncio.wait_for(running, 30)
    assert [e.status for e in ends] == ["SUCCEEDED", "SUCCEEDED", "FAILED"]
    assert msgspec.json.decode(ends[0].output) == {"approved": 5, "key": True}
    assert (ends[2].error, ends[2].cause) == ("OrderRejected", "too large")
    assert (worker.completed, worker.failed) == (2, 1)
    beats = [e async for e in steplog.history(ids[0]) if e.type == "TaskHeartbeatRecorded"]
    assert beats  # the worker's heartbeats reached the execution while it worked


async def test_the_sync_client_calls_the_same_routes(app: Running) -> None:
    def tour() -> str:
        with Client(app.base_url, api_key=app.key) as steplog:
            activity = steplog.create_activity("sync-act")
            steplog.register("sync", on_activity(activity.activity_arn))
            started = steplog.start("sync", {"n": 2})
            task = steplog.poll_activity("sync-act", wait_s=10)
            assert task is not None
            steplog.send_task_success(task.task_token, task.input["n"] * 21)
            return steplog.wait(started.execution_id, timeout_s=60).status

    assert await asyncio.to_thread(tour) == "SUCCEEDED"


_WORKER = """
import asyncio, sys
from steplog.client import ActivityWorker, AsyncClient

async def slow(value):
    print("started", flush=True)
    await asyncio.sleep(1.5)
    return {"done": value}

async def main():
    async with AsyncClient(sys.argv[1], api_key=sys.argv[2]) as client:
        worker = ActivityWorker(client, "slow", slow, heartbeat_s=0.5, poll_wait_s=5)
        await worker.run(handle_signals=True)
        print("stopped", worker.completed, flush=True)

asyncio.run(main())
"""


async def test_sigterm_lets_a_worker_process_finish_its_task(
    app: Running, steplog: AsyncClient
) -> None:
    activity = await steplog.create_activity("slow")
    await steplog.register("slow", on_activity(activity.activity_arn))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _WORKER, app.base_url, str(app.key), stdout=asyncio.subprocess.PIPE
    )
    assert process.stdout is not None
    started = await steplog.start("slow", {"n": 1})
    line = await asyncio.wait_for(process.stdout.readline(), 20)
    assert line.strip() == b"started"
    process.send_signal(signal.SIGTERM)  # mid-task
    rest, _ = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 0 and rest.decode().split() == ["stopped", "1"]
    done = await steplog.wait(started.execution_id, timeout_s=10)
    assert done.status == "SUCCEEDED" and msgspec.json.decode(done.output) == {"done": {"n": 1}}
