"""One engine's wall clock 45 s ahead, or behind (libfaketime), next to a normal one (DESIGN
invariant 8, issue 14 item 5): Waits (Seconds and TimestampPath), retries and heartbeats
fire on time, not early (nor 45 s late), by PostgreSQL's clock; no history has a time in
the future or going backwards; no execution fails because of the skew; the skewed process
reports its offset and warns.

Two real `steplog serve` processes on the suite's PostgreSQL and Redis: A (every role,
its own clock) and B (api, engine, worker: its clock +45 s through libfaketime, which
fakes the monotonic clock by the same offset). Their engines share the triggers, their
timer services race for the timers, their workers for the tasks, and the executions are
started through both APIs. A watcher reads the executions' events from PostgreSQL
together with ``clock_timestamp()`` in the same statement: an event seen at PostgreSQL
time T was committed before T, so a timer's consequence seen before the timer's due time
fired early.

libfaketime comes from Debian's `faketime` package: installed here when missing (as root
with apt-get, as .ci/run does); when it cannot be, the test fails saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import UUID

import aiohttp
import asyncpg
import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine.core.timestamps import iso_millis, parse_iso
from steplog.settings import Settings
from tests.chaos import faults
from tests.serving import free_port

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parents[2]
STEPLOG = Path(sys.executable).parent / "steplog"
SKEW_S = 45
EXECUTIONS = 8
UNTIL_S = 8.0  # the TimestampPath wait ends this long after the start, by PostgreSQL's clock
# How far a recorded time may lie past the moment its event was seen (by PostgreSQL's
# clock): a process's estimate of that clock is off by about half a round trip (more on
# a loaded machine), far less than the skew.
STAMP_TOLERANCE = dt.timedelta(milliseconds=250)
# A timer's consequence later than this after its due time was fired by a clock that runs
# behind (the polling and a loaded machine account for a few seconds at most).
LATE = dt.timedelta(seconds=15)

WORKFLOW: dict[str, Any] = {
    "StartAt": "Pause",
    "States": {
        "Pause": {"Type": "Wait", "Seconds": 3, "Next": "Until"},
        "Until": {"Type": "Wait", "TimestampPath": "$.until", "Next": "Flaky"},
        "Flaky": {
            "Type": "Task",
            "Resource": "test:fail",
            "Parameters": {"error": "Skew.Flaky"},
            "Retry": [{"ErrorEquals": ["Skew.Flaky"], "IntervalSeconds": 2, "MaxAttempts": 1}],
            "Catch": [{"ErrorEquals": ["Skew.Flaky"], "Next": "Beat", "ResultPath": None}],
            "Next": "Beat",
        },
        # Heartbeats every second against a 5 s HeartbeatSeconds: a timer service that
        # thinks it is 45 s later would time the attempt out (States.HeartbeatTimeout).
        "Beat": {
            "Type": "Task",
            "Resource": "test:sleep",
            "Parameters": {"seconds": 6, "heartbeat_every": 1},
            "HeartbeatSeconds": 5,
            "ResultPath": None,
            "End": True,
        },
    },
}


def libfaketime() -> Path:
    """The library (tests.chaos.faults finds it, installing Debian's `faketime` package
    when missing); the test fails, it does not skip, without it."""
    library = faults.libfaketime()
    if library is None:
        pytest.fail(
            "libfaketime is missing: install Debian's faketime package "
            "(apt-get install faketime) to run the clock-skew test"
        )
    return library


class Process:
    """One `steplog serve` with ``roles`` and extra environment, logging to ``log``."""

    def __init__(self, settings: Settings, roles: str, log: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.roles = roles
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("STEPLOG_")}
        self.env.update(
            {
                "PYTHONPATH": str(REPO),
                "STEPLOG_DATABASE_URL": str(settings.database_url),
                "STEPLOG_REDIS_URL": str(settings.redis_url),
                "STEPLOG_REDIS_PREFIX": settings.redis_prefix,
                "STEPLOG_PORT": str(self.port),
                "STEPLOG_AUTH": "off",
                "STEPLOG_LOG_LEVEL": "WARNING",
                "STEPLOG_CLOCK_SAMPLE_INTERVAL_S": "2",
                **env,
            }
        )
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                str(STEPLOG),
                "serve",
                "--roles",
                self.roles,
                cwd=str(REPO),
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession() as http:
            while True:
                if self.proc.returncode is not None:
                    raise AssertionError(f"{self.roles} exited:\n{self.tail()}")
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with http.get(self.url + "/health/ready") as resp:
                        if resp.status == 200:
                            return
                assert time.monotonic() < deadline, f"not ready in 60 s:\n{self.tail()}"
                await asyncio.sleep(0.1)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()

    def tail(self, lines: int = 40) -> str:
        if not self.log.exists():
            return "(no log)"
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@contextlib.asynccontextmanager
async def processes(*procs: Process) -> AsyncIterator[None]:
    try:
        for p in procs:
            await p.start()
        yield
    finally:
        for p in procs:
            await p.stop()


async def metric(http: aiohttp.ClientSession, url: str, name: str) -> float:
    """The sum of ``name``'s samples on ``url``/metrics."""
    async with http.get(url + "/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    )


class Seen(msgspec.Struct):
    """An event as the watcher saw it first: ``seen`` is PostgreSQL's clock then."""

    type: str
    data: dict[str, Any]
    recorded: dt.datetime
    seen: dt.datetime


WATCH = """
SELECT execution_id, seq, type, data::text AS data, recorded_at, clock_timestamp() AS seen
FROM events WHERE execution_id = ANY($1::uuid[])"""


async def watch(
    conn: asyncpg.Connection, ids: list[UUID], timeout_s: float
) -> dict[UUID, dict[int, Seen]]:
    """Every event of ``ids`` with the PostgreSQL time it was first seen at, polled until
    all have ended."""
    seen: dict[UUID, dict[int, Seen]] = {eid: {} for eid in ids}
    deadline = time.monotonic() + timeout_s
    while True:
        for r in await conn.fetch(WATCH, ids):
            if r["seq"] not in seen[r["execution_id"]]:
                seen[r["execution_id"]][r["seq"]] = Seen(
                    r["type"], msgspec.json.decode(r["data"]), r["recorded_at"], r["seen"]
                )
        ended = [
            any(e.type.startswith("Execution") and seq > 1 for seq, e in events.items())
            for events in seen.values()
        ]
        if all(ended):
            return seen
        assert time.monotonic() < deadline, f"{ended.count(False)} executions still running"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("skew_s", [SKEW_S, -SKEW_S], ids=["ahead", "behind"])
async def test_one_engine_45_s_off_fires_nothing_early_and_fails_nothing(
    settings: Settings, tmp_path: Path, skew_s: int
) -> None:
    fake = libfaketime()
    normal = Process(settings, "api,engine,worker,projector", tmp_path / "normal.log", {})
    skewed = Process(
        settings,
        "api,engine,worker",
        tmp_path / "skewed.log",
        faults.skewed_clock_env(fake, f"{skew_s:+d}s"),
    )
    conn = await asyncpg.connect(settings.database_url)
    try:
        async with processes(normal, skewed), aiohttp.ClientSession() as http:
            # The skew is real: B's own wall clock is 45 s off PostgreSQL's.
            offset = await metric(http, skewed.url, "steplog_clock_offset_seconds")
            assert abs(offset + skew_s) < 2, offset
            assert abs(await metric(http, normal.url, "steplog_clock_offset_seconds")) < 1
            async with http.put(
                normal.url + "/v1/workflows/skew", json={"definition": WORKFLOW}
            ) as resp:
                assert resp.status in (200, 201), await resp.text()
            ids: list[UUID] = []
            untils: dict[UUID, dt.datetime] = {}
            for i in range(EXECUTIONS):
                db_now: dt.datetime = await conn.fetchval("SELECT clock_timestamp()")
                until = parse_iso(iso_millis(db_now + dt.timedelta(seconds=UNTIL_S)))
                base = (normal, skewed)[i % 2].url
                async with http.post(
                    base + "/v1/workflows/skew/executions",
                    json={"input": {"until": iso_millis(until)}},
                ) as resp:
                    body = await resp.json()
                    assert resp.status == 201, body
                eid = UUID(body["execution_id"])
                ids.append(eid)
                untils[eid] = until
            seen = await watch(conn, ids, timeout_s=90)
            # B took part: it decided triggers and fired timers.
            assert await metric(http, skewed.url, "steplog_decision_duration_seconds_count") > 0
            assert await metric(http, skewed.url, "steplog_timers_fired_total") > 0
        side = "ahead of" if skew_s > 0 else "behind"
        assert "clock is 4" in skewed.tail(400) and f"{side} PostgreSQL" in skewed.tail(400)
    finally:
        await conn.close()

    problems: list[str] = []
    for eid, events in seen.items():
        ordered = [events[seq] for seq in sorted(events)]
        assert sorted(events) == list(range(1, len(events) + 1))
        final = ordered[-1]
        if final.type != "ExecutionSucceeded":
            problems.append(f"{eid}: ended with {final.type} {final.data}")
        for before, after in itertools.pairwise(ordered):
            if after.recorded < before.recorded:
                problems.append(
                    f"{eid}: {after.type} at {after.recorded} before {before.type} "
                    f"at {before.recorded}"
                )
        for seq, event in sorted(events.items()):
            if event.recorded > event.seen + STAMP_TOLERANCE:
                problems.append(
                    f"{eid}: {event.type} stamped {event.recorded}, in the future of "
                    f"PostgreSQL's clock when first seen ({event.seen})"
                )
            # The consequence of a timer (the Wait's exit, the retry's next attempt) is
            # neither committed nor stamped before the timer's due time.
            due = event.data.get("due") if event.type != "TaskHeartbeatRecorded" else None
            if due and seq + 1 in events:
                nxt, at = events[seq + 1], parse_iso(due)
                if nxt.seen < at or nxt.recorded < at:
                    problems.append(
                        f"{eid}: {nxt.type} seen at {nxt.seen} (stamped {nxt.recorded}) "
                        f"before the due time {due} of {event.type}"
                    )
                elif nxt.seen > at + LATE:
                    problems.append(
                        f"{eid}: {nxt.type} seen at {nxt.seen}, long after the due time {due}"
                    )
            if event.type == "TaskTimedOut":
                problems.append(f"{eid}: {event.type} {event.data}")
        exits = [e for e in ordered if e.type == "WaitStateExited"]
        if len(exits) >= 2 and exits[1].seen < untils[eid]:
            problems.append(f"{eid}: the TimestampPath wait ended before {untils[eid]}")
        # Everything a timer drove happened: both waits, one retry, the heartbeats.
        types = [e.type for e in ordered]
        if (
            len(exits) != 2
            or types.count("StateRetryScheduled") != 1
            or types.count("TaskHeartbeatRecorded") < 3
        ):
            problems.append(f"{eid}: unexpected history {types}")
    assert not problems, "\n".join(problems[:40]) + f"\n({len(problems)} problems)"
