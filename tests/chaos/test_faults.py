"""The faults production brings besides crashes (issue 14), one after the other, against
role-split processes (2 api, 2 engine, 2 worker, 1 projector; one engine's wall clock 45 s
ahead under libfaketime for the whole run) under a mixed workload: task chains with Retry
and Catch, Parallel, Map, Waits on a timestamp, heartbeating tasks, Choice loops through a
task, stops and idempotent starts.

Faults, in order (tests/chaos/faults.py): PostgreSQL read-only for 10 s; every PostgreSQL
connection terminated, three times; the events table locked (ACCESS EXCLUSIVE) for longer
than the worker visibility timeout; Redis refusing writes (maxmemory, noeviction), full
for 6 s, then at the edge for 6 s; every Redis client connection killed, three times;
Redis clients paused 6 s. Each comes SETTLE_S after the previous one's recovery, longer
than the longest task: one task attempt meets one fault at most.

While they run, probes hit the API processes (register, start, the same start again,
describe, history, stop, /health/ready) and record each answer in the window of the fault
it was sent in. Expected: every answer 2xx or 503 with Retry-After, never a 500 or
another status, never a request hanging past HANG_S; /health/ready 503 while PostgreSQL
is read-only and while Redis is full. After each fault is lifted, the recovery time is
measured: until a round of probes all answer 2xx and a new execution (a task and
its result through every role) has succeeded.

At the end: every execution ended as expected (the mixed ones succeeded with their
expected output, none FAILED, e.g. with States.HeartbeatTimeout from a timer fired early by
the skewed engine; the probes' sleepers aborted by their stop), event streams contiguous,
no transition twice, every task one outcome, charges' effects exactly once per idempotency
key, no task attempt run by two workers at once (CHAOS_RUNS_FILE records each handler run),
an attempt run at most twice (one redelivery) and an event published to a stream at most
twice, no Wait task started before its timestamp and no retry before its interval, history
timestamps never going backwards, the read model agreeing with replay, and SIGTERM ending
every process with 0. A table per fault (500s, other statuses, hangs, repeated runs,
republished events, overlapping runs, early timers, failed executions, recovery time) is
printed before the assertions.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import math
import re
import shutil
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import aiohttp
import asyncpg
import msgspec
import pytest
import redis.asyncio as aioredis

from engine.adapters.bus import Bus
from engine.adapters.store import EventStore
from engine.core import events as ev
from engine.core.events import TERMINAL_EVENT_TYPES
from engine.service import fold
from tests.chaos import faults
from tests.chaos.harness import PREFIX, Cluster, servers

ROLES = ["api", "api", "engine", "engine", "worker", "worker", "projector"]
APIS = [0, 1]
SKEWED = 3  # the second engine
SKEW = "+45s"
VISIBILITY_S = 3.0  # the workers' visibility timeout (the harness's)
# The API answers within its request timeout (503 when a dependency holds it up), its
# statements time out sooner; an answer later than HANG_S is a hang.
REQUEST_TIMEOUT_S = 4.0
API_STATEMENT_TIMEOUT_MS = 2000
HANG_S = REQUEST_TIMEOUT_S + 2.0
CLIENT_TIMEOUT_S = 20.0
START_EVERY_S = 0.5  # one mixed execution started this often while faults run
RECOVERY_LIMIT_S = 30.0
END_DEADLINE_S = 150.0  # for every execution to end after the faults (skewed retries are late)
# Longer than the lock on events: a task still running when the workers' loops unblock.
LONG_BEAT_S = 12
# Between one fault's recovery and the next fault: longer than the longest task, so that
# an attempt meets one fault at most. A Beat's TimeoutSeconds (BEAT_TIMEOUT_S) holds one
# fault's delay: not published while Redis refuses writes (12 s), or cancelled near its end
# by the pause and run again once it is claimed (12 + 6 + 3 + 12 s). With a 2 s settle, a
# Beat scheduled as Redis filled, cancelled by the pause two faults later and run again
# timed out (CI, session 20).
SETTLE_S = LONG_BEAT_S + 3.0
HEARTBEAT_S = 20  # longer than any fault: a heartbeat timeout means a timer fired early
BEAT_TIMEOUT_S = 40  # the heartbeating task's TimeoutSeconds (shorter than the skew)
RETRY_INTERVAL_S = 1
TIMER_SLACK_S = 0.05

pytestmark = pytest.mark.timeout(600)

MIXED: dict[str, Any] = {
    "StartAt": "Charge",
    "States": {
        "Charge": {
            "Type": "Task",
            "Resource": "chaos:charge",
            "Parameters": {"amount.$": "$.amount"},
            "ResultPath": "$.charge",
            "Next": "Flaky",
        },
        "Flaky": {
            "Type": "Task",
            "Resource": "chaos:flaky",
            "Parameters": {"fail_times.$": "$.fail_times"},
            "ResultPath": "$.flaky",
            "Retry": [
                {
                    "ErrorEquals": ["Chaos.Flaky"],
                    "IntervalSeconds": RETRY_INTERVAL_S,
                    "MaxAttempts": 2,
                    "BackoffRate": 1.0,
                }
            ],
            "Catch": [
                {"ErrorEquals": ["Chaos.Flaky"], "ResultPath": "$.caught", "Next": "Recover"}
            ],
            "Next": "Both",
        },
        "Recover": {
            "Type": "Pass",
            "Result": "recovered",
            "ResultPath": "$.recovered",
            "Next": "Both",
        },
        "Both": {
            "Type": "Parallel",
            "ResultPath": "$.both",
            "Next": "Loop",
            "Branches": [
                {
                    "StartAt": "Until",
                    "States": {
                        "Until": {"Type": "Wait", "TimestampPath": "$.until", "Next": "Beat"},
                        "Beat": {
                            "Type": "Task",
                            "Resource": "chaos:beat",
                            "Parameters": {"seconds.$": "$.beat"},
                            "HeartbeatSeconds": HEARTBEAT_S,
                            "TimeoutSeconds": BEAT_TIMEOUT_S,
                            "End": True,
                        },
                    },
                },
                {
                    "StartAt": "Split",
                    "States": {
                        "Split": {
                            "Type": "Map",
                            "ItemsPath": "$.items",
                            "ItemProcessor": {
                                "ProcessorConfig": {"Mode": "INLINE"},
                                "StartAt": "Part",
                                "States": {
                                    "Part": {
                                        "Type": "Task",
                                        "Resource": "chaos:charge",
                                        "Parameters": {"amount.$": "$"},
                                        "End": True,
                                    }
                                },
                            },
                            "End": True,
                        }
                    },
                },
            ],
        },
        "Loop": {
            "Type": "Choice",
            "Choices": [
                {"Variable": "$.loop.n", "NumericLessThanPath": "$.rounds", "Next": "Step"}
            ],
            "Default": "Done",
        },
        "Step": {
            "Type": "Pass",
            "Parameters": {"n.$": "States.MathAdd($.loop.n, 1)"},
            "ResultPath": "$.loop",
            "Next": "Tick",
        },
        "Tick": {
            "Type": "Task",
            "Resource": "chaos:tick",
            "Parameters": {"n.$": "$.loop.n"},
            "ResultPath": None,
            "Next": "Loop",
        },
        "Done": {"Type": "Succeed"},
    },
}
SLEEPER = {"StartAt": "Nap", "States": {"Nap": {"Type": "Wait", "Seconds": 600, "End": True}}}
CANARY = {
    "StartAt": "Tick",
    "States": {"Tick": {"Type": "Task", "Resource": "chaos:tick", "End": True}},
}


def mixed_input(i: int, now: float) -> dict[str, Any]:
    """A third of the executions succeed at once in Flaky, a third after a retry, a third
    are caught after three failures; a Wait until 1-3 s from now; a heartbeating task of
    2-4 s, or LONG_BEAT_S for a quarter (running across the lock on events); a Map of
    three charges; 0-3 rounds of the Choice loop."""
    until = dt.datetime.fromtimestamp(now + 1 + i % 3, dt.UTC)
    return {
        "i": i,
        "amount": 10 + i % 40,
        "fail_times": (0, 1, 3)[i % 3],
        "until": until.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "beat": LONG_BEAT_S if i % 4 == 3 else 2 + i % 3,
        "items": [1, 2, 3 + i % 5],
        "rounds": i % 4,
        "loop": {"n": 0},
    }


def expected_output(input: dict[str, Any]) -> dict[str, Any]:
    out = {**input, "charge": {"charged": input["amount"]}}
    if input["fail_times"] <= 2:
        out["flaky"] = {"attempt": input["fail_times"]}
    else:
        out["caught"] = {"Error": "Chaos.Flaky", "Cause": "attempt 2 fails on purpose"}
        out["recovered"] = "recovered"
    out["both"] = [{"beat": input["beat"]}, [{"charged": x} for x in input["items"]]]
    out["loop"] = {"n": input["rounds"]}
    return out


def expected_scheduled(input: dict[str, Any]) -> Counter[str]:
    return Counter(
        {
            "Charge": 1,
            "Flaky": min(input["fail_times"], 2) + 1,
            "Beat": 1,
            "Part": len(input["items"]),
            "Tick": input["rounds"],
        }
    )


# --- the timeline: what was sent when, in which fault's window ---------------------------


@dataclass
class Window:
    name: str
    start: float  # wall clock: the fault applied
    lift: float = math.inf  # the fault lifted
    recovered: float | None = None
    # Set by faults that refuse writes: /health/ready must answer 503 from 3 s after the
    # start until this time.
    refusing_until: float | None = None

    @property
    def recovery_s(self) -> float | None:
        return None if self.recovered is None else self.recovered - self.lift


@dataclass
class Answer:
    sent: float
    took: float
    what: str
    status: int | str  # an HTTP status, "timeout" or "refused"
    retry_after: bool


@dataclass
class Figures:
    """What the faults did, by window name."""

    answers: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    bad: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    hangs: Counter[str] = field(default_factory=Counter)
    reruns: Counter[str] = field(default_factory=Counter)
    republished: Counter[str] = field(default_factory=Counter)
    overlaps: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    early: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    failed: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    not_ready: Counter[str] = field(default_factory=Counter)
    ready_while_refusing: Counter[str] = field(default_factory=Counter)
    tracebacks: list[str] = field(default_factory=list)
    max_runs_per_attempt: int = 0
    max_publishes_per_event: int = 0
    backwards: int = 0


class Timeline:
    def __init__(self) -> None:
        self.windows = [Window("baseline", time.time(), lift=time.time())]

    def at(self, t: float) -> Window:
        found = self.windows[0]
        for window in self.windows:
            if window.start <= t:
                found = window
        return found


class Api:
    """Requests to the API processes, each answer recorded in its window."""

    def __init__(self, cluster: Cluster, http: aiohttp.ClientSession, timeline: Timeline):
        self.cluster = cluster
        self.http = http
        self.timeline = timeline
        self.answers: list[Answer] = []
        self.turn = itertools.count()

    async def send(
        self, what: str, method: str, path: str, body: Any = None, api: int | None = None
    ) -> tuple[int | str, Any]:
        api = APIS[next(self.turn) % len(APIS)] if api is None else api
        sent = time.time()
        status: int | str
        payload: Any = None
        retry_after = False
        try:
            async with self.http.request(method, self.cluster.url(api) + path, json=body) as resp:
                status, retry_after = resp.status, bool(resp.headers.get("Retry-After"))
                payload = await resp.json(content_type=None)
        except TimeoutError:
            status = "timeout"
        except (aiohttp.ClientError, OSError, ValueError):
            status = "refused"
        self.answers.append(Answer(sent, time.time() - sent, what, status, retry_after))
        return status, payload

    async def call(self, what: str, method: str, path: str, body: Any = None) -> Any:
        """Until a 2xx (through 503s, refusals and timeouts); a 4xx or 500 is recorded and
        retried too (the assertions report it)."""
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            status, payload = await self.send(what, method, path, body)
            if isinstance(status, int) and 200 <= status < 300:
                return payload
            await asyncio.sleep(0.25)
        raise AssertionError(f"{what}: {method} {path} got no 2xx in 180s")


# --- the workload and the probes ---------------------------------------------------------


class Workload:
    def __init__(self, api: Api) -> None:
        self.api = api
        self.inputs: dict[str, dict[str, Any]] = {}
        self.started_at: dict[str, float] = {}
        self.ids: dict[str, str] = {}
        self.twice: list[str] = []  # names whose repeated start gave another execution
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self, i: int) -> None:
        name = f"m-{i}"
        now = time.time()
        body = {"input": mixed_input(i, now), "name": name}
        self.inputs[name], self.started_at[name] = body["input"], now
        first = await self.api.call("start", "POST", "/v1/workflows/mixed/executions", body)
        self.ids[name] = first["execution_id"]
        again = await self.api.call("start again", "POST", "/v1/workflows/mixed/executions", body)
        if again["execution_id"] != first["execution_id"]:
            self.twice.append(name)

    async def run(self, stop: asyncio.Event) -> None:
        for i in itertools.count():
            if stop.is_set():
                break
            self.tasks.append(asyncio.create_task(self.start(i)))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), START_EVERY_S)
        await asyncio.gather(*self.tasks)


class Probes:
    """Rounds of register, start, start again, describe, history, stop, ready; a round
    is ok when every answer in it is a 2xx."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.rounds: list[tuple[float, float, bool]] = []
        self.sleepers: list[str] = []
        self.unstopped: list[str] = []

    async def round(self, n: int) -> None:
        began, statuses = time.time(), []

        async def send(what: str, method: str, path: str, body: Any = None) -> Any:
            status, payload = await self.api.send(what, method, path, body)
            statuses.append(status)
            return payload if isinstance(status, int) and 200 <= status < 300 else None

        await send("register", "PUT", f"/v1/workflows/probe-{n % 50}", {"definition": SLEEPER})
        body = {"input": {"n": n}, "name": f"p-{n}"}
        started = await send("start", "POST", "/v1/workflows/sleeper/executions", body)
        again = await send("start again", "POST", "/v1/workflows/sleeper/executions", body)
        if started is not None:
            self.sleepers.append(started["execution_id"])
            self.unstopped.append(started["execution_id"])
        elif again is not None:
            self.sleepers.append(again["execution_id"])
            self.unstopped.append(again["execution_id"])
        if self.sleepers:
            target = self.sleepers[-1]
            await send("describe", "GET", f"/v1/executions/{target}")
            await send("history", "GET", f"/v1/executions/{target}/history")
        if self.unstopped:
            stopped = await send("stop", "POST", f"/v1/executions/{self.unstopped[0]}/stop", {})
            if stopped is not None:
                self.unstopped.pop(0)
        await send("ready", "GET", "/health/ready")
        self.rounds.append(
            (began, time.time(), all(isinstance(s, int) and 200 <= s < 300 for s in statuses))
        )

    async def run(self, stop: asyncio.Event) -> None:
        for n in itertools.count():
            if stop.is_set():
                break
            await self.round(n)
            await asyncio.sleep(0.2)

    def first_ok_round_after(self, t: float) -> float | None:
        return next((end for began, end, ok in self.rounds if began >= t and ok), None)


