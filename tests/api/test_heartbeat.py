"""HeartbeatSeconds through the whole stack: a worker's heartbeats keep a long task
alive; a silent task fails with States.HeartbeatTimeout."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from steplog.settings import Settings
from tests.serving import Running, running_steplog

SLEEPER = {
    "StartAt": "Sleep",
    "States": {
        "Sleep": {"Type": "Task", "Resource": "test:sleep", "HeartbeatSeconds": 1, "End": True}
    },
}


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[Running]:
    async with running_steplog(settings) as running:
        async with running.http.put(
            running.base_url + "/v1/workflows/sleeper", json={"definition": SLEEPER}
        ) as resp:
            assert resp.status == 201
        yield running


async def _run(app: Running, eventually: Any, input: Any) -> Any:
    async with app.http.post(
        app.base_url + "/v1/workflows/sleeper/executions", json={"input": input}
    ) as resp:
        execution_id = (await resp.json())["execution_id"]

    async def ended() -> Any:
        async with app.http.get(f"{app.base_url}/v1/executions/{execution_id}") as resp:
            body = await resp.json()
        return body if body["status"] != "RUNNING" else None

    return await eventually(ended, timeout_s=15)


async def test_heartbeats_keep_a_task_longer_than_heartbeat_seconds_alive(
    app: Running, eventually: Any
) -> None:
    done = await _run(app, eventually, {"seconds": 2.5, "heartbeat_every": 0.3})
    assert done["status"] == "SUCCEEDED", done


async def test_a_silent_task_fails_with_heartbeat_timeout(app: Running, eventually: Any) -> None:
    done = await _run(app, eventually, {"seconds": 4})
    assert done["status"] == "FAILED"
    assert done["error"] == "States.HeartbeatTimeout"
