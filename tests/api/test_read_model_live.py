"""The executions read model in a running steplog (all roles): the listing, which
reads only executions_view, follows executions to their end."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from steplog.settings import Settings
from tests.api.helpers import PASS_DEFINITION
from tests.serving import Running, running_steplog


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[Running]:
    async with running_steplog(settings) as running:
        yield running


async def test_listing_follows_executions_to_their_end(app: Running, eventually: Any) -> None:
    await app.register("pass", PASS_DEFINITION)
    started = {await app.start_id("pass", {"i": i}) for i in range(5)}

    async def all_succeeded() -> Any:
        status, page = await app.call("GET", "/v1/executions?workflow=pass&status=SUCCEEDED")
        listed = {e["execution_id"]: e for e in page["executions"]}
        return listed if status == 200 and set(listed) == started else None

    listed = await eventually(all_succeeded, timeout_s=15)
    assert sorted(e["output"]["i"] for e in listed.values()) == [0, 1, 2, 3, 4]
    assert all(e["stopped_at"] >= e["started_at"] for e in listed.values())
    status, running = await app.call("GET", "/v1/executions?status=RUNNING")
    assert (status, running) == (200, {"executions": [], "next_cursor": None})