# --- the faults --------------------------------------------------------------------------


Fault = tuple[str, Callable[[Window], Awaitable[None]]]


def fault_plan(database_url: str, redis_url: str) -> list[Fault]:
    """(name, apply-hold-lift)."""

    async def read_only(window: Window) -> None:
        await faults.postgres_read_only(database_url, True)
        try:
            await asyncio.sleep(10)
            window.refusing_until = time.time()
        finally:
            await faults.postgres_read_only(database_url, False)

    async def terminate(window: Window) -> None:
        for _ in range(3):
            await faults.terminate_sessions(database_url)
            await asyncio.sleep(2)

    async def lock(window: Window) -> None:
        async with faults.events_locked(database_url):
            await asyncio.sleep(max(8.0, VISIBILITY_S * 2.5))

    async def oom(window: Window) -> None:
        # Full (maxmemory below what Redis uses: every write refused), then at the edge
        # (just above: writes refused or not as memory comes and goes).
        await faults.redis_refuse_writes(redis_url, "full")
        try:
            await asyncio.sleep(6)
            window.refusing_until = time.time()
            await faults.redis_refuse_writes(redis_url, "edge")
            await asyncio.sleep(6)
        finally:
            await faults.redis_refuse_writes(redis_url, "off")

    async def kill(window: Window) -> None:
        for _ in range(3):
            await faults.redis_kill_clients(redis_url)
            await asyncio.sleep(2)

    async def pause(window: Window) -> None:
        await faults.redis_pause(redis_url, 6000)
        await asyncio.sleep(6)

    return [
        ("pg read-only 10s", read_only),
        ("pg terminate x3", terminate),
        ("events lock 8s", lock),
        ("redis oom 6s+6s", oom),
        ("redis client kill x3", kill),
        ("redis pause 6s", pause),
    ]


