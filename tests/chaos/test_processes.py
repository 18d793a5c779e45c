"""Real processes: 200 concurrent duplicate starts spread over 3 API processes give one
execution; SIGTERM lets a running handler finish, reports its result and exits 0; a task
that kills every worker running it ends, after max_deliveries, as a failure that Catch
handles."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis

from engine.adapters.bus import connect
from engine.messages import WORKER_GROUP
from tests.chaos.harness import PREFIX, Cluster, post_json, servers
from tests.redis_cluster import redis_cluster

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
async def own_servers(redis_kind: str) -> AsyncIterator[tuple[str, str, Path, Path]]:
    """Own PostgreSQL and Redis; for the [cluster] run of a marked test, the Redis URL
    is that of a Redis Cluster of its own (the test's steplog processes and clients
    take ``redis_kind`` to speak to it)."""
    data_dir = Path(tempfile.mkdtemp(prefix="slp-"))  # short: sockets live under it
    (data_dir / "logs").mkdir()
    try:
        async with servers(data_dir) as (database_url, redis_url, pgdata):
            if redis_kind != "cluster":
                yield database_url, redis_url, pgdata, data_dir / "logs"
                return
            with redis_cluster(data_dir / "rc") as cluster_url:
                yield database_url, cluster_url, pgdata, data_dir / "logs"
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


async def _until(predicate: Any, timeout_s: float, what: str, cluster: Cluster) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (result := await predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout_s}s\n{cluster.tails()}")
        await asyncio.sleep(0.1)
    return result


async def test_200_concurrent_duplicate_starts_over_3_api_processes_give_one_execution(
    own_servers: tuple[str, str, Path, Path],
) -> None:
    database_url, redis_url, pgdata, logs = own_servers
    cluster = Cluster(database_url, redis_url, pgdata, logs, 3, roles="api")
    try:
        await asyncio.gather(*(cluster.start(i) for i in range(3)))
        definition = {"StartAt": "A", "States": {"A": {"Type": "Pass", "End": True}}}
        async with aiohttp.ClientSession() as http:
            status, _ = await post_json(
                http, cluster.url(0) + "/v1/workflows/dup", {"definition": definition}, "PUT"
            )
            assert status == 201
            body = {"input": {"order": 7}, "name": "the-one"}
            barrier = asyncio.Barrier(200)

            async def start(i: int) -> tuple[int, Any]:
                await barrier.wait()
                url = cluster.url(i % 3) + "/v1/workflows/dup/executions"
                return await post_json(http, url, body)

            answers = await asyncio.gather(*(start(i) for i in range(200)))
        statuses = sorted(s for s, _ in answers)
        assert statuses == [200] * 199 + [201], statuses
        assert len({a["execution_id"] for _, a in answers}) == 1
        conn = await asyncpg.connect(database_url)
        try:
            assert await conn.fetchval("SELECT count(*) FROM executions") == 1
            # Its one run, recorded once: the start and the first decision made with it.
            types = [r["type"] for r in await conn.fetch("SELECT type FROM events ORDER BY seq")]
            assert types == [
                "ExecutionStarted",
                "PassStateEntered",
                "PassStateExited",
                "ExecutionSucceeded",
            ]
        finally:
            await conn.close()
        assert await cluster.stop_all() == [0, 0, 0]
    finally:
        await cluster.kill_all()


SLEEPY = {
    "StartAt": "Nap",
    "States": {"Nap": {"Type": "Task", "Resource": "test:sleep", "End": True}},
}


@pytest.mark.redis_cluster
async def test_sigterm_finishes_the_running_handler_reports_it_and_exits_0(
    own_servers: tuple[str, str, Path, Path], redis_kind: str
) -> None:
    database_url, redis_url, pgdata, logs = own_servers
    on_cluster = redis_kind == "cluster"
    cluster = Cluster(database_url, redis_url, pgdata, logs, 1, redis_cluster=on_cluster)
    redis = connect(redis_url, cluster=on_cluster)
    conn = await asyncpg.connect(database_url)
    try:
        await cluster.start(0)
        async with aiohttp.ClientSession() as http:
            base = cluster.url(0)
            assert (
                await post_json(http, base + "/v1/workflows/nap", {"definition": SLEEPY}, "PUT")
            )[0] == 201
            status, started = await post_json(
                http, base + "/v1/workflows/nap/executions", {"input": {"seconds": 2}}
            )
            assert status == 201
        tasks = f"{{{PREFIX}:q:default}}:tasks"

        async def running() -> bool:
            try:
                return bool((await redis.xpending(tasks, WORKER_GROUP))["pending"] == 1)
            except aioredis.ResponseError:
                return False

        await _until(running, 10, "the task running", cluster)
        t0 = time.monotonic()
        assert await cluster.terminate(0) == 0
        assert time.monotonic() - t0 >= 1.0  # it waited for the handler
        # The result was reported and the task acknowledged before the exit.
        assert (await redis.xpending(tasks, WORKER_GROUP))["pending"] == 0
        await cluster.start(0)

        async def ended() -> Any:
            return await conn.fetchval(
                "SELECT type FROM events WHERE execution_id = $1 AND type LIKE 'Execution%' "
                "AND seq > 1",
                started["execution_id"],
            )

        assert await _until(ended, 20, "the execution ending", cluster) == "ExecutionSucceeded"
        scheduled = await conn.fetchval(
            "SELECT count(*) FROM events WHERE execution_id = $1 AND type = 'TaskScheduled'",
            started["execution_id"],
        )
        assert scheduled == 1
        assert await cluster.stop_all() == [0]
    finally:
        await cluster.kill_all()
        await redis.aclose()
        await conn.close()


POISON = {
    "StartAt": "Poison",
    "States": {
        "Poison": {
            "Type": "Task",
            "Resource": "chaos:die",
            "Catch": [{"ErrorEquals": ["Steplog.TaskDeliveryExceeded"], "Next": "Caught"}],
            "End": True,
        },
        "Caught": {"Type": "Pass", "End": True},
    },
}


@pytest.mark.redis_cluster
async def test_a_task_that_kills_its_workers_fails_after_max_deliveries_and_is_caught(
    own_servers: tuple[str, str, Path, Path], redis_kind: str
) -> None:
    database_url, redis_url, pgdata, logs = own_servers
    env = {"STEPLOG_MAX_DELIVERIES": "2"}
    on_cluster = redis_kind == "cluster"
    cluster = Cluster(database_url, redis_url, pgdata, logs, 1, env=env, redis_cluster=on_cluster)
    conn = await asyncpg.connect(database_url)
    try:
        await cluster.start(0)
        async with aiohttp.ClientSession() as http:
            base = cluster.url(0)
            status, _ = await post_json(
                http, base + "/v1/workflows/poison", {"definition": POISON}, "PUT"
            )
            assert status == 201
            status, started = await post_json(
                http, base + "/v1/workflows/poison/executions", {"input": {}}
            )
            assert status == 201
        deaths = 0

        async def ended() -> Any:
            nonlocal deaths
            if not cluster.alive():  # the poison killed it: restart, as a supervisor would
                deaths += 1
                await cluster.start(0)
            return await conn.fetchval(
                "SELECT type FROM events WHERE execution_id = $1 AND type LIKE 'Execution%' "
                "AND seq > 1",
                started["execution_id"],
            )

        assert await _until(ended, 90, "the execution ending", cluster) == "ExecutionSucceeded"
        assert deaths == 2  # delivered twice (max_deliveries), then failed on the third
        rows = await conn.fetch(
            "SELECT type, data->>'error' AS error FROM events WHERE execution_id = $1 ORDER BY seq",
            started["execution_id"],
        )
        failed = [r["error"] for r in rows if r["type"] == "TaskFailed"]
        assert failed == ["Steplog.TaskDeliveryExceeded"]
        assert "PassStateEntered" in [r["type"] for r in rows]
        assert await cluster.stop_all() == [0]
    finally:
        await cluster.kill_all()
        await conn.close()
