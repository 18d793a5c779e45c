"""Benchmark: one-Task executions per second when the task is run by an activity worker
over HTTP (poll + success), against the same workflow run by a built-in worker.

Runs every role in this process (steplog.app.open_resources + run_roles) on embedded
PostgreSQL and Redis under a temporary folder, and drives it through the API. Per
round, in this order:

    builtin    N executions of {Task test:echo}: the built-in worker runs the task
               (the ceiling: no HTTP between the task and the engine)
    activity   N executions of {Task <activity ARN>}: W pollers (HTTP clients in this
               process) loop POST /v1/activities/{name}/poll?wait=1 then
               POST /v1/tasks/success with the input as output

Each figure is from the first start to the last terminal event in PostgreSQL. Prints the
median executions/s per workload, the ratio activity / builtin (same run), and the
median and p99 of one activity round trip as a poller sees it (poll answered -> success
answered: the callback's decide + append).

    .venv/bin/python bench/activities.py [-n 300] [--rounds 3] [--workers 8]

Run by hand; never part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.core.events import TERMINAL_EVENT_TYPES
from steplog.app import open_resources, run_roles
from steplog.datadir import local_servers
from steplog.settings import Settings
from tests.serving import free_port

ENDED = """
SELECT count(*) FROM events e JOIN executions x USING (execution_id)
WHERE x.workflow = $1 AND e.type = ANY($2::text[])"""


def one_task(resource: str) -> dict[str, Any]:
    return {"StartAt": "T", "States": {"T": {"Type": "Task", "Resource": resource, "End": True}}}


async def _run(
    http: aiohttp.ClientSession,
    pool: asyncpg.Pool,
    url: str,
    name: str,
    definition: Any,
    n: int,
    workers: int,
    activity: str | None,
    round_trips: list[float],
) -> float:
    async with http.put(f"{url}/v1/workflows/{name}", json={"definition": definition}) as resp:
        assert resp.status in (200, 201), await resp.text()
    stop = asyncio.Event()

    async def poller() -> None:
        while not stop.is_set():
            async with http.post(
                f"{url}/v1/activities/{activity}/poll?wait=1", json={"workerName": "bench"}
            ) as resp:
                if resp.status == 204:
                    continue
                assert resp.status == 200, await resp.text()
                task = await resp.json()
            began = time.perf_counter()
            body = {"taskToken": task["taskToken"], "output": task["input"]}
            async with http.post(f"{url}/v1/tasks/success", json=body) as resp:
                assert resp.status == 200, await resp.text()
            round_trips.append(time.perf_counter() - began)

    pollers = [asyncio.create_task(poller()) for _ in range(workers if activity else 0)]
    sem = asyncio.Semaphore(32)

    async def start(i: int) -> None:
        async with sem:
            body = {"input": {"i": i}}
            async with http.post(f"{url}/v1/workflows/{name}/executions", json=body) as resp:
                assert resp.status == 201, await resp.text()

    began = time.perf_counter()
    await asyncio.gather(*(start(i) for i in range(n)))
    while True:
        if await pool.fetchval(ENDED, name, list(TERMINAL_EVENT_TYPES)) >= n:
            break
        await asyncio.sleep(0.02)
    elapsed = time.perf_counter() - began
    stop.set()
    await asyncio.gather(*pollers)
    return n / elapsed


async def _bench(n: int, rounds: int, workers: int) -> None:
    figures: dict[str, list[float]] = {"builtin": [], "activity": []}
    round_trips: list[float] = []
    with tempfile.TemporaryDirectory(prefix="steplog-bench-activities-") as folder:
        data = Path(folder)
        async with local_servers(data, own=True) as (db_url, redis_url):
            for index in range(1, rounds + 1):
                settings = Settings(
                    database_url=db_url,
                    redis_url=redis_url,
                    data_dir=data,
                    port=free_port(),
                    redis_prefix=f"bench{index}",
                    log_level="WARNING",
                    auth=False,  # loopback only, as `steplog dev`
                )
                stop, ready = asyncio.Event(), asyncio.Event()
                async with open_resources(settings, db_url, redis_url) as r:
                    task = asyncio.create_task(run_roles(r, stop, ready=ready))
                    await asyncio.wait_for(ready.wait(), 30)
                    url = f"http://{settings.host}:{settings.port}"
                    try:
                        async with aiohttp.ClientSession() as http:
                            activity = f"bench{index}"
                            async with http.post(
                                f"{url}/v1/activities", json={"name": activity}
                            ) as resp:
                                arn = (await resp.json())["activityArn"]
                            builtin = await _run(
                                http, r.pool, url, f"builtin{index}", one_task("test:echo"),
                                n, workers, None, round_trips,
                            )  # fmt: skip
                            polled = await _run(
                                http, r.pool, url, f"activity{index}", one_task(arn),
                                n, workers, activity, round_trips,
                            )  # fmt: skip
                    finally:
                        stop.set()
                        await asyncio.wait_for(task, 60)
                figures["builtin"].append(builtin)
                figures["activity"].append(polled)
                print(f"  round {index}: builtin {builtin:.1f}/s activity {polled:.1f}/s")
    base = statistics.median(figures["builtin"])
    print(f"\n{n} executions per workload and round, {rounds} rounds, {workers} pollers")
    print(f"{'workload':9} {'executions/s':>13} {'vs builtin':>11}")
    for name, values in figures.items():
        value = statistics.median(values)
        print(f"{name:9} {value:13.1f} {value / base:11.2f}")
    ordered = sorted(round_trips)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    print(
        f"success round trip (decide + append): median {statistics.median(ordered) * 1000:.1f} ms,"
        f" p99 {p99 * 1000:.1f} ms over {len(ordered)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
    asyncio.run(_bench(args.n, args.rounds, args.workers))


if __name__ == "__main__":
    main()
