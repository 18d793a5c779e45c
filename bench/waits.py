"""Benchmark: memory under load, and executions waiting in long Wait states (issue #13).

Goals: the RSS of the steplog process stays bounded under load; 100,000 executions
waiting in long Wait states cost no CPU, and are all still due on time after a restart.

On its own embedded PostgreSQL (fsync on) and Redis (AOF), one `steplog serve` process
(api, engine, worker, projector; tests/chaos/harness.Cluster), then:

1. **idle, nothing waiting**: CPU-seconds of steplog, PostgreSQL (the postmaster and
   every backend, ended ones included) and Redis over ``--idle-seconds``, from /proc
   (bench/procstat.py): the same-run baseline;
2. **load**: ``--executions`` (default 100,000) starts of a Wait state
   (``"Seconds"`` = ``--wait``, then a Pass) through the API, ``--concurrency`` in flight;
   the RSS of the steplog process is sampled every second (before, max, after);
3. **idle, all waiting**: the same CPU reading over ``--idle-seconds`` once every
   execution is in its Wait state (its WaitStateEntered committed), the relay and the
   projectors have caught up, and the upkeep the burst of writes left (autovacuum, a
   checkpoint) is done by hand (``VACUUM (ANALYZE)``, ``CHECKPOINT``; also before (1)):
   the difference to (1);
4. **restart**: SIGKILL of the process and a new one; then, once every execution has
   ended: how many ended, how many fired before their due time (must be 0), and how late
   the fired timers were (WaitStateExited's time - the due time WaitStateEntered
   recorded, both PostgreSQL's clock): p50, p99, max.

``--wait`` defaults to enough for the starts (assumed >= 150/s), the idle minute and the
restart: about 13.6 min for 100,000, so a full run takes about 27 minutes. Scaled down:
``--executions 10000`` (about 4 minutes).

    .venv/bin/python bench/waits.py [--executions 100000] [--idle-seconds 60]

Run by hand; never part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import asyncpg
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import goal  # bench/goal.py
import procstat  # bench/procstat.py

from tests.chaos.harness import Cluster, post_json, servers

WORKFLOW = {
    "StartAt": "Hold",
    "States": {
        "Hold": {"Type": "Wait", "SecondsPath": "$.wait", "Next": "Done"},
        "Done": {"Type": "Pass", "End": True},
    },
}
WAITING = "SELECT count(*) FROM events WHERE type = 'WaitStateEntered'"
ENDED = "SELECT count(*) FROM events WHERE type = 'ExecutionSucceeded'"
# How far the relay and each projection are behind the log (0 when caught up).
BEHIND = """
SELECT count(*) FROM (
    SELECT tx_id, position FROM relay_checkpoint
    UNION ALL SELECT tx_id, position FROM projection_checkpoints
) c WHERE (c.tx_id, c.position) < (SELECT tx_id, position FROM events ORDER BY tx_id DESC, position DESC LIMIT 1)"""
# Lateness of each fired timer, by PostgreSQL's clock on both sides.
LATENESS = """
SELECT EXTRACT(EPOCH FROM x.recorded_at - (w.data->>'due')::timestamptz)::float8
FROM events w JOIN events x ON x.execution_id = w.execution_id AND x.type = 'WaitStateExited'
WHERE w.type = 'WaitStateEntered'"""


class Servers:
    """The processes whose CPU is counted: steplog, PostgreSQL's tree, Redis."""

    def __init__(self, steplog: int, postgres: int, redis: int) -> None:
        self.pids = {"steplog": steplog, "postgresql": postgres, "redis": redis}

    def cpu(self) -> dict[str, float]:
        stats = procstat.all_stats()
        return {name: procstat.tree_cpu_s(pid, stats) for name, pid in self.pids.items()}


async def idle_cpu(servers: Servers, seconds: float) -> dict[str, float]:
    """CPU-seconds per process over ``seconds`` of nothing being asked."""
    before = servers.cpu()
    await asyncio.sleep(seconds)
    after = servers.cpu()
    return {name: after[name] - before[name] for name in before}


async def start_all(
    http: aiohttp.ClientSession, url: str, n: int, wait_s: int, concurrency: int, steplog_pid: int
) -> tuple[float, list[int]]:
    """Start ``n`` executions; (seconds taken, RSS samples of steplog, one a second)."""
    gate = asyncio.Semaphore(concurrency)
    rss: list[int] = []
    done = asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            if (s := procstat.stat(steplog_pid)) is not None:
                rss.append(s.rss_bytes)
            await asyncio.sleep(1)

    async def start(i: int) -> None:
        async with gate:
            status, body = await post_json(
                http, url + "/v1/workflows/waits/executions", {"input": {"wait": wait_s, "i": i}}
            )
            assert status == 201, body

    sampler = asyncio.create_task(sample())
    t0 = time.perf_counter()
    await asyncio.gather(*(start(i) for i in range(n)))
    elapsed = time.perf_counter() - t0
    done.set()
    await sampler
    return elapsed, rss


async def settle(pool: asyncpg.Pool) -> None:
    """Until the relay and the projectors have caught up with the log, then the one-off
    upkeep a burst of writes leaves to the next minutes (autovacuum, a checkpoint) done
    now, so that the idle reading that follows counts only what waiting costs."""
    while await pool.fetchval(BEHIND):  # noqa: ASYNC110 - the fact is in PostgreSQL
        await asyncio.sleep(0.5)
    await pool.execute("VACUUM (ANALYZE)")
    await pool.execute("CHECKPOINT")


