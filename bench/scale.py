"""Scale-out: the chaos workflow (tasks with a side effect, retries, a Wait, a Choice, a
Map) on 1, 2 and 3 processes of each role, one run each on fresh embedded PostgreSQL
(fsync on) and Redis. Prints executions per second, and what would limit more processes
(issue 13 item 3): per 1,000 transitions (events appended),

- CPU-seconds in the steplog processes, in PostgreSQL (postmaster and every backend,
  ended ones included) and in Redis, from /proc (bench/procstat.py);
- conflicts: engine appends refused because another engine appended first
  (``steplog_append_conflicts_total``, summed over the processes' /metrics);
- ignored triggers: engine decisions that appended nothing (``steplog_decision_events``
  bucket 0: duplicate or obsolete trigger deliveries);
- duplicate task runs: ``chaos:charge`` calls beyond one per idempotency key
  (tests/chaos/handlers: ``chaos_calls`` - ``chaos_effects``);
- idle waits: Redis XREADGROUP calls (each consumer's blocking read; with more consumers,
  more of them come back empty) and PostgreSQL transactions (``pg_stat_database``: the
  polling of timers, relay and projectors shows here);

then whether each stays flat (within 15%), grows, or falls as processes are added. Before each
load the processes are read idle for ``--idle-seconds``: what they cost doing nothing
(their polling) per process-minute, and the CPU per 1,000 transitions net of that
(the idle rate times the run's duration taken off), which tells work that grows with
processes from polling that grows with processes.

Layouts: ``--layout all`` (default) runs N processes with every role (api, engine,
worker, projector) each; ``--layout split`` runs N processes per role, 4 x N in all (the
CPU is then also shown per role).

    .venv/bin/python bench/scale.py [--executions 600] [--rate 20] [--processes 1,2,3]
        [--layout all] [--rounds 1]

With ``--rounds N`` every process count is measured N times, in alternating order (1, 2,
3, then 3, 2, 1, ...), and each figure is the median of its N readings: the machine's
speed drifts during a run, and one order would charge a slowdown to the counts measured
last (`make bench-all` runs 2 rounds).

The load grows with the processes (the default, ``--rate 20``): each process is offered
the same load, ``--executions`` starts at ``--rate`` starts/s, so N processes get N times
the executions at N times the rate, open loop (each start sent at its time, spread over
the processes' APIs; at most --concurrency in flight). This is what processes on
machines of their own would each see; here they share two cores, so the rate must stay
well below what the machine serves with 3 (the run says when the starts fell behind).
With ``--rate 0`` the load is the same for every N: ``--executions`` starts sent at once
(closed loop, at most --concurrency in flight), which splits one load into N smaller
shares, each batched less (session 10's table in docs/scaling.md).

Executions/s = executions / (first start sent .. last execution ended). Waits and retry
intervals (0-2 s per execution) are part of each execution's latency, not of the
machine's capacity. The figures are read after the last execution ended (PostgreSQL's
statistics are given 1.5 s to settle).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
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

from engine.core.events import TERMINAL_EVENT_TYPES
from tests.chaos.harness import WORKFLOW, Cluster, chaos_input, free_port, post_json, servers

ROLES = ("api", "engine", "worker", "projector")
ENDED = """
SELECT count(*) FROM executions x CROSS JOIN LATERAL (
    SELECT type FROM events e WHERE e.execution_id = x.execution_id ORDER BY seq DESC LIMIT 1
) last WHERE last.type = ANY($1::text[])"""
TRANSACTIONS = """
SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"""
DUPLICATE_RUNS = """
SELECT (SELECT count(*) FROM chaos_calls) - (SELECT count(*) FROM chaos_effects)"""
_CONFLICTS = re.compile(r"^steplog_append_conflicts_total (\S+)$", re.M)
_IGNORED = re.compile(r'^steplog_decision_events_bucket\{le="0\.0"\} (\S+)$', re.M)
# Figures per 1,000 transitions, in the order printed.
PER_1000 = (
    "steplog CPU-s",
    "steplog CPU-s net of idle",
    "PostgreSQL CPU-s",
    "PostgreSQL CPU-s net of idle",
    "Redis CPU-s",
    "conflicts",
    "ignored triggers",
    "duplicate task runs",
    "XREADGROUP calls",
    "PostgreSQL transactions",
)


class Counters:
    """Cumulative readings whose differences make the figures."""

    def __init__(self, cluster: Cluster, metrics_urls: list[str], pool: asyncpg.Pool) -> None:
        self.cluster = cluster
        self.metrics_urls = metrics_urls
        self.pool = pool
        self.redis = aioredis.Redis.from_url(cluster.redis_url)
        self.postgres_root = 0
        self.redis_pid = 0

    async def open(self) -> None:
        self.postgres_root = procstat.postgres_root(
            await self.pool.fetchval("SELECT pg_backend_pid()")
        )
        self.redis_pid = int((await self.redis.info("server"))["process_id"])

    async def read(self, http: aiohttp.ClientSession) -> dict[str, float]:
        stats = procstat.all_stats()
        out: dict[str, float] = {}
        for i, proc in enumerate(self.cluster.procs):
            assert proc is not None
            role = self.cluster.roles_at(i)
            key = f"steplog CPU-s ({role})"
            out[key] = out.get(key, 0.0) + procstat.tree_cpu_s(proc.pid, stats)
        out["steplog CPU-s"] = sum(v for k, v in out.items() if k.startswith("steplog CPU-s ("))
        out["PostgreSQL CPU-s"] = procstat.tree_cpu_s(self.postgres_root, stats)
        out["Redis CPU-s"] = procstat.tree_cpu_s(self.redis_pid, stats)
        out["conflicts"] = out["ignored triggers"] = 0.0
        for url in self.metrics_urls:
            async with http.get(url) as resp:
                text = await resp.text()
            out["conflicts"] += sum(float(x) for x in _CONFLICTS.findall(text))
            out["ignored triggers"] += sum(float(x) for x in _IGNORED.findall(text))
        out["duplicate task runs"] = float(await self.pool.fetchval(DUPLICATE_RUNS))
        commands = await self.redis.info("commandstats")
        out["XREADGROUP calls"] = float(commands.get("cmdstat_xreadgroup", {}).get("calls", 0))
        out["PostgreSQL transactions"] = float(await self.pool.fetchval(TRANSACTIONS))
        out["transitions"] = float(await self.pool.fetchval("SELECT count(*) FROM events"))
        return out

    async def close(self) -> None:
        await self.redis.aclose()


def layout(processes: int, split: bool) -> tuple[list[str], dict[int, dict[str, str]]]:
    """The roles of each process, and the environment of those without an API (a metrics
    listener of their own)."""
    if not split:
        return [",".join(ROLES)] * processes, {}
    roles_of = [role for role in ROLES for _ in range(processes)]
    env_of = {
        i: {"STEPLOG_METRICS_PORT": str(free_port())}
        for i, role in enumerate(roles_of)
        if role != "api"
    }
    return roles_of, env_of


async def measure(
    processes: int, executions: int, concurrency: int, split: bool, idle_s: float, rate: float
) -> tuple[float, dict[str, float]]:
    """(executions/s, the figures' differences over the run) of one run: ``executions``
    started at once, or (``rate`` > 0) offered at ``rate`` starts/s."""
    data_dir = Path(tempfile.mkdtemp(prefix="slb-"))
    (data_dir / "logs").mkdir()
    roles_of, env_of = layout(processes, split)
    try:
        async with servers(data_dir) as (database_url, redis_url, pgdata):
            # A long visibility timeout: nothing dies here, and no claim may steal work.
            cluster = Cluster(
                database_url,
                redis_url,
                pgdata,
                data_dir / "logs",
                len(roles_of),
                roles_of=roles_of,
                env={"STEPLOG_TASK_VISIBILITY_TIMEOUT_S": "60", **goal.UNLIMITED},
                env_of=env_of,
            )
            apis = [i for i, r in enumerate(roles_of) if "api" in r]
            metrics_urls = [
                cluster.url(i) + "/metrics"
                if i in apis
                else f"http://127.0.0.1:{env_of[i]['STEPLOG_METRICS_PORT']}/metrics"
                for i in range(len(roles_of))
            ]
            pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
            counters = Counters(cluster, metrics_urls, pool)
            try:
                await asyncio.gather(*(cluster.start(i) for i in range(len(roles_of))))
                await counters.open()
                # Each process may open up to 20 connections (steplog.app.open_resources).
                limit = int(await pool.fetchval("SHOW max_connections"))
                if 20 * len(roles_of) > limit:
                    print(
                        f"note: {len(roles_of)} processes may open up to {20 * len(roles_of)} "
                        f"connections, PostgreSQL allows {limit}: starts may be refused (503)",
                        flush=True,
                    )
                async with aiohttp.ClientSession() as http:
                    url = cluster.url(apis[0]) + "/v1/workflows/chaos"
                    assert (await post_json(http, url, {"definition": WORKFLOW}, "PUT"))[0] == 201
                    gate = asyncio.Semaphore(concurrency)

                    async def start(i: int) -> None:
                        if rate:  # open loop: sent at its time, however the others fare
                            await asyncio.sleep(t0 + i / rate - time.perf_counter())
                        async with gate:
                            api = apis[i % len(apis)]
                            url = cluster.url(api) + "/v1/workflows/chaos/executions"
                            status, body = await post_json(http, url, {"input": chaos_input(i)})
                            assert status == 201, body

                    await _metrics_ready(http, metrics_urls)
                    # What the processes cost doing nothing (their polling), per second.
                    idle_before = await counters.read(http)
                    await asyncio.sleep(idle_s)
                    idle_after = await counters.read(http)
                    idle = {k: (idle_after[k] - idle_before[k]) / idle_s for k in idle_after}
                    before = await counters.read(http)
                    t0 = time.perf_counter()  # (the open loop's start times count from it)
                    await asyncio.gather(*(start(i) for i in range(executions)))
                    if rate and (late := time.perf_counter() - t0 - executions / rate) > 1:
                        print(f"note: the starts ended {late:.1f} s behind their offered rate")
                    terminal = list(TERMINAL_EVENT_TYPES)
                    # Polling PostgreSQL: the end is a fact there, not an event here.
                    while await pool.fetchval(ENDED, terminal) < executions:  # noqa: ASYNC110
                        await asyncio.sleep(0.1)
                    elapsed = time.perf_counter() - t0
                    await asyncio.sleep(1.5)  # pg_stat_database is flushed about every second
                    after = await counters.read(http)
                await cluster.stop_all()
            finally:
                await counters.close()
                await pool.close()
                await cluster.kill_all()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    delta = {k: after[k] - before[k] for k in after}
    for name in ("steplog CPU-s", "PostgreSQL CPU-s"):
        delta[f"{name} net of idle"] = delta[name] - idle[name] * elapsed
    delta["idle steplog CPU-s per process-minute"] = idle["steplog CPU-s"] * 60 / len(roles_of)
    delta["idle XREADGROUP calls per process-minute"] = (
        idle["XREADGROUP calls"] * 60 / len(roles_of)
    )
    return executions / elapsed, delta


async def _metrics_ready(http: aiohttp.ClientSession, urls: list[str]) -> None:
    """Until every process serves /metrics (those without an API start it last)."""
    for url in urls:
        for _ in range(300):
            try:
                async with http.get(url) as resp:
                    if resp.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        else:
            raise RuntimeError(f"{url} does not answer")


def per_1000(delta: dict[str, float]) -> dict[str, float]:
    transitions = max(delta["transitions"], 1.0)
    return {
        k: v * 1000 / transitions
        for k, v in delta.items()
        if k in PER_1000 or k.startswith("steplog CPU-s (")
    }


def flatness(values: list[float]) -> str:
    """How ``values`` (a figure per 1,000 transitions, for more processes from left to
    right) move as processes are added: "GROWS" when one exceeds an earlier one by more
    than 15% (more processes would each buy less than their share), "falls" when they
    only get smaller by more than that (shared parts, such as the one relay leader or
    PostgreSQL's commits, batch more as the total load grows), else "flat"."""
    if max(values) < 0.005:
        return "flat (0)"
    growth = max(
        (later / earlier - 1 if earlier > 0 else (float("inf") if later >= 0.005 else 0.0))
        for i, earlier in enumerate(values)
        for later in values[i + 1 :]
    )
    if growth == float("inf"):
        return "GROWS (from 0)"
    if growth > 0.15:
        return f"GROWS (+{growth * 100:.0f}%)"
    low, high = min(values), max(values)
    spread = high / low - 1 if low > 0 else float("inf")
    if spread > 0.15:
        return f"falls (last / first {values[-1] / values[0]:.2f})"
    return f"flat ({spread * 100:+.0f}%)"


def report(
    counts: list[int], rates: dict[int, float], figures: dict[int, dict[str, float]]
) -> None:
    base = rates[counts[0]]
    for n in counts:
        print(
            f"{n} of each role: {rates[n]:7.1f} executions/s, {rates[n] / base:5.2f}x of {counts[0]}"
        )
    per_role = sorted(k for k in figures[counts[0]] if k.startswith("steplog CPU-s ("))
    names = [*PER_1000, *(per_role if len(per_role) > 1 else [])]
    idle = sorted(k for k in figures[counts[0]] if k.startswith("idle "))
    header = "".join(f"{f'{n} of each':>12}" for n in counts)
    print(f"per 1,000 transitions{'':<22}{header}   max/min")
    for name in names:
        values = [figures[n].get(name, 0.0) for n in counts]
        cells = "".join(f"{v:12.3f}" for v in values)
        print(f"  {name:<41}{cells}   {flatness(values)}")
    print("idle, before the load")
    for name in idle:
        values = [figures[n].get(name, 0.0) for n in counts]
        cells = "".join(f"{v:12.3f}" for v in values)
        print(f"  {name:<41}{cells}   {flatness(values)}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--executions", type=int, default=600, help="per process when --rate is set, else in all"
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=20.0,
        help="starts/s offered per process, open loop (0: every start at once, closed loop)",
    )
    parser.add_argument("--processes", default="1,2,3")
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--layout", choices=("all", "split"), default="all")
    parser.add_argument(
        "--idle-seconds", type=float, default=10, help="idle reading before each load"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every process count this many times, in alternating order "
        "(1,2,3 then 3,2,1, ...), and report the median of each figure",
    )
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds: at least 1")
    counts = [int(n) for n in args.processes.split(",")]
    runs: dict[int, list[tuple[float, dict[str, float]]]] = {n: [] for n in counts}
    for round_ in range(args.rounds):
        # The machine's speed drifts during a run (by a third within minutes here): in
        # alternating order a drift falls on the first and the last count alike, where
        # one order would charge it all to the counts measured last.
        for n in counts if round_ % 2 == 0 else counts[::-1]:
            # With --rate, each process is offered the same load: N times the executions
            # at N times the rate.
            executions = args.executions * n if args.rate else args.executions
            rate, delta = await measure(
                n,
                executions,
                args.concurrency,
                args.layout == "split",
                args.idle_seconds,
                args.rate * n,
            )
            figure = per_1000(delta)
            for k, v in delta.items():
                if k.startswith("idle "):
                    figure[k] = v
            runs[n].append((rate, figure))
            print(
                f"{n} of each role: {rate:7.1f} executions/s, "
                f"{delta['transitions']:.0f} transitions"
                + (f" (round {round_ + 1} of {args.rounds})" if args.rounds > 1 else ""),
                flush=True,
            )
    rates = {n: statistics.median(rate for rate, _ in runs[n]) for n in counts}
    figures = {
        n: {k: statistics.median(f.get(k, 0.0) for _, f in runs[n]) for k in runs[n][0][1]}
        for n in counts
    }
    if args.rounds > 1:
        print(f"-- medians of {args.rounds} rounds")
    report(counts, rates, figures)
    # Issue 13, item 3: linear scaling keeps what a transition costs flat as processes are
    # added (max / min within 15%), and adds no conflicts or duplicate work.
    for name in ("steplog CPU-s", "PostgreSQL CPU-s", "Redis CPU-s"):
        values = [figures[n][name] for n in counts]
        goal.report(
            f"scale: {name} per 1,000 transitions, {args.processes} processes",
            " / ".join(f"{v:.3f}" for v in values),
            "no growth past 15% as processes are added",
            not flatness(values).startswith("GROWS"),
        )
    for name in ("conflicts", "duplicate task runs"):
        values = [figures[n][name] for n in counts]
        goal.report(
            f"scale: {name} per 1,000 transitions, {args.processes} processes",
            " / ".join(f"{v:.2f}" for v in values),
            "0",
            max(values) == 0,
        )
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    asyncio.run(main())
