"""Nothing lost, nothing twice: 500 executions on 3 real `steplog serve` processes (every
role) while processes are SIGKILLed and restarted at random moments, Redis is flushed once
and PostgreSQL restarted once. Whatever the schedule (its seed is printed), at the end:
every execution ended with its expected output, every event stream is contiguous, no
transition appears twice, every charge's side effect happened exactly once, the read model
agrees with replay, and SIGTERM stops every process with exit code 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any
from uuid import UUID

import aiohttp
import asyncpg
import msgspec
import pytest

from engine.adapters.store import EventStore
from engine.core import events as ev
from engine.core.events import TERMINAL_EVENT_TYPES
from engine.service import fold
from tests.chaos.harness import (
    WORKFLOW,
    Cluster,
    chaos_input,
    expected_charges,
    expected_output,
    servers,
)

EXECUTIONS = 500
PROCESSES = 3
KILLS = 6
START_SPAN_S = 40.0  # starts are spread over this long, so faults hit work in flight
END_DEADLINE_S = 180.0

pytestmark = pytest.mark.timeout(480)

ENDED = """
SELECT count(*) FROM executions x CROSS JOIN LATERAL (
    SELECT type FROM events e WHERE e.execution_id = x.execution_id ORDER BY seq DESC LIMIT 1
) last WHERE last.type = ANY($1::text[])"""
LAST_TYPES = """
SELECT last.type, count(*) FROM executions x CROSS JOIN LATERAL (
    SELECT type FROM events e WHERE e.execution_id = x.execution_id ORDER BY seq DESC LIMIT 1
) last GROUP BY last.type"""


class Client:
    """Sends a request to a random live process until one answers with a final status;
    connection errors and 503 (a dependency restarting) are retried."""

    def __init__(self, cluster: Cluster, http: aiohttp.ClientSession, rng: random.Random):
        self.cluster = cluster
        self.http = http
        self.rng = rng
        self.unavailable = 0  # 503 answers seen
        self.refused = 0  # connection errors (killed processes)
        self.unexpected: list[tuple[int, Any]] = []

    async def call(self, method: str, path: str, body: Any = None, deadline_s: float = 120) -> Any:
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            alive = self.cluster.alive()
            if not alive:
                await asyncio.sleep(0.2)
                continue
            url = self.cluster.url(self.rng.choice(alive)) + path
            try:
                async with self.http.request(method, url, json=body) as resp:
                    payload = await resp.json(content_type=None)
                    if resp.status in (200, 201):
                        return payload
                    if resp.status == 503:
                        assert resp.headers.get("Retry-After"), payload
                        self.unavailable += 1
                    else:
                        self.unexpected.append((resp.status, payload))
            except (aiohttp.ClientError, OSError, TimeoutError):
                self.refused += 1
            await asyncio.sleep(0.2)
        raise AssertionError(f"{method} {path} got no answer in {deadline_s}s")


async def _chaos(cluster: Cluster, rng: random.Random, log: list[str]) -> None:
    """Kill and restart processes, flush Redis, restart PostgreSQL, at random moments."""
    t0 = time.monotonic()
    plan = [(rng.uniform(2, START_SPAN_S + 5), "kill") for _ in range(KILLS)]
    plan.append((rng.uniform(10, 18), "flush"))
    plan.append((rng.uniform(24, 32), "postgres"))
    restarts: list[asyncio.Task[None]] = []

    async def restart_later(i: int, after: float) -> None:
        await asyncio.sleep(after)
        await cluster.start(i)

    for at, what in sorted(plan):
        await asyncio.sleep(max(0.0, at - (time.monotonic() - t0)))
        stamp = f"{time.monotonic() - t0:5.1f}s"
        if what == "kill":
            ready = sorted(cluster.ready)  # not one that is still starting
            if not ready:
                continue
            victim = rng.choice(ready)
            await cluster.kill(victim)
            down = rng.uniform(0.2, 2.0)
            log.append(f"{stamp} SIGKILL process {victim}, back in {down:.1f}s")
            restarts.append(asyncio.create_task(restart_later(victim, down)))
        elif what == "flush":
            await cluster.flush_redis()
            log.append(f"{stamp} FLUSHALL")
        else:
            log.append(f"{stamp} PostgreSQL stopped (immediate) for 2s")
            await cluster.restart_postgres(2.0)
            log.append(f"{time.monotonic() - t0:5.1f}s PostgreSQL started")
    await asyncio.gather(*restarts)


async def _connect(url: str) -> asyncpg.Pool:
    for _ in range(100):
        with contextlib.suppress(OSError, asyncpg.PostgresError):
            return await asyncpg.create_pool(url, min_size=1, max_size=4)
        await asyncio.sleep(0.2)
    raise AssertionError("PostgreSQL did not come back")


async def _diagnostics(pool: asyncpg.Pool, store: EventStore, cluster: Cluster) -> str:
    lines = [f"last events: {dict(await pool.fetch(LAST_TYPES))}"]
    for execution_id in (await store.running_executions())[:5]:
        events = await store.load(execution_id)
        lines.append(f"{execution_id}: {[e.type for e in events][-6:]}")
        timers = await pool.fetch(
            "SELECT timer_id, due_at, fired_due, claimed_until FROM timers WHERE execution_id = $1",
            execution_id,
        )
        lines.append(f"  timers: {[dict(t) for t in timers]}")
    return "\n".join(lines) + "\n" + cluster.tails()


def _check_history(execution_id: UUID, input: dict[str, Any], events: list[Any]) -> list[str]:
    """Everything wrong with one execution's history (empty when it is right)."""
    problems = []
    seqs = [e.seq for e in events]
    if seqs != list(range(1, len(events) + 1)):
        problems.append(f"seq not contiguous: {seqs}")
    types = [e.type for e in events]
    terminal = [t for t in types if t in TERMINAL_EVENT_TYPES]
    if terminal != ["ExecutionSucceeded"] or types[-1] != "ExecutionSucceeded":
        problems.append(f"ends {types[-3:]} with terminal events {terminal}")
    state = fold(execution_id, events)
    if state.output != expected_output(input):
        problems.append(f"output {state.output} != {expected_output(input)}")
    decoded = [ev.decode_event(e.data) for e in events]
    entered = Counter(
        (d.frame, d.name) for d in decoded if type(d).__name__.endswith("StateEntered")
    )
    problems += [f"entered {k} {n} times" for k, n in entered.items() if n != 1]
    scheduled = Counter((d.frame, d.name) for d in decoded if isinstance(d, ev.TaskScheduled))
    for (frame, name), n in scheduled.items():
        want = input["fail_times"] + 1 if name == "Flaky" else 1
        if n != want:
            problems.append(f"{name} in {frame!r} scheduled {n} times, expected {want}")
    outcomes = Counter(
        d.task_id
        for d in decoded
        if isinstance(d, ev.TaskSucceeded | ev.TaskFailed | ev.TaskTimedOut)
    )
    problems += [f"task {t} has {n} outcomes" for t, n in outcomes.items() if n != 1]
    if len(outcomes) != sum(scheduled.values()):
        problems.append(f"{sum(scheduled.values())} tasks scheduled, {len(outcomes)} ended")
    return problems


