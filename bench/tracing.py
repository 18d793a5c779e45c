"""Benchmark: what tracing costs, in state transitions per second.

Runs every role in this process (steplog.app.open_resources + run_roles) on embedded
PostgreSQL and Redis under a temporary folder, and drives it through the API: N
executions of a 3-Task workflow (test:echo) and of a 10-state Pass chain per round,
bounded client concurrency, until every one has ended (its terminal event is in
PostgreSQL). Modes, interleaved round by round
so that the machine's load drifts over all of them alike:

    off        tracing off (the default: no tracer anywhere)
    on         tracing on, sampled at 100%: steplog's own spans, batched
               (BatchSpanProcessor) to an exporter that only counts them (what the
               process pays; a collector's own cost is the collector's)
    drivers    the same with the asyncpg and Redis instrumentations
               (STEPLOG_TRACE_DRIVERS=true)

Prints, per mode and workload, the median transitions/s (wall clock) and transitions
per CPU second of this process (every thread; the client's requests included, the
same in every mode), each with its ratio to "off" measured in the same run (the
ceiling), and the spans exported per execution. On a machine shared with other work
the CPU figure is the steadier one: what tracing adds is CPU in this process.

    .venv/bin/python bench/tracing.py [-n 300] [--rounds 3] [--concurrency 32]
        [--modes off,on,drivers]

Run by hand; never part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_ON

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.transitions import PASS_10, TASK_3
from engine.core.events import TERMINAL_EVENT_TYPES
from steplog.app import open_resources, run_roles
from steplog.datadir import local_servers
from steplog.settings import Settings
from steplog.tracing import InsideTraces, instrument_drivers
from tests.serving import free_port

WORKLOADS = [("task3", TASK_3, 3), ("pass10", PASS_10, 10)]
MODES = ("off", "on", "drivers")


class CountingExporter(SpanExporter):
    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


# Executions of a workflow that have ended, read from the event store itself (the read
# models may lag behind: a listing of RUNNING ones can be empty too early).
ENDED = """
SELECT count(*) FROM events e JOIN executions x USING (execution_id)
WHERE x.workflow = $1 AND e.type = ANY($2::text[])"""


async def _workload(
    http: aiohttp.ClientSession,
    pool: asyncpg.Pool,
    url: str,
    name: str,
    definition: Any,
    n: int,
    conc: int,
) -> tuple[float, float]:
    """Seconds from the first start to the last execution's end, and the CPU seconds
    this process spent meanwhile (every thread: the span exporter's included)."""
    async with http.put(f"{url}/v1/workflows/{name}", json={"definition": definition}) as resp:
        assert resp.status in (200, 201), await resp.text()
    sem = asyncio.Semaphore(conc)

    async def start(i: int) -> None:
        async with sem:
            body = {"input": {"i": i}}
            async with http.post(f"{url}/v1/workflows/{name}/executions", json=body) as resp:
                assert resp.status == 201, await resp.text()

    began, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(start(i) for i in range(n)))
    while True:
        if await pool.fetchval(ENDED, name, list(TERMINAL_EVENT_TYPES)) >= n:
            break
        await asyncio.sleep(0.02)
    return time.perf_counter() - began, time.process_time() - cpu


async def _round(
    mode: str, db_url: str, redis_url: str, data: Path, n: int, conc: int, index: int
) -> tuple[dict[str, float], int]:
    """transitions/s per workload in one mode, and the spans exported."""
    settings = Settings(
        database_url=db_url,
        redis_url=redis_url,
        data_dir=data,
        port=free_port(),
        redis_prefix=f"bench{index}",
        log_level="WARNING",
    )
    exporter = CountingExporter()
    provider: TracerProvider | None = None
    undo: Callable[[], None] = lambda: None  # noqa: E731
    if mode != "off":
        provider = TracerProvider(sampler=InsideTraces(ALWAYS_ON), shutdown_on_exit=False)
        provider.add_span_processor(BatchSpanProcessor(exporter))
        if mode == "drivers":
            undo = instrument_drivers(provider)
    results: dict[str, float] = {}
    stop, ready = asyncio.Event(), asyncio.Event()
    try:
        async with open_resources(settings, db_url, redis_url, tracer_provider=provider) as r:
            task = asyncio.create_task(run_roles(r, stop, ready=ready))
            await asyncio.wait_for(ready.wait(), 30)
            url = f"http://{settings.host}:{settings.port}"
            try:
                async with aiohttp.ClientSession() as http:
                    for name, definition, states in WORKLOADS:
                        elapsed, cpu = await _workload(
                            http, r.pool, url, f"{name}-{index}", definition, n, conc
                        )
                        results[name] = n * states / elapsed
                        results[f"{name}/cpu"] = n * states / cpu
            finally:
                stop.set()
                await asyncio.wait_for(task, 60)
    finally:
        undo()
        if provider is not None:
            provider.shutdown()
    return results, exporter.spans


async def _bench(n: int, rounds: int, conc: int, modes: Sequence[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="steplog-bench-trace-") as folder:
        data = Path(folder)
        async with local_servers(data, own=True) as (db_url, redis_url):
            figures: dict[str, dict[str, list[float]]] = {m: {} for m in modes}
            spans: dict[str, int] = dict.fromkeys(modes, 0)
            index = 0
            for _ in range(rounds):
                for mode in modes:
                    index += 1
                    results, exported = await _round(mode, db_url, redis_url, data, n, conc, index)
                    spans[mode] += exported
                    for name, value in results.items():
                        figures[mode].setdefault(name, []).append(value)
                    print(f"  round {index}: {mode:8} {results}", flush=True)
    executions = n * len(WORKLOADS) * rounds
    print(f"\n{n} executions per workload and round, {rounds} rounds, concurrency {conc}")
    print(
        f"{'mode':9} {'workload':8} {'transitions/s':>14} {'vs off':>7} "
        f"{'transitions/cpu-s':>18} {'vs off':>7} {'spans/exec':>11}"
    )
    for mode in modes:
        for name, _, _ in WORKLOADS:
            wall = statistics.median(figures[mode][name])
            wall_off = statistics.median(figures["off"][name])
            cpu = statistics.median(figures[mode][f"{name}/cpu"])
            cpu_off = statistics.median(figures["off"][f"{name}/cpu"])
            print(
                f"{mode:9} {name:8} {wall:14.1f} {wall / wall_off:7.2f} "
                f"{cpu:18.1f} {cpu / cpu_off:7.2f} {spans[mode] / executions:11.1f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--modes", default=",".join(MODES), help=f"comma separated, of {MODES}; off first"
    )
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or modes[0] != "off" or any(m not in MODES for m in modes):
        parser.error(f"--modes: off first, then any of {MODES}")
    asyncio.run(_bench(args.n, args.rounds, args.concurrency, modes))


if __name__ == "__main__":
    main()