async def until(pool: asyncpg.Pool, query: str, n: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while await pool.fetchval(query) < n:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.5)
    return True


def _mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(args: argparse.Namespace) -> None:
    n = args.executions
    wait_s = args.wait or int(n / 150 + args.idle_seconds + 90)
    data_dir = Path(tempfile.mkdtemp(prefix="slw-"))
    (data_dir / "logs").mkdir()
    try:
        async with servers(data_dir) as (database_url, redis_url, pgdata):
            cluster = Cluster(
                database_url, redis_url, pgdata, data_dir / "logs", 1, env=goal.UNLIMITED
            )
            pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
            redis = aioredis.Redis.from_url(redis_url)
            try:
                await cluster.start(0)
                backend = await pool.fetchval("SELECT pg_backend_pid()")
                redis_pid = int((await redis.info("server"))["process_id"])

                def watched() -> Servers:
                    proc = cluster.procs[0]
                    assert proc is not None
                    return Servers(proc.pid, procstat.postgres_root(backend), redis_pid)

                await settle(pool)
                base = await idle_cpu(watched(), args.idle_seconds)
                steplog_pid = watched().pids["steplog"]
                rss_before = procstat.stat(steplog_pid)
                async with aiohttp.ClientSession() as http:
                    url = cluster.url(0)
                    status, body = await post_json(
                        http, url + "/v1/workflows/waits", {"definition": WORKFLOW}, "PUT"
                    )
                    assert status == 201, body
                    first_start = time.perf_counter()
                    elapsed, rss = await start_all(
                        http, url, n, wait_s, args.concurrency, steplog_pid
                    )
                assert await until(pool, WAITING, n, 600), "not every execution reached its Wait"
                await settle(pool)
                rss_loaded = procstat.stat(steplog_pid)
                busy = await idle_cpu(watched(), args.idle_seconds)
                # Seconds from the end of the idle reading to the first due time.
                margin = wait_s - (time.perf_counter() - first_start)
                await cluster.kill(0)
                await cluster.start(0)
                ended = await until(pool, ENDED, n, wait_s + 600)
                lateness = [r[0] for r in await pool.fetch(LATENESS)]
                rss_after = procstat.stat(watched().pids["steplog"])
                await cluster.stop_all()
            finally:
                await cluster.kill_all()
                await redis.aclose()
                await pool.close()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)

    assert rss_before is not None and rss_loaded is not None and rss_after is not None
    print(
        f"{n:,} executions waiting {wait_s} s each (started in {elapsed:.0f} s, {n / elapsed:.0f}/s)"
    )
    print(
        f"RSS of steplog: {_mib(rss_before.rss_bytes)} idle before, max {_mib(max(rss))} "
        f"while starting (samples at 25/50/75/100%: "
        f"{', '.join(_mib(rss[min(len(rss) - 1, len(rss) * k // 4)]) for k in (1, 2, 3, 4))}), "
        f"{_mib(rss_loaded.rss_bytes)} with all waiting, {_mib(rss_after.rss_bytes)} after the "
        "restart and the firing"
    )
    print(f"CPU-seconds over {args.idle_seconds:.0f} s idle: nothing waiting -> all waiting")
    for name in base:
        print(f"  {name:<11} {base[name]:6.2f} -> {busy[name]:6.2f}")
    total_base, total_busy = sum(base.values()), sum(busy.values())
    print(
        f"idle CPU with {n:,} waiting / with none (same run): "
        f"{total_busy:.2f} / {total_base:.2f} CPU-s = {total_busy / max(total_base, 0.01):.2f}"
    )
    if margin < 0:
        print(
            f"WARNING: the idle reading overlapped the due times by {-margin:.0f} s; raise --wait"
        )
    fired = len(lateness)
    early = sum(1 for x in lateness if x < 0)
    print(
        f"after SIGKILL + restart: {fired:,} of {n:,} timers fired, "
        f"{'all' if ended else 'NOT all'} executions ended, {early} fired early; lateness "
        f"p50 {_pct(lateness, 0.5) * 1000:.0f} ms, p99 {_pct(lateness, 0.99) * 1000:.0f} ms, "
        f"max {max(lateness) * 1000:.0f} ms"
    )
    # Bounded: the second half of the starts adds under 10% to the RSS of the first half
    # (a cache or queue growing with the executions would double it).
    half, full = rss[len(rss) // 2], max(rss)
    goal.report(
        f"steplog RSS while {n:,} start",
        f"{_mib(half)} -> {_mib(full)}",
        "2nd half of starts < +10%",
        full <= 1.10 * half,
    )
    extra = total_busy - total_base
    goal.report(
        f"idle CPU with {n:,} waiting - with none",
        f"{extra:+.2f} CPU-s / {args.idle_seconds:.0f} s",
        "< 1% of a core",
        extra < 0.01 * args.idle_seconds and margin >= 0,
    )
    p99 = _pct(lateness, 0.99)
    goal.report(
        f"{n:,} waits due after SIGKILL + restart",
        f"{fired:,} fired, {early} early, p99 {p99 * 1000:.0f} ms late",
        "all, none early, p99 < 1 s",
        fired == n and ended and early == 0 and p99 < 1.0,
    )
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--executions", type=int, default=100_000)
    parser.add_argument("--idle-seconds", type=float, default=60)
    parser.add_argument(
        "--wait", type=int, default=0, help="seconds each execution waits (default: see above)"
    )
    parser.add_argument("--concurrency", type=int, default=64)
    asyncio.run(run(parser.parse_args()))
