"""Every conformance case through the whole stack: the API, the event store on
PostgreSQL, the relay and the trigger streams on Redis, the engine loop, the timer
service and a task worker.

The pure-core suite (test_conformance.py) runs each case through ``decide`` alone;
this one runs the same cases the way a user's executions run and expects the same
results. One steplog serves the module: a module fixture registers and starts every
case at once (bounded concurrency), waits for all of them to end, and each case's
test then checks its own outcome, so a failure names its case.

Expected failures: the pure core's (known_failures.txt), plus the cases that cannot
run through the API as recorded (stack_known_failures.txt, each with its reason: the
API starts STANDARD executions only, and refuses an input over the payload limit
before an execution exists). Both lists are strict: a listed case that passes fails
the run until it is taken off the list.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import pytest
import redis.asyncio as aioredis

from engine.core import events as ev
from steplog.settings import Settings
from tests.conformance.cases import (
    compare_history,
    compare_result,
    load_cases,
    load_known_failures,
)
from tests.conftest import Servers, with_database
from tests.serving import Running, running_steplog

CASES = load_cases()
KNOWN = load_known_failures()
STACK_KNOWN = load_known_failures(Path(__file__).with_name("stack_known_failures.txt"))
RESULTS: dict[str, list[bool]] = {}
# How long the module's run of every case took (printed with the pass rates).
STACK_TIMING: dict[str, float] = {}

# Executions in flight at once: enough to keep the engine's batches full, few enough
# that polling does not crowd out the work on a 2-core machine.
CONCURRENCY = 64
# The whole corpus must end within this (the slowest case waits 5 s in a Wait state).
DEADLINE_S = 240.0
POLL_S = 0.1


async def _run_case(app: Running, index: int, case: dict[str, Any], deadline: float) -> list[str]:
    workflow = f"case{index}"
    status, body = await app.call(
        "PUT",
        f"/v1/workflows/{workflow}",
        {"definition": case["definition"], "type": case.get("state_machine_type", "STANDARD")},
    )
    if status not in (200, 201):
        return [f"registration refused: {status} {body.get('code')}: {body.get('detail')}"]
    # No name: the service names the execution by its id (so its ARN is complete).
    status, body = await app.start(workflow, case["input"])
    if status != 201:
        return [f"start refused: {status} {body.get('code')}: {body.get('detail')}"]
    execution_id = str(body["execution_id"])
    while True:
        status, done = await app.call("GET", f"/v1/executions/{execution_id}")
        if status == 200 and done["status"] != "RUNNING":
            break
        if time.monotonic() > deadline:
            return [f"still {done.get('status')} at the deadline"]
        await asyncio.sleep(POLL_S)
    problems = compare_result(case, done["status"], done["output"], done["error"], done["cause"])
    events = await app.resources.store.load(UUID(execution_id))
    produced = [ev.decode_event(e.data) for e in events]
    problems += compare_history(case, produced)
    return problems


@pytest.fixture(scope="module")
async def stack_outcomes(
    servers: Servers, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[dict[str, list[str]]]:
    """Every case's outcome through one steplog on a database of its own."""
    name = f"t_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(servers.database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{servers.template}"')
    finally:
        await admin.close()
    prefix = f"t{secrets.token_hex(5)}"
    try:
        settings = Settings(
            database_url=with_database(servers.database_url, name),
            redis_url=servers.redis_url,
            redis_prefix=prefix,
            data_dir=tmp_path_factory.mktemp("stack"),
        )
        yield await _run_all(settings)
    finally:
        client = aioredis.Redis.from_url(servers.redis_url)
        keys = [k async for k in client.scan_iter(match=f"*{{{prefix}:*", count=1000)]
        if keys:
            await client.delete(*keys)
        await client.aclose()
        admin = await asyncpg.connect(servers.database_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def _run_all(settings: Settings) -> dict[str, list[str]]:
    outcomes: dict[str, list[str]] = {}
    gate = asyncio.Semaphore(CONCURRENCY)
    began = time.monotonic()
    deadline = began + DEADLINE_S
    async with running_steplog(settings) as app:

        async def one(index: int, case: dict[str, Any]) -> None:
            async with gate:
                try:
                    problems = await _run_case(app, index, case, deadline)
                except Exception as exc:  # a crash is this case's failure, reported as such
                    problems = [f"{type(exc).__name__}: {exc}"]
                outcomes[case["id"]] = problems

        await asyncio.gather(*(one(i, c) for i, c in enumerate(CASES)))
    STACK_TIMING.update(seconds=time.monotonic() - began, cases=len(outcomes))
    return outcomes


@pytest.mark.timeout(DEADLINE_S + 60)
@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_case_through_the_stack(
    case: dict[str, Any], stack_outcomes: dict[str, list[str]], request: pytest.FixtureRequest
) -> None:
    reason = KNOWN.get(case["id"]) or STACK_KNOWN.get(case["id"])
    if reason:
        request.node.add_marker(pytest.mark.xfail(reason=reason, strict=True))
    problems = stack_outcomes[case["id"]]
    RESULTS.setdefault(case["id"].split("/", 1)[0], []).append(not problems)
    assert not problems, "\n".join(problems)


def test_the_stack_lists_only_cases_of_the_corpus() -> None:
    ids = {c["id"] for c in CASES}
    assert set(STACK_KNOWN) <= ids, set(STACK_KNOWN) - ids
    assert not set(STACK_KNOWN) & set(KNOWN), "a case is listed in both files"