async def recover(window: Window, api: Api, probes: Probes) -> None:
    """Until a probe round sent after the lift is all 2xx and a canary execution started
    after it has succeeded (then ``window.recovered`` is set), or RECOVERY_LIMIT_S."""
    deadline = window.lift + RECOVERY_LIMIT_S
    canary_done: float | None = None
    for k in itertools.count():
        if time.time() > deadline:
            return
        body = {"input": {"k": k}, "name": f"k-{window.name.split()[0]}-{window.start:.0f}-{k}"}
        status, started = await api.send("canary", "POST", "/v1/workflows/canary/executions", body)
        if isinstance(status, int) and 200 <= status < 300:
            until = time.time() + 5
            while time.time() < until:
                status, row = await api.send(
                    "canary describe", "GET", f"/v1/executions/{started['execution_id']}"
                )
                if isinstance(status, int) and status == 200 and row["status"] == "SUCCEEDED":
                    canary_done = time.time()
                    break
                await asyncio.sleep(0.1)
        if canary_done is not None:
            break
        await asyncio.sleep(0.2)
    while canary_done is not None and time.time() < deadline:
        probed = probes.first_ok_round_after(window.lift)
        if probed is not None:
            window.recovered = max(canary_done, probed)
            return
        await asyncio.sleep(0.2)