def _charge_keys(execution_id: UUID, events: list[Any]) -> set[str]:
    """Idempotency keys of the charge attempts that succeeded."""
    decoded = [ev.decode_event(e.data) for e in events]
    succeeded = {d.task_id for d in decoded if isinstance(d, ev.TaskSucceeded)}
    return {
        f"{execution_id}:{d.name}:{d.attempt}:{d.task_id}"
        for d in decoded
        if isinstance(d, ev.TaskScheduled)
        and d.resource == "chaos:charge"
        and d.task_id in succeeded
    }


async def test_nothing_lost_nothing_twice_under_kills_flush_and_postgres_restart() -> None:
    seed = random.randrange(2**32)
    print(f"chaos seed {seed}")
    rng = random.Random(seed)
    data_dir = Path(tempfile.mkdtemp(prefix="slc-"))  # short: sockets live under it
    (data_dir / "logs").mkdir()
    chaos_log: list[str] = []
    started_at = time.monotonic()
    try:
        async with servers(data_dir) as (database_url, redis_url, pgdata):
            cluster = Cluster(database_url, redis_url, pgdata, data_dir / "logs", PROCESSES)
            try:
                await asyncio.gather(*(cluster.start(i) for i in range(PROCESSES)))
                timeout = aiohttp.ClientTimeout(total=15)
                async with aiohttp.ClientSession(timeout=timeout) as http:
                    client = Client(cluster, http, random.Random(seed + 1))
                    await client.call("PUT", "/v1/workflows/chaos", {"definition": WORKFLOW})
                    await _run(cluster, client, rng, chaos_log)
                    for i in set(range(PROCESSES)) - set(cluster.alive()):
                        await cluster.start(i)
                    print("\n".join(chaos_log))
                    print(
                        f"503 answers: {client.unavailable}, refused connections: "
                        f"{client.refused}, process starts: {cluster.starts}"
                    )
                    assert client.unexpected == [], client.unexpected[:5]
                pool = await _connect(database_url)
                try:
                    await _verify(pool, cluster)
                finally:
                    await pool.close()
                codes = await cluster.stop_all()
                assert codes == [0] * PROCESSES, f"exit codes {codes}\n{cluster.tails()}"
            finally:
                await cluster.kill_all()
    finally:
        print(f"chaos test took {time.monotonic() - started_at:.0f}s; seed {seed}")
        shutil.rmtree(data_dir, ignore_errors=True)


