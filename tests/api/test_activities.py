"""Activities through the whole stack: registered by name, a Task whose Resource is the
activity's ARN is handed to whichever worker long-polls it, and the worker reports with
the task routes. Workers here are real processes: a Python one killed mid-task (its task
is handed out again, with the same token and idempotency key) and the curl + jq worker of
examples/activity_worker.sh."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
import redis.asyncio as aioredis

from engine.errors import ActivityNotFound
from engine.messages import WORKER_GROUP
from steplog.settings import Settings
from tests.serving import Running, running_steplog

REPO = Path(__file__).resolve().parents[2]
VISIBILITY_S = 1.5


def activity_workflow(arn: str, **extra: Any) -> dict[str, Any]:
    return {
        "StartAt": "Greet",
        "States": {
            "Greet": {"Type": "Task", "Resource": arn, "End": True, **extra},
        },
    }


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[Running]:
    quick = msgspec.structs.replace(
        settings, task_visibility_timeout_s=VISIBILITY_S, max_deliveries=3
    )
    async with running_steplog(quick) as running:
        yield running


async def make_activity(app: Running, name: str, **extra: Any) -> str:
    status, body = await app.call("POST", "/v1/activities", {"name": name})
    assert status in (200, 201), body
    await app.register(name, activity_workflow(body["activityArn"], **extra))
    return str(body["activityArn"])


async def poll(app: Running, name: str, wait: int = 0) -> tuple[int, Any]:
    async with app.http.post(
        f"{app.base_url}/v1/activities/{name}/poll?wait={wait}", json={"workerName": "test"}
    ) as resp:
        return resp.status, (await resp.json() if resp.status == 200 else await resp.read())


async def test_activities_are_created_listed_read_and_deleted(app: Running) -> None:
    status, made = await app.call("POST", "/v1/activities", {"name": "greeter"})
    assert status == 201
    assert made["activityArn"] == "arn:aws:states:us-east-1:000000000000:activity:greeter"
    status, again = await app.call("POST", "/v1/activities", {"name": "greeter"})
    assert (status, again) == (200, made)  # idempotent, like CreateActivity
    for name in ("b-second", "c-third"):
        assert (await app.call("POST", "/v1/activities", {"name": name}))[0] == 201
    status, page = await app.call("GET", "/v1/activities?limit=2")
    assert status == 200 and [a["name"] for a in page["activities"]] == ["b-second", "c-third"]
    status, rest = await app.call("GET", f"/v1/activities?limit=2&cursor={page['next_cursor']}")
    assert [a["name"] for a in rest["activities"]] == ["greeter"] and rest["next_cursor"] is None
    assert await app.call("GET", "/v1/activities/greeter") == (200, made)
    assert await app.call("DELETE", "/v1/activities/greeter") == (200, made)
    for method in ("GET", "DELETE"):
        status, problem = await app.call(method, "/v1/activities/greeter")
        assert status == 404 and problem["code"] == "activity_not_found"
    status, problem = await poll(app, "greeter")
    assert status == 404
    status, problem = await app.call("POST", "/v1/activities", {"name": "no spaces"})
    assert status == 422 and problem["code"] == "invalid_body"
    status, problem = await app.call("POST", "/v1/activities/b-second/poll?wait=61", {})
    assert status in (400, 422) and "wait" in problem["detail"]


async def test_an_activity_of_another_namespace_is_not_found(app: Running) -> None:
    await make_activity(app, "mine")
    tasks = app.resources.tasks
    assert tasks is not None
    with pytest.raises(ActivityNotFound):
        await tasks.poll("elsewhere", "mine", "w", 0)


async def test_a_poll_with_nothing_queued_answers_204_when_its_wait_ends(app: Running) -> None:
    await make_activity(app, "idle")
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert (await poll(app, "idle", wait=1))[0] == 204
    assert loop.time() - started >= 0.9  # it waited, then gave up (no task came)


async def test_a_long_poll_gets_a_task_scheduled_while_it_waits(
    app: Running, eventually: Any
) -> None:
    await make_activity(app, "waiter")
    polling = asyncio.create_task(poll(app, "waiter", wait=20))
    await asyncio.sleep(0.3)
    assert not polling.done()
    execution_id = await app.start_id("waiter", {"name": "Ann"})
    status, task = await asyncio.wait_for(polling, 15)
    assert status == 200, task
    assert task["input"] == {"name": "Ann"}
    assert task["idempotencyKey"].startswith(f"{execution_id}:Greet:0:")
    status, _ = await app.call(
        "POST", "/v1/tasks/success", {"taskToken": task["taskToken"], "output": {"hi": "Ann"}}
    )
    assert status == 200
    done = await app.ended(eventually, execution_id)
    assert done["status"] == "SUCCEEDED" and done["output"] == {"hi": "Ann"}
    assert (await poll(app, "waiter"))[0] == 204  # acknowledged: not handed out again


async def test_heartbeats_keep_an_activity_task_from_being_handed_out_again(
    app: Running, eventually: Any
) -> None:
    await make_activity(app, "beating")
    execution_id = await app.start_id("beating", {"name": "Bo"})
    status, task = await poll(app, "beating", wait=10)
    assert status == 200
    loop = asyncio.get_running_loop()
    until = loop.time() + 3 * VISIBILITY_S
    while loop.time() < until:
        status, _ = await app.call("POST", "/v1/tasks/heartbeat", {"taskToken": task["taskToken"]})
        assert status == 200
        assert (await poll(app, "beating"))[0] == 204
        await asyncio.sleep(VISIBILITY_S / 4)
    status, _ = await app.call(
        "POST", "/v1/tasks/success", {"taskToken": task["taskToken"], "output": 1}
    )
    assert status == 200
    assert (await app.ended(eventually, execution_id))["status"] == "SUCCEEDED"


async def test_a_task_handed_out_too_often_fails_with_delivery_exceeded(
    app: Running, eventually: Any
) -> None:
    await make_activity(app, "lossy")
    execution_id = await app.start_id("lossy", {})
    keys = set()
    for _ in range(3):  # max_deliveries: the answers never reach a worker
        status, task = await poll(app, "lossy", wait=10)
        assert status == 200
        keys.add(task["idempotencyKey"])
    assert len(keys) == 1
    assert (await poll(app, "lossy", wait=4))[0] == 204  # the 4th delivery is refused
    done = await app.ended(eventually, execution_id)
    assert done["status"] == "FAILED" and done["error"] == "Steplog.TaskDeliveryExceeded", done


async def test_a_task_added_twice_is_still_handed_out_at_most_max_deliveries_times(
    app: Running, redis: aioredis.Redis, eventually: Any
) -> None:
    """Delivery is at least once: recovery can re-add a task the relay published too
    (it did in `make test`, the fresh Redis making recovery run beside the first
    start). The copy is not a new attempt: it is not handed out while the first entry
    is pending, and the deliveries of the attempt count toward max_deliveries."""
    await make_activity(app, "twice")
    execution_id = await app.start_id("twice", {})
    stream = app.resources.bus.tasks_stream("activity:default:twice")
    status, first = await poll(app, "twice", wait=10)
    assert status == 200
    ((_, fields),) = await redis.xrange(stream)
    await redis.xadd(stream, fields)  # the same task again, as a new entry
    handed = [first]
    while (got := await poll(app, "twice", wait=4))[0] == 200:
        handed.append(got[1])
        assert len(handed) <= 3, handed
    assert len(handed) == 3  # max_deliveries, all of the first entry
    assert {t["idempotencyKey"] for t in handed} == {first["idempotencyKey"]}
    done = await app.ended(eventually, execution_id)
    assert done["status"] == "FAILED" and done["error"] == "Steplog.TaskDeliveryExceeded", done
    # Both entries are done with: the first dead-lettered, the copy acknowledged.
    assert (await redis.xpending(stream, WORKER_GROUP))["pending"] == 0


_WORKER = """
import json, os, sys, time, urllib.request
base, activity, mode, marker = sys.argv[1:5]
def post(path, body):
    request = urllib.request.Request(base + path, data=json.dumps(body).encode(),
        method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as resp:
        return resp.status, resp.read()
while True:
    status, body = post(f"/v1/activities/{activity}/poll?wait=20", {"workerName": mode})
    if status == 200:
        break
task = json.loads(body)
with open(marker + ".tmp", "w") as f:
    json.dump(task, f)
os.replace(marker + ".tmp", marker)  # the test never reads half a file
if mode == "hang":
    time.sleep(3600)  # killed here, mid-task
post("/v1/tasks/success", {"taskToken": task["taskToken"],
                           "output": {"by": mode, "key": task["idempotencyKey"]}})
"""


async def worker(app: Running, activity: str, mode: str, marker: Path) -> Any:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", _WORKER, app.base_url, activity, mode, str(marker)
    )


async def test_a_worker_killed_mid_task_has_its_task_handed_to_another(
    app: Running, eventually: Any, tmp_path: Path
) -> None:
    await make_activity(app, "fragile")
    execution_id = await app.start_id("fragile", {"name": "Cy"})
    first_marker, second_marker = tmp_path / "first.json", tmp_path / "second.json"
    doomed = await worker(app, "fragile", "hang", first_marker)
    try:

        async def took_it() -> Any:
            return json.loads(first_marker.read_text()) if first_marker.exists() else None

        first = await eventually(took_it, timeout_s=30)
    finally:
        os.kill(doomed.pid, signal.SIGKILL)
        await doomed.wait()
    assert doomed.returncode == -signal.SIGKILL
    survivor = await worker(app, "fragile", "complete", second_marker)
    assert await asyncio.wait_for(survivor.wait(), 30) == 0
    second = json.loads(second_marker.read_text())
    # The same attempt, handed out again: same token, same idempotency key.
    assert second["taskToken"] == first["taskToken"]
    assert second["idempotencyKey"] == first["idempotencyKey"]
    done = await app.ended(eventually, execution_id, timeout_s=30)
    assert done["status"] == "SUCCEEDED"
    assert done["output"] == {"by": "complete", "key": first["idempotencyKey"]}


async def test_the_curl_example_worker_completes_executions(app: Running, eventually: Any) -> None:
    status, made = await app.call("POST", "/v1/activities", {"name": "greeter"})
    assert status == 201
    definition = activity_workflow(
        made["activityArn"], Catch=[{"ErrorEquals": ["Greeter.NoName"], "Next": "Anonymous"}]
    )
    definition["States"]["Anonymous"] = {"Type": "Pass", "Result": "anonymous", "End": True}
    await app.register("greeter", definition)
    named = await app.start_id("greeter", {"name": "Dee"})
    nameless = await app.start_id("greeter", {"nobody": True})
    script = REPO / "examples" / "activity_worker.sh"
    proc = await asyncio.create_subprocess_exec(
        "bash",
        str(script),
        "greeter",
        "2",
        env={"PATH": os.environ["PATH"], "STEPLOG_URL": app.base_url},
    )
    assert await asyncio.wait_for(proc.wait(), 60) == 0
    done = await app.ended(eventually, named)
    assert done["status"] == "SUCCEEDED" and done["output"] == {"greeting": "Hello, Dee!"}
    done = await app.ended(eventually, nameless)
    assert done["status"] == "SUCCEEDED" and done["output"] == "anonymous", done


async def test_a_poll_whose_client_went_away_loses_no_task(app: Running, eventually: Any) -> None:
    """The poller disconnects while its poll waits; the task that arrives then (taken
    by the abandoned poll, or not) is handed to the next poll, after the visibility
    timeout at worst."""
    await make_activity(app, "gone")
    with pytest.raises(TimeoutError):
        async with app.http.post(
            f"{app.base_url}/v1/activities/gone/poll?wait=5",
            json={},
            timeout=aiohttp.ClientTimeout(total=0.5),
        ) as resp:
            await resp.read()
    execution_id = await app.start_id("gone", {"name": "Eve"})
    status, task = await poll(app, "gone", wait=15)
    assert status == 200 and task["input"] == {"name": "Eve"}
    status, _ = await app.call(
        "POST", "/v1/tasks/success", {"taskToken": task["taskToken"], "output": "ok"}
    )
    assert status == 200
    assert (await app.ended(eventually, execution_id))["status"] == "SUCCEEDED"


async def test_an_activity_task_survives_redis_losing_its_data(
    app: Running, redis: aioredis.Redis, redis_prefix: str, eventually: Any
) -> None:
    """Recovery puts the pending attempt back on the activity's queue from PostgreSQL;
    the next poll re-creates the consumer group and gets it."""
    await make_activity(app, "durable")
    first = await app.start_id("durable", {"name": "Fay"})
    status, taken = await poll(app, "durable", wait=10)  # taken, never reported
    assert status == 200
    second = await app.start_id("durable", {"name": "Gil"})
    stream = app.resources.bus.tasks_stream("activity:default:durable")

    async def queued() -> bool:
        return bool(await redis.xlen(stream) >= 2)

    await eventually(queued)
    keys = [k async for k in redis.scan_iter(match=f"*{{{redis_prefix}*", count=1000)]
    await redis.delete(*keys)  # what FLUSHALL does to this test's deployment
    got = {}
    for _ in range(2):
        status, task = await poll(app, "durable", wait=20)
        assert status == 200, task
        got[task["input"]["name"]] = task
    assert got["Fay"]["taskToken"] == taken["taskToken"]
    for task in got.values():
        body = {"taskToken": task["taskToken"], "output": task["input"]["name"]}
        assert (await app.call("POST", "/v1/tasks/success", body))[0] == 200
    for execution_id in (first, second):
        assert (await app.ended(eventually, execution_id))["status"] == "SUCCEEDED"


async def test_a_waiting_poll_ends_at_shutdown_instead_of_holding_it(settings: Settings) -> None:
    loop = asyncio.get_running_loop()
    async with running_steplog(settings) as running:
        await make_activity(running, "closing")
        waiting = asyncio.create_task(poll(running, "closing", wait=60))
        await asyncio.sleep(0.5)
        assert not waiting.done()
        began = loop.time()
    assert loop.time() - began < 15  # not the poll's 60 s
    assert (await waiting)[0] == 204
