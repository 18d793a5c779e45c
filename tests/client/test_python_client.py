"""steplog.client against a whole steplog served by the test (tests/serving.py), with
authentication on: the calls, paging, the live feed, typed errors, retries of 429 and
503 honouring Retry-After, the namespace header, and the sync client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import web

from engine.access import Actor
from steplog.client import (
    AsyncClient,
    Client,
    Conflict,
    EventOut,
    ExecutionOut,
    InvalidRequest,
    NotFound,
    RateLimited,
    Unauthenticated,
    Unavailable,
    WaitTimeout,
    json_value,
)
from steplog.settings import Settings
from tests.serving import Running, free_port, running_steplog

ORDER = json.loads((Path(__file__).parents[2] / "examples" / "order.asl.json").read_text())
HOLD = {
    "StartAt": "Hold",
    "States": {"Hold": {"Type": "Wait", "Seconds": 3600, "End": True}},
}
SETUP = Actor(key_id=None, namespace=None, remote="tests")


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[Running]:
    async with running_steplog(msgspec.structs.replace(settings, auth=True)) as running:
        yield running


@pytest.fixture
async def steplog(app: Running) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(app.base_url, api_key=app.key) as client:
        yield client


async def test_register_start_wait_and_read_an_execution(steplog: AsyncClient) -> None:
    registered = await steplog.register("order", ORDER)
    assert (registered.name, registered.version) == ("order", 1)
    assert (await steplog.register("order", ORDER)).version == 1  # unchanged: same version
    assert [w.name for w in await steplog.list_workflows()] == ["order"]

    order = {"order_id": "o-1", "amount": 250}
    started = await steplog.start("order", order, name="order-o-1")
    assert isinstance(started, ExecutionOut) and json_value(started.input) == order
    again = await steplog.start("order", order, name="order-o-1")
    assert again.execution_id == started.execution_id
    with pytest.raises(Conflict) as conflict:
        await steplog.start("order", {"order_id": "o-1", "amount": 9}, name="order-o-1")
    assert conflict.value.code == "execution_name_conflict" and conflict.value.status == 409

    done = await steplog.wait(started.execution_id, timeout_s=60)
    assert done.status == "SUCCEEDED"
    assert json_value(done.output) == {"order_id": "o-1", "status": "APPROVED"}
    assert (await steplog.describe(started.execution_id)).status == "SUCCEEDED"

    # History as an async iterator over pages of 2: every event once, in seq order.
    paged = [e async for e in steplog.history(started.execution_id, page_size=2)]
    whole = (await steplog.history_page(started.execution_id, limit=1000)).events
    assert paged == whole and [e.seq for e in paged] == list(range(1, len(whole) + 1))
    assert paged[0].type == "ExecutionStarted" and paged[-1].type == "ExecutionSucceeded"
    newest_first = [e.seq async for e in steplog.history(started.execution_id, reverse=True)]
    assert newest_first == [e.seq for e in reversed(whole)]
    assert (await steplog.state(started.execution_id))["status"] == "SUCCEEDED"


async def test_the_live_feed_follows_a_running_execution_to_its_end(
    steplog: AsyncClient,
) -> None:
    await steplog.register("order", ORDER)
    started = await steplog.start("order", {"order_id": "o-2", "amount": 5, "hold_seconds": 1})
    seen: list[EventOut] = [e async for e in steplog.events(started.execution_id)]
    assert seen[-1].type == "ExecutionSucceeded"
    assert "WaitStateEntered" in [e.type for e in seen]
    assert seen == [e async for e in steplog.history(started.execution_id)]
    # Resuming after a seq gives the rest only.
    rest = [e async for e in steplog.events(started.execution_id, after=3)]
    assert rest == seen[3:]
    # Past the end of an ended execution: an empty feed that ends at once.
    assert [e async for e in steplog.events(started.execution_id, after=len(seen))] == []


async def test_listing_pages_through_every_execution(steplog: AsyncClient, app: Running) -> None:
    await steplog.register("order", ORDER)
    ids = {
        (await steplog.start("order", {"order_id": f"o-{i}", "amount": 1})).execution_id
        for i in range(5)
    }
    for eid in ids:
        await steplog.wait(eid, timeout_s=60)

    async def listed() -> set[str]:
        return {e.execution_id async for e in steplog.executions(workflow="order", limit=2)}

    async def all_listed() -> bool:  # the listing reads a read model: it follows shortly
        return await listed() == ids

    await app_eventually(all_listed)
    page = await steplog.list_executions(workflow="order", limit=2, order="asc")
    assert len(page.executions) == 2 and page.next_cursor is not None


async def app_eventually(predicate: Any, timeout_s: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await predicate():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_stop_and_wait_timeout(steplog: AsyncClient) -> None:
    await steplog.register("hold", HOLD)
    started = await steplog.start("hold", {})
    with pytest.raises(WaitTimeout):
        await steplog.wait(started.execution_id, timeout_s=0.3)
    stopped = await steplog.stop(started.execution_id, error="Cancelled", cause="by a test")
    assert (stopped.status, stopped.error, stopped.cause) == ("ABORTED", "Cancelled", "by a test")
    assert (await steplog.wait(started.execution_id, timeout_s=30)).status == "ABORTED"


async def test_errors_are_typed_and_carry_the_problem_code(
    steplog: AsyncClient, app: Running
) -> None:
    with pytest.raises(NotFound) as missing:
        await steplog.describe("00000000-0000-0000-0000-000000000000")
    assert missing.value.code == "execution_not_found" and missing.value.request_id
    with pytest.raises(NotFound) as no_workflow:
        await steplog.start("nowhere", {}, name="x")
    assert no_workflow.value.code == "workflow_not_found"
    with pytest.raises(InvalidRequest) as invalid:
        await steplog.register("bad", {"StartAt": "Nope", "States": {}})
    assert invalid.value.code == "invalid_definition" and invalid.value.errors
    async with AsyncClient(app.base_url, api_key="slk_not-a-key") as stranger:
        with pytest.raises(Unauthenticated) as refused:
            await stranger.list_workflows()
    assert refused.value.code == "unauthenticated"


async def test_the_key_comes_from_the_environment_and_the_namespace_header(
    app: Running,
) -> None:
    access = app.resources.access
    await access.create_namespace("team", SETUP)
    _, global_key = await access.create_key(namespace=None, role="admin", actor=SETUP)
    env = {"STEPLOG_API_KEY": global_key, "STEPLOG_URL": app.base_url}
    async with (
        AsyncClient(environ=env, namespace="team") as team,
        AsyncClient(environ=env) as default,
    ):
        await team.register("only-in-team", HOLD)
        assert [w.name for w in await team.list_workflows()] == ["only-in-team"]
        with pytest.raises(NotFound):
            await default.describe_workflow("only-in-team")
    async with AsyncClient(environ=env, namespace="no-such-team") as lost:
        with pytest.raises(NotFound) as unknown:
            await lost.list_workflows()
    assert unknown.value.code == "namespace_not_found"


async def test_rate_limited_reads_are_retried_after_retry_after(settings: Settings) -> None:
    tight = msgspec.structs.replace(
        settings, auth=True, rate_limits="starts=500/1000,writes=1000/2000,reads=4/1"
    )
    async with running_steplog(tight) as app:
        async with AsyncClient(app.base_url, api_key=app.key, retries=0) as once:
            await once.list_workflows()
            with pytest.raises(RateLimited) as limited:
                await once.list_workflows()
        assert limited.value.code == "rate_limited" and limited.value.retry_after
        async with AsyncClient(app.base_url, api_key=app.key, retries=3) as patient:
            for _ in range(3):  # each one past the first waits for its token
                assert await patient.list_workflows() == []


async def test_503_is_retried_after_retry_after_and_a_dead_server_is_unavailable() -> None:
    answers = [503, 503, 200]
    seen: list[str] = []

    async def flaky(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        status = answers.pop(0)
        if status == 503:
            problem = {"code": "service_unavailable", "detail": "later", "status": 503}
            return web.json_response(problem, status=503, headers={"Retry-After": "0"})
        return web.json_response({"workflows": []})

    server = web.Application()
    server.router.add_get("/v1/workflows", flaky)
    runner = web.AppRunner(server)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with AsyncClient(f"http://127.0.0.1:{port}", api_key="k") as steplog:
            assert await steplog.list_workflows() == []
        assert seen == ["Bearer k"] * 3
        answers[:] = [503, 503]
        async with AsyncClient(f"http://127.0.0.1:{port}", retries=1) as short:
            with pytest.raises(Unavailable) as gave_up:
                await short.list_workflows()
        assert gave_up.value.code == "service_unavailable" and gave_up.value.retry_after == 0
    finally:
        await runner.cleanup()
    async with AsyncClient(f"http://127.0.0.1:{free_port()}", retries=1, backoff_s=0.01) as gone:
        with pytest.raises(Unavailable) as refused:
            await gone.list_workflows()
    assert refused.value.code == "connection_failed"


async def test_the_sync_client_does_the_same_from_a_thread(app: Running) -> None:
    def tour() -> tuple[str, Any, list[int], list[str]]:
        with Client(app.base_url, api_key=app.key) as steplog:
            steplog.register("order", ORDER)
            started = steplog.start("order", {"order_id": "o-3", "amount": 7}, name="o-3")
            live = [e.type for e in steplog.events(started.execution_id)]
            done = steplog.wait(started.execution_id, timeout_s=60)
            seqs = [e.seq for e in steplog.history(started.execution_id, page_size=3)]
            try:
                steplog.describe_workflow("missing")
            except NotFound as exc:
                assert exc.code == "workflow_not_found"
            else:
                raise AssertionError("a missing workflow was found")
            return done.status, json_value(done.output), seqs, live

    status, output, seqs, live = await asyncio.to_thread(tour)
    assert (status, output) == ("SUCCEEDED", {"order_id": "o-3", "status": "APPROVED"})
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) > 3
    assert live[0] == "ExecutionStarted" and live[-1] == "ExecutionSucceeded"