async def run_faults(
    plan: list[Fault], timeline: Timeline, api: Api, probes: Probes, log: list[str]
) -> None:
    await asyncio.sleep(8)  # the baseline: the workload under way
    for name, apply in plan:
        window = Window(name, time.time())
        timeline.windows.append(window)
        await apply(window)
        window.lift = time.time()
        await recover(window, api, probes)
        log.append(
            f"{name}: held {window.lift - window.start:.1f}s, recovered "
            + ("never" if window.recovery_s is None else f"in {window.recovery_s:.1f}s")
        )
        await asyncio.sleep(SETTLE_S)


# --- the checks at the end ---------------------------------------------------------------


ENDED = """
SELECT count(*) FROM executions x CROSS JOIN LATERAL (
    SELECT type FROM events e WHERE e.execution_id = x.execution_id ORDER BY seq DESC LIMIT 1
) last WHERE last.type = ANY($1::text[])"""


async def _pool(url: str) -> asyncpg.Pool:
    for _ in range(100):
        with contextlib.suppress(OSError, asyncpg.PostgresError):
            return await asyncpg.create_pool(url, min_size=1, max_size=4)
        await asyncio.sleep(0.2)
    raise AssertionError("PostgreSQL does not answer")


def _answers(api: Api, timeline: Timeline, figures: Figures) -> None:
    for a in api.answers:
        window = timeline.at(a.sent)
        status = a.status
        figures.answers[window.name][str(status)] += 1
        if a.took > HANG_S or status == "timeout":
            figures.hangs[window.name] += 1
            figures.bad[window.name].append(f"{a.what} took {a.took:.1f}s ({status})")
        if status == "refused":
            figures.bad[window.name].append(f"{a.what}: connection refused or reset")
        elif isinstance(status, int) and status == 503 and not a.retry_after:
            figures.bad[window.name].append(f"{a.what} 503 without Retry-After")
        elif isinstance(status, int) and not (200 <= status < 300 or status == 503):
            figures.bad[window.name].append(f"{a.what} answered {status}")
        if a.what == "ready" and window.refusing_until is not None:
            holding = window.start + 3 <= a.sent <= window.refusing_until
            if holding and status == 503:
                figures.not_ready[window.name] += 1
            elif holding and status == 200:
                figures.ready_while_refusing[window.name] += 1


