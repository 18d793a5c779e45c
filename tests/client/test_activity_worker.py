"""ActivityWorker's own contract (running, reporting, heartbeats, graceful stop) over
HTTP against a stand-in of the activity and task-token routes as issue 12 publishes
them (POST /v1/activities/{name}/poll, /v1/tasks/success|failure|heartbeat). The
routes themselves are another branch's; once merged, the end-to-end test of a worker
against steplog belongs beside this one."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from steplog.client import ActivityFailure, ActivityTask, ActivityWorker, AsyncClient, Client
from tests.serving import free_port


class Routes:
    """The stand-in: hands out queued tasks and records every report."""

    def __init__(self) -> None:
        self.tasks: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.reports: list[tuple[str, dict[str, Any]]] = []
        self.polls = 0

    async def poll(self, request: web.Request) -> web.Response:
        self.polls += 1
        wait = min(float(request.query.get("wait", "60")), 0.2)  # kept short for tests
        try:
            token, value = await asyncio.wait_for(self.tasks.get(), wait)
        except TimeoutError:
            return web.Response(status=204)
        return web.json_response(
            {"taskToken": token, "input": value, "idempotencyKey": f"key-{token}"}
        )

    def report(self, kind: str) -> Any:
        async def handle(request: web.Request) -> web.Response:
            self.reports.append((kind, await request.json()))
            return web.json_response({})

        return handle

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [body for k, body in self.reports if k == kind]


@pytest.fixture
async def routes() -> AsyncIterator[tuple[Routes, str]]:
    state = Routes()
    app = web.Application()
    app.router.add_post("/v1/activities/{name}/poll", state.poll)
    for kind in ("success", "failure", "heartbeat"):
        app.router.add_post(f"/v1/tasks/{kind}", state.report(kind))
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield state, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def until(predicate: Any, timeout_s: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_outputs_failures_and_exceptions_are_reported_with_their_tokens(
    routes: tuple[Routes, str],
) -> None:
    state, url = routes

    async def handler(value: Any) -> Any:
        if value.get("reject"):
            raise ActivityFailure("OrderRejected", "too large")
        if value.get("crash"):
            raise KeyError("missing")
        return {"double": value["n"] * 2}

    for token, value in (("t1", {"n": 21}), ("t2", {"reject": True}), ("t3", {"crash": 1})):
        state.tasks.put_nowait((token, value))
    async with AsyncClient(url) as client:
        worker = ActivityWorker(client, "act", handler, poll_wait_s=1)
        running = asyncio.create_task(worker.run())
        await until(lambda: len(state.reports) == 3)
        worker.stop()
        await asyncio.wait_for(running, 30)
    assert state.of("success") == [{"taskToken": "t1", "output": {"double": 42}}]
    assert state.of("failure") == [
        {"taskToken": "t2", "error": "OrderRejected", "cause": "too large"},
        {"taskToken": "t3", "error": "KeyError", "cause": "'missing'"},
    ]
    assert (worker.completed, worker.failed) == (1, 2)


async def test_heartbeats_are_sent_while_a_handler_runs(routes: tuple[Routes, str]) -> None:
    state, url = routes

    async def slow(value: Any) -> Any:  # works until three heartbeats went out
        await until(lambda: len(state.of("heartbeat")) >= 3)
        return value

    state.tasks.put_nowait(("slow", {"x": 1}))
    async with AsyncClient(url) as client:
        worker = ActivityWorker(client, "act", slow, heartbeat_s=0.1, poll_wait_s=1)
        running = asyncio.create_task(worker.run())
        await until(lambda: bool(state.of("success")))
        worker.stop()
        await asyncio.wait_for(running, 30)
    beats = state.of("heartbeat")
    assert len(beats) >= 3 and all(b == {"taskToken": "slow"} for b in beats)
    assert state.reports[-1] == ("success", {"taskToken": "slow", "output": {"x": 1}})


async def test_a_stop_lets_the_running_task_finish_and_report_and_polls_no_more(
    routes: tuple[Routes, str],
) -> None:
    state, url = routes
    started, release = asyncio.Event(), asyncio.Event()

    async def held(value: Any) -> Any:
        started.set()
        await release.wait()
        return "finished"

    state.tasks.put_nowait(("held", {}))
    async with AsyncClient(url) as client:
        worker = ActivityWorker(client, "act", held, poll_wait_s=1, concurrency=2)
        stop = asyncio.Event()  # a stop event of the caller's, as a service has
        running = asyncio.create_task(worker.run(stop))
        await asyncio.wait_for(started.wait(), 30)
        stop.set()
        await asyncio.sleep(0.3)
        assert not running.done()  # waiting for the task in hand
        polls = state.polls
        state.tasks.put_nowait(("late", {}))  # not taken: the worker stopped polling
        release.set()
        await asyncio.wait_for(running, 30)
    assert state.of("success") == [{"taskToken": "held", "output": "finished"}]
    assert state.polls == polls and state.tasks.qsize() == 1


async def test_the_sync_client_runs_a_worker_in_a_thread_with_a_plain_function(
    routes: tuple[Routes, str],
) -> None:
    state, url = routes
    state.tasks.put_nowait(("s1", {"words": "a b c"}))

    def count(value: Any) -> Any:  # blocking code is fine: it runs in a thread
        return len(value["words"].split())

    def serve(client: Client, stopped: threading.Event) -> None:
        worker = client.activity_worker("act", count, poll_wait_s=1)
        stopper = threading.Thread(target=lambda: (stopped.wait(), worker.stop()))
        stopper.start()
        worker.run()
        stopper.join()

    stopped = threading.Event()
    with Client(url) as client:
        serving = asyncio.create_task(asyncio.to_thread(serve, client, stopped))
        await until(lambda: bool(state.of("success")))
        stopped.set()
        await asyncio.wait_for(serving, 30)
    assert json.dumps(state.of("success")) == json.dumps([{"taskToken": "s1", "output": 3}])


async def test_a_handler_of_two_arguments_gets_the_task_and_its_idempotency_key(
    routes: tuple[Routes, str],
) -> None:
    state, url = routes

    async def keyed(value: Any, task: ActivityTask) -> Any:
        return {"key": task.idempotency_key, "token": task.task_token, "value": value}

    state.tasks.put_nowait(("k1", [1, 2]))
    async with AsyncClient(url) as client:
        worker = ActivityWorker(client, "act", keyed, poll_wait_s=1)
        running = asyncio.create_task(worker.run())
        await until(lambda: bool(state.of("success")))
        worker.stop()
        await asyncio.wait_for(running, 30)
    assert state.of("success") == [
        {"taskToken": "k1", "output": {"key": "key-k1", "token": "k1", "value": [1, 2]}}
    ]
