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
        await running.register("sleeper", SLEEPER)
        yield running


async def _run(app: Running, eventually: Any, input: Any) -> Any:
    return await app.ended(eventually, await app.start_id("sleeper", input))


async def test_heartbeats_keep_a_task_longer_than_heartbeat_seconds_alive(
    app: Running, eventually: Any
) -> None:
    done = await _run(app, eventually, {"seconds": 2.5, "heartbeat_every": 0.3})
    assert done["status"] == "SUCCEEDED", done


async def test_a_silent_task_fails_with_heartbeat_timeout(app: Running, eventually: Any) -> None:
    done = await _run(app, eventually, {"seconds": 4})
    assert done["status"] == "FAILED"
    assert done["error"] == "States.HeartbeatTimeout"