def _runs(path: Path, timeline: Timeline, figures: Figures, inputs: dict[str, Any]) -> None:
    """Repeated runs, overlapping runs and early timers, from CHAOS_RUNS_FILE."""
    runs: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
    if path.exists():
        for line in path.read_bytes().splitlines():
            run = msgspec.json.decode(line)
            runs[(run["execution_id"], run["task_id"], run["attempt"])].append(run)
    for (execution, task_id, attempt), found in runs.items():
        found.sort(key=lambda r: r["began"])
        figures.max_runs_per_attempt = max(figures.max_runs_per_attempt, len(found))
        for before, after in itertools.pairwise(found):
            window = timeline.at(after["began"]).name
            figures.reruns[window] += 1
            if after["began"] < before["ended"]:
                figures.overlaps[window].append(
                    f"{execution} task {task_id} attempt {attempt}: pids {before['pid']} "
                    f"and {after['pid']} overlap {before['ended'] - after['began']:.2f}s"
                )
    # Early timers: a Beat starting before its Wait's timestamp; a Flaky retry starting
    # sooner than its interval after the previous attempt ended.
    by_execution: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for found in runs.values():
        by_execution[found[0]["execution_id"]] += found
    for execution, found in by_execution.items():
        input = inputs.get(execution)
        if input is None:
            continue
        until = dt.datetime.fromisoformat(input["until"]).timestamp()
        for run in found:
            if run["state"] == "Beat" and run["began"] < until - TIMER_SLACK_S:
                figures.early[timeline.at(run["began"]).name].append(
                    f"{execution} Wait ended {until - run['began']:.1f}s early"
                )
        flaky = sorted((r for r in found if r["state"] == "Flaky"), key=lambda r: r["began"])
        firsts = {}
        for run in flaky:
            firsts.setdefault(run["attempt"], run)
        for attempt, run in firsts.items():
            before = firsts.get(attempt - 1)
            if (
                before is not None
                and run["began"] - before["ended"] < RETRY_INTERVAL_S - TIMER_SLACK_S
            ):
                figures.early[timeline.at(run["began"]).name].append(
                    f"{execution} retry {attempt} after {run['began'] - before['ended']:.2f}s"
                )