async def _run(cluster: Cluster, client: Client, rng: random.Random, log: list[str]) -> None:
    async def start(i: int) -> None:
        body = {"input": chaos_input(i), "name": f"c-{i}"}
        await client.call("POST", "/v1/workflows/chaos/executions", body)

    tasks: list[asyncio.Task[None]] = []

    async def start_all() -> None:
        for i in range(EXECUTIONS):
            tasks.append(asyncio.create_task(start(i)))
            await asyncio.sleep(START_SPAN_S / EXECUTIONS)
        await asyncio.gather(*tasks)

    try:
        await asyncio.gather(start_all(), _chaos(cluster, rng, log))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _verify(pool: asyncpg.Pool, cluster: Cluster) -> None:
    store = EventStore(pool)
    deadline = time.monotonic() + END_DEADLINE_S
    while (ended := await pool.fetchval(ENDED, list(TERMINAL_EVENT_TYPES))) < EXECUTIONS:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{ended}/{EXECUTIONS} ended within {END_DEADLINE_S}s\n"
                + await _diagnostics(pool, store, cluster)
            )
        await asyncio.sleep(0.5)

    rows = await pool.fetch("SELECT execution_id, name, input::text FROM executions")
    assert sorted(r["name"] for r in rows) == sorted(f"c-{i}" for i in range(EXECUTIONS))
    problems: dict[str, list[str]] = {}
    effects = {
        r["execution_id"]: (r["keys"], r["total"])
        for r in await pool.fetch(
            "SELECT e.execution_id, array_agg(e.idempotency_key) AS keys, l.total "
            "FROM chaos_effects e JOIN chaos_ledger l USING (execution_id) "
            "GROUP BY e.execution_id, l.total"
        )
    }
    histories: dict[UUID, list[Any]] = {}
    for row in rows:
        execution_id, input = row["execution_id"], msgspec.json.decode(row["input"])
        events = histories[execution_id] = await store.load(execution_id)
        found = _check_history(execution_id, input, events)
        count, total = expected_charges(input)
        keys, ledger = effects.get(execution_id, ([], 0))
        if len(keys) != count or ledger != total:
            found.append(f"{len(keys)} effects totalling {ledger}, expected {count}/{total}")
        if set(keys) != _charge_keys(execution_id, events):
            found.append(f"effect keys {sorted(keys)} != succeeded charges")
        if found:
            problems[row["name"]] = found
    assert not problems, f"{len(problems)} executions wrong: {list(problems.items())[:5]}"
    calls = await pool.fetchval("SELECT count(*) FROM chaos_calls")
    print(f"charge calls {calls}, effects {sum(len(k) for k, _ in effects.values())}")

    async def read_model_agrees() -> list[str]:
        view = {
            r["execution_id"]: r
            for r in await pool.fetch(
                "SELECT execution_id, status, output::text AS output, last_seq FROM executions_view"
            )
        }
        wrong = []
        for execution_id, events in histories.items():
            state = fold(execution_id, events)
            row = view.get(execution_id)
            if (
                row is None
                or row["status"] != state.status
                or row["last_seq"] != state.seq
                or msgspec.json.decode(row["output"] or "null") != state.output
            ):
                wrong.append(f"{execution_id}: view {row and dict(row)} replay {state.status}")
        return wrong

    deadline = time.monotonic() + 60
    while wrong := await read_model_agrees():
        if time.monotonic() > deadline:
            raise AssertionError(f"read model disagrees with replay: {wrong[:5]}")
        await asyncio.sleep(0.5)
