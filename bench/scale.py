"""Scale-out: the chaos workflow (tasks with a side effect, retries, a Wait, a Choice, a
Map) on 1, 2 and 3 `steplog serve` processes (every role), one run each on fresh embedded
PostgreSQL and Redis. Prints executions per second for each and the ratio to 1 process.

    .venv/bin/python bench/scale.py [--executions 600] [--processes 1,2,3]

Executions/s = executions / (first start sent .. last execution ended), with every start
sent at once (at most --concurrency requests in flight, spread over the processes' APIs).
Waits and retry intervals (0-2 s per execution) are part of each execution's latency, not
of the machine's capacity; enough executions run at once to hide them.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.core.events import TERMINAL_EVENT_TYPES
from tests.chaos.harness import WORKFLOW, Cluster, chaos_input, post_json, servers

ENDED = """
SELECT count(*) FROM executions x CROSS JOIN LATERAL (
    SELECT type FROM events e WHERE e.execution_id = x.execution_id ORDER BY seq DESC LIMIT 1
) last WHERE last.type = ANY($1::text[])"""


async def measure(processes: int, executions: int, concurrency: int) -> float:
    data_dir = Path(tempfile.mkdtemp(prefix="slb-"))
    (data_dir / "logs").mkdir()
    try:
        async with servers(data_dir) as (database_url, redis_url, pgdata):
            # A long visibility timeout: nothing dies here, and no claim may steal work.
            cluster = Cluster(
                database_url,
                redis_url,
                pgdata,
                data_dir / "logs",
                processes,
                env={"STEPLOG_TASK_VISIBILITY_TIMEOUT_S": "60"},
            )
            try:
                await asyncio.gather(*(cluster.start(i) for i in range(processes)))
                async with aiohttp.ClientSession() as http:
                    url = cluster.url(0) + "/v1/workflows/chaos"
                    assert (await post_json(http, url, {"definition": WORKFLOW}, "PUT"))[0] == 201
                    gate = asyncio.Semaphore(concurrency)

                    async def start(i: int) -> None:
                        async with gate:
                            url = cluster.url(i % processes) + "/v1/workflows/chaos/executions"
                            status, body = await post_json(http, url, {"input": chaos_input(i)})
                            assert status == 201, body

                    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
                    try:
                        t0 = time.perf_counter()
                        await asyncio.gather(*(start(i) for i in range(executions)))
                        terminal = list(TERMINAL_EVENT_TYPES)
                        # Polling PostgreSQL: the end is a fact there, not an event here.
                        while await pool.fetchval(ENDED, terminal) < executions:  # noqa: ASYNC110
                            await asyncio.sleep(0.1)
                        elapsed = time.perf_counter() - t0
                    finally:
                        await pool.close()
                await cluster.stop_all()
            finally:
                await cluster.kill_all()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    return executions / elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executions", type=int, default=600)
    parser.add_argument("--processes", default="1,2,3")
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    counts = [int(n) for n in args.processes.split(",")]
    rates: dict[int, float] = {}
    for n in counts:
        rates[n] = await measure(n, args.executions, args.concurrency)
        print(f"{n} process(es): {rates[n]:7.1f} executions/s", flush=True)
    base = rates[counts[0]]
    for n in counts:
        print(f"{n} process(es): {rates[n] / base:5.2f}x of {counts[0]}")


if __name__ == "__main__":
    asyncio.run(main())