async def _published(redis_url: str, timeline: Timeline, figures: Figures) -> None:
    """Events published to a stream more than once: XRANGE counts by (execution, seq)."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        bus = Bus(client, PREFIX)
        seen: dict[tuple[bytes, bytes], list[int]] = defaultdict(list)
        for stream in bus.events_streams():
            last = "-"
            while True:
                entries = await client.xrange(stream, min=last, count=5000)
                if last != "-":
                    entries = entries[1:]
                if not entries:
                    break
                for entry_id, fields in entries:
                    ms = int(entry_id.split(b"-")[0])
                    seen[(fields[b"execution_id"], fields[b"seq"])].append(ms)
                last = entries[-1][0].decode()
        for stamps in seen.values():
            figures.max_publishes_per_event = max(figures.max_publishes_per_event, len(stamps))
            for ms in sorted(stamps)[1:]:
                figures.republished[timeline.at(ms / 1000).name] += 1
    finally:
        await client.aclose()


def _check_mixed(execution_id: UUID, input: dict[str, Any], events: list[Any]) -> list[str]:
    problems = []
    types = [e.type for e in events]
    terminal = [t for t in types if t in TERMINAL_EVENT_TYPES]
    if terminal != ["ExecutionSucceeded"] or types[-1] != "ExecutionSucceeded":
        problems.append(f"ends {types[-3:]} with terminal events {terminal}")
        # What happened to its tasks, by the log's clock (to tell a late result, a lost
        # task message or an early timer apart when this fails).
        problems.append(
            "tasks: "
            + "; ".join(
                f"{e.seq} {e.type} {e.timestamp.strftime('%H:%M:%S.%f')[:-3]}"
                for e in events
                if e.type.startswith("Task") and e.type != "TaskHeartbeatRecorded"
            )
            + f"; heartbeats {types.count('TaskHeartbeatRecorded')}"
        )
    state = fold(execution_id, events)
    if state.output != expected_output(input):
        problems.append(f"output {state.output} != {expected_output(input)}")
    decoded = [ev.decode_event(e.data) for e in events]
    scheduled = Counter(d.name for d in decoded if isinstance(d, ev.TaskScheduled))
    if scheduled != expected_scheduled(input):
        problems.append(f"scheduled {dict(scheduled)}, expected {dict(expected_scheduled(input))}")
    outcomes = Counter(
        d.task_id
        for d in decoded
        if isinstance(d, ev.TaskSucceeded | ev.TaskFailed | ev.TaskTimedOut)
    )
    problems += [f"task {t} has {n} outcomes" for t, n in outcomes.items() if n != 1]
    if len(outcomes) != sum(scheduled.values()):
        problems.append(f"{sum(scheduled.values())} tasks scheduled, {len(outcomes)} ended")
    return problems


def _evidence(execution_id: str, runs_file: Path) -> list[str]:
    """What the processes did with an execution gone wrong (CI keeps no data folder):
    its handler runs from CHAOS_RUNS_FILE and every log line that names it."""
    found = []
    if runs_file.exists():
        for line in runs_file.read_bytes().splitlines():
            run = msgspec.json.decode(line)
            if run["execution_id"] == execution_id:
                found.append(
                    f"run {run['state']} task {run['task_id']} attempt {run['attempt']} "
                    f"{_clock(run['began'])}..{_clock(run['ended'])} pid {run['pid']} "
                    f"{run['outcome']}"
                )
    for log_file in sorted((runs_file.parent / "logs").glob("*.log")):
        for line in log_file.read_text(errors="replace").splitlines():
            if execution_id in line:
                found.append(f"{log_file.stem}: {line[:300]}")
    return found


def _clock(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%H:%M:%S.%f")[:-3]


def _failure(events: list[Any]) -> str:
    for e in reversed(events):
        if e.type in TERMINAL_EVENT_TYPES:
            d = ev.decode_event(e.data)
            return f"{e.type} {getattr(d, 'error', '') or ''}".strip()
    return f"not ended ({events[-1].type})"


async def _verify(
    database_url: str,
    redis_url: str,
    runs_file: Path,
    workload: Workload,
    probes: Probes,
    timeline: Timeline,
    figures: Figures,
) -> dict[str, list[str]]:
    """Every invariant; the figures filled in; problems by execution name."""
    pool = await _pool(database_url)
    try:
        store = EventStore(pool)
        total = await pool.fetchval("SELECT count(*) FROM executions")
        deadline = time.monotonic() + END_DEADLINE_S
        while (ended := await pool.fetchval(ENDED, list(TERMINAL_EVENT_TYPES))) < total:
            if time.monotonic() > deadline:
                running = await store.running_executions()
                tails = []
                for execution_id in running[:5]:
                    events = await store.load(execution_id)
                    tails.append(f"{execution_id}: {[e.type for e in events][-6:]}")
                raise AssertionError(
                    f"{ended}/{total} ended within {END_DEADLINE_S}s after the faults: {tails}"
                )
            await asyncio.sleep(0.5)

        rows = await pool.fetch("SELECT execution_id, name, input::text FROM executions")
        problems: dict[str, list[str]] = {}
        effects = {
            r["execution_id"]: (r["keys"], r["total"])
            for r in await pool.fetch(
                "SELECT e.execution_id, array_agg(e.idempotency_key) AS keys, l.total "
                "FROM chaos_effects e JOIN chaos_ledger l USING (execution_id) "
                "GROUP BY e.execution_id, l.total"
            )
        }
        inputs_by_id: dict[str, dict[str, Any]] = {}
        histories: dict[UUID, list[Any]] = {}
        names = {r["name"] for r in rows}
        missing = set(workload.inputs) - names
        if missing:
            problems["(missing)"] = [f"started but not found: {sorted(missing)[:5]}"]
        for row in rows:
            execution_id, name = row["execution_id"], row["name"]
            input = msgspec.json.decode(row["input"])
            events = histories[execution_id] = await store.load(execution_id)
            found: list[str] = []
            seqs = [e.seq for e in events]
            if seqs != list(range(1, len(events) + 1)):
                found.append(f"seq not contiguous: {seqs}")
            backwards = [
                f"{a.type} {a.timestamp:%H:%M:%S.%f} -> {b.type} {b.timestamp:%H:%M:%S.%f}"
                for a, b in itertools.pairwise(events)
                if b.timestamp < a.timestamp
            ]
            figures.backwards += len(backwards)
            if backwards:
                found.append(f"timestamps go backwards: {backwards[:3]}")
            if name.startswith("m-"):
                inputs_by_id[str(execution_id)] = input
                found += _check_mixed(execution_id, input, events)
                if found:
                    found += _evidence(str(execution_id), runs_file)
                if events[-1].type != "ExecutionSucceeded":
                    window = timeline.at(workload.started_at.get(name, 0.0)).name
                    figures.failed[window].append(f"{name}: {_failure(events)}")
                decoded = [ev.decode_event(e.data) for e in events]
                succeeded = {d.task_id for d in decoded if isinstance(d, ev.TaskSucceeded)}
                want = {
                    f"{execution_id}:{d.name}:{d.attempt}:{d.task_id}"
                    for d in decoded
                    if isinstance(d, ev.TaskScheduled)
                    and d.resource == "chaos:charge"
                    and d.task_id in succeeded
                }
                keys, ledger = effects.get(execution_id, ([], 0))
                if set(keys) != want or len(keys) != len(want):
                    found.append(f"effect keys {sorted(keys)} != succeeded charges {sorted(want)}")
                if ledger != input["amount"] + sum(input["items"]) and not found:
                    found.append(f"ledger {ledger}")
            elif name.startswith("p-"):
                if events[-1].type != "ExecutionAborted":
                    found.append(f"a stopped sleeper ends {events[-1].type}")
            elif name.startswith("k-"):
                if events[-1].type != "ExecutionSucceeded":
                    found.append(f"a canary ends {_failure(events)}")
            if found:
                problems[name] = found
        if workload.twice:
            problems["(idempotent starts)"] = [f"started twice: {workload.twice[:5]}"]

        _runs(runs_file, timeline, figures, inputs_by_id)
        await _published(redis_url, timeline, figures)

        async def read_model_disagrees() -> list[str]:
            view = {
                r["execution_id"]: r
                for r in await pool.fetch(
                    "SELECT execution_id, status, output::text AS output, last_seq "
                    "FROM executions_view"
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
        while wrong := await read_model_disagrees():
            if time.monotonic() > deadline:
                problems["(read model)"] = wrong[:5]
                break
            await asyncio.sleep(0.5)
        return problems
    finally:
        await pool.close()


LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT")


def tracebacks(log_dir: Path) -> list[str]:
    """The log records with a traceback: "proc-N.log: <message> ... <last exception>"
    (a chain of exceptions is one record)."""
    found = []
    for path in sorted(log_dir.glob("proc-*.log")):
        lines = path.read_text(errors="replace").splitlines()
        for i, line in enumerate(lines):
            if not line.startswith("Traceback (most recent call last)") or not i:
                continue
            if not LOG_LINE.match(lines[i - 1]):
                continue  # a later traceback of a chain
            record = itertools.takewhile(lambda x: not LOG_LINE.match(x), lines[i + 1 :])
            last = [x for x in record if x and not x.startswith((" ", "Traceback"))]
            found.append(f"{path.name}: {lines[i - 1][:160]} ... {(last or [''])[-1][:160]}")
    return found


def table(timeline: Timeline, figures: Figures) -> str:
    head = (
        f"{'fault':<22} {'held':>5} {'recov':>6} {'2xx':>5} {'503':>5} {'500':>4} "
        f"{'other':>5} {'hang':>4} {'rdy503':>6} {'rdy200':>6} {'reruns':>6} {'republ':>6} "
        f"{'overlap':>7} {'early':>5} {'failed':>6}"
    )
    lines = [head]
    for w in timeline.windows:
        answers = figures.answers[w.name]
        ok = sum(n for s, n in answers.items() if s.isdigit() and 200 <= int(s) < 300)
        other = sum(
            n
            for s, n in answers.items()
            if s not in ("503", "500") and not (s.isdigit() and 200 <= int(s) < 300)
        )
        held = "-" if w.name == "baseline" else f"{w.lift - w.start:.1f}"
        recovery = (
            "-"
            if w.name == "baseline"
            else ("never" if w.recovery_s is None else f"{w.recovery_s:.1f}")
        )
        lines.append(
            f"{w.name:<22} {held:>5} {recovery:>6} {ok:>5} {answers['503']:>5} {answers['500']:>4} "
            f"{other:>5} {figures.hangs[w.name]:>4} {figures.not_ready[w.name]:>6} "
            f"{figures.ready_while_refusing[w.name]:>6} {figures.reruns[w.name]:>6} "
            f"{figures.republished[w.name]:>6} {len(figures.overlaps[w.name]):>7} "
            f"{len(figures.early[w.name]):>5} {len(figures.failed[w.name]):>6}"
        )
    lines.append(
        f"skewed engine ({SKEW}), whole run: history timestamps backwards "
        f"{figures.backwards}; max runs of one attempt {figures.max_runs_per_attempt}; "
        f"max publishes of one event {figures.max_publishes_per_event}; "
        f"tracebacks logged {len(figures.tracebacks)}"
    )
    return "\n".join(lines)


def fault_windows(timeline: Timeline) -> str:
    """When each fault held, by the clock of the runs and histories quoted above (a CI
    excerpt may keep the assertion and not the table)."""
    parts = []
    for w in timeline.windows[1:]:
        recovered = "never" if w.recovery_s is None else f"+{w.recovery_s:.1f}s"
        lift = "-" if math.isinf(w.lift) else _clock(w.lift)
        parts.append(f"{w.name} {_clock(w.start)}-{lift} recovered {recovered}")
    return "fault windows (UTC): " + "; ".join(parts)


def judge(timeline: Timeline, figures: Figures, problems: dict[str, list[str]]) -> list[str]:
    """Every broken expectation, one line each (all of them, not only the first)."""
    wrong = []
    for name, found in figures.bad.items():
        if found:
            wrong.append(f"{name}: answers other than 2xx or 503 with Retry-After: {found[:5]}")
    for w in timeline.windows:
        if w.refusing_until is not None and (
            not figures.not_ready[w.name] or figures.ready_while_refusing[w.name]
        ):
            wrong.append(
                f"{w.name}: /health/ready answered 200 {figures.ready_while_refusing[w.name]} "
                f"times and 503 {figures.not_ready[w.name]} times while the fault held"
            )
        if w is not timeline.windows[0] and w.recovery_s is None:
            wrong.append(f"{w.name}: not recovered within {RECOVERY_LIMIT_S}s")
    for name, found in figures.overlaps.items():
        if found:
            wrong.append(f"{name}: task attempts run by two workers at once: {found[:3]}")
    if figures.max_runs_per_attempt > 2:
        wrong.append(
            f"an attempt ran {figures.max_runs_per_attempt} times; reruns by window: "
            f"{dict(figures.reruns)}"
        )
    if figures.max_publishes_per_event > 2:
        wrong.append(
            f"an event reached its stream {figures.max_publishes_per_event} times; "
            f"republished by window: {dict(figures.republished)}"
        )
    for name, found in figures.early.items():
        if found:
            wrong.append(f"{name}: {len(found)} timers fired early: {found[:3]}")
    for name, found in figures.failed.items():
        if found:
            wrong.append(f"{name}: {len(found)} executions did not succeed: {found[:3]}")
    if figures.backwards:
        wrong.append(f"history timestamps went backwards {figures.backwards} times")
    if figures.tracebacks:
        wrong.append(
            f"{len(figures.tracebacks)} tracebacks logged (an outage is expected: a warning, "
            f"no traceback), by exception: "
            f"{dict(Counter(t.rpartition(' ... ')[2].partition(':')[0] for t in figures.tracebacks))}"
            f"; e.g. {figures.tracebacks[:3]}"
        )
    if problems:
        wrong.append(f"{len(problems)} executions wrong: {list(problems.items())[:5]}")
    return wrong


async def test_faults_answer_503_repeat_nothing_and_lose_nothing() -> None:
    library = faults.libfaketime()
    assert library is not None, (
        "libfaketime is missing: install Debian's faketime package (apt-get install -y "
        "faketime); the clock-skew part of this test needs it"
    )
    data_dir = Path(tempfile.mkdtemp(prefix="slf-"))  # short: sockets live under it
    (data_dir / "logs").mkdir()
    runs_file = data_dir / "runs.jsonl"
    began = time.monotonic()
    log: list[str] = []
    passed = False
    try:
        async with servers(data_dir) as (database_url, redis_url, pgdata):
            cluster = Cluster(
                database_url,
                redis_url,
                pgdata,
                data_dir / "logs",
                len(ROLES),
                roles_of=ROLES,
                env={
                    "CHAOS_RUNS_FILE": str(runs_file),
                    "STEPLOG_REQUEST_TIMEOUT_S": str(REQUEST_TIMEOUT_S),
                    "STEPLOG_API_STATEMENT_TIMEOUT_MS": str(API_STATEMENT_TIMEOUT_MS),
                },
                env_of={SKEWED: faults.skewed_clock_env(library, SKEW)},
            )
            timeline, figures = Timeline(), Figures()
            try:
                await asyncio.gather(*(cluster.start(i) for i in range(len(ROLES))))
                timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S)
                async with aiohttp.ClientSession(timeout=timeout) as http:
                    api = Api(cluster, http, timeline)
                    for name, definition in (
                        ("mixed", MIXED),
                        ("sleeper", SLEEPER),
                        ("canary", CANARY),
                    ):
                        await api.call(
                            "register", "PUT", f"/v1/workflows/{name}", {"definition": definition}
                        )
                    timeline.windows[0] = Window("baseline", time.time(), lift=time.time())
                    workload, probes = Workload(api), Probes(api)
                    stop = asyncio.Event()
                    running = [
                        asyncio.create_task(workload.run(stop)),
                        asyncio.create_task(probes.run(stop)),
                    ]
                    try:
                        await run_faults(
                            fault_plan(database_url, redis_url), timeline, api, probes, log
                        )
                    finally:
                        stop.set()
                        await asyncio.gather(*running)
                    for execution_id in probes.unstopped:
                        await api.call("stop", "POST", f"/v1/executions/{execution_id}/stop", {})
                    print("\n".join(log))
                    _answers(api, timeline, figures)
                problems = await _verify(
                    database_url, redis_url, runs_file, workload, probes, timeline, figures
                )
                print(
                    f"{len(workload.inputs)} mixed executions, {len(probes.sleepers)} probe sleepers"
                )
                codes = await cluster.stop_all()
                figures.tracebacks = tracebacks(data_dir / "logs")
                print(table(timeline, figures))
            finally:
                await cluster.kill_all()
            assert codes == [0] * len(ROLES), f"exit codes {codes}\n{cluster.tails()}"
            wrong = judge(timeline, figures, problems)
            assert not wrong, "\n".join([*wrong, fault_windows(timeline)])
            passed = True
    finally:
        print(f"fault test took {time.monotonic() - began:.0f}s")
        if passed:
            shutil.rmtree(data_dir, ignore_errors=True)
        else:  # the processes' logs and the task runs, to tell what went wrong
            shutil.rmtree(data_dir / "pg", ignore_errors=True)
            print(f"logs and task runs kept in {data_dir}")
