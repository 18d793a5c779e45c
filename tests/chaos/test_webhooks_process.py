"""A real `steplog serve --roles webhooks` process, SIGKILLed while it delivers and started
again: every event of every execution reaches the receiver (signatures verified with the
independent standardwebhooks package), in seq order per execution, none lost, and a
duplicate only ever with the webhook-id of its first delivery."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest

from steplog.settings import Settings
from tests.chaos.harness import Cluster
from tests.serving import running_steplog
from tests.webhook_receiver import Receiver, serving_receiver

pytestmark = pytest.mark.timeout(240)

CHAIN = {
    "StartAt": "S0",
    "States": {
        **{f"S{i}": {"Type": "Pass", "Next": f"S{i + 1}"} for i in range(4)},
        "S4": {"Type": "Pass", "End": True},
    },
}
FIRST_WAVE = 20
SECOND_WAVE = 10  # started while the webhooks process is dead


async def _until(
    predicate: Callable[[], Awaitable[Any]], timeout_s: float, what: str, cluster: Cluster
) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (result := await predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout_s}s\n{cluster.tails()}")
        await asyncio.sleep(0.05)
    return result


async def test_killing_the_webhooks_process_mid_run_loses_nothing(
    settings: Settings, pool: asyncpg.Pool, redis_prefix: str, eventually: Any
) -> None:
    assert settings.database_url and settings.redis_url
    logs = Path(tempfile.mkdtemp(prefix="slw-"))
    cluster = Cluster(
        settings.database_url,
        settings.redis_url,
        logs,  # no PostgreSQL restart here: the data folder is never used
        logs,
        1,
        roles="webhooks",
        env={
            "STEPLOG_REDIS_PREFIX": redis_prefix,
            "STEPLOG_OUTBOUND_ALLOW": "127.0.0.1/32",
            # Short leases (2 x the total timeout + 5 s): what the killed process had
            # claimed is sent again soon after its restart.
            "STEPLOG_OUTBOUND_TIMEOUT_S": "2",
            "STEPLOG_WEBHOOK_POLL_S": "0.1",
            "STEPLOG_WEBHOOK_RETRY_BASE_S": "0.1",
        },
    )
    roles = ("api", "engine", "worker", "projector")
    in_process = msgspec.structs.replace(settings, roles=roles, outbound_allow="127.0.0.1/32")
    try:
        async with serving_receiver() as receiver, running_steplog(in_process) as app:
            await app.register("chain", CHAIN)
            status, created = await app.call("POST", "/v1/webhooks", {"url": receiver.url})
            assert status == 201, created
            receiver.secret = created["secret"]
            receiver.delay_s = 0.002
            await cluster.start(0)
            ids = [await app.start_id("chain", {"i": i}) for i in range(FIRST_WAVE)]
            await _until(lambda: _more_than(receiver, 40), 60, "the first deliveries", cluster)
            await cluster.kill(0)
            at_kill = len(receiver.received)
            ids += [await app.start_id("chain", {"i": i}) for i in range(SECOND_WAVE)]
            for execution_id in ids:
                await app.ended(eventually, execution_id)
            expected = {
                (str(r["execution_id"]), r["seq"])
                for r in await pool.fetch(
                    "SELECT execution_id, seq FROM events WHERE execution_id = ANY($1::uuid[])",
                    ids,
                )
            }
            assert len(expected) == 12 * len(ids)
            assert at_kill < len(expected)
            await cluster.start(0)

            async def all_there() -> bool:
                return _keys(receiver) >= expected

            await _until(all_there, 120, "every event delivered", cluster)
            assert await cluster.stop_all() == [0]
        assert not receiver.bad
        assert _keys(receiver) == expected
        ids_of: dict[tuple[str, int], set[str]] = {}
        for r in receiver.received:
            ids_of.setdefault(_key(r.body), set()).add(r.webhook_id)
        assert all(len(v) == 1 for v in ids_of.values())  # duplicates share their id
        assert len({next(iter(v)) for v in ids_of.values()}) == len(expected)
        first_seen: dict[str, list[int]] = {}
        for r in receiver.received:
            execution, seq = _key(r.body)
            seen = first_seen.setdefault(execution, [])
            if seq not in seen:
                seen.append(seq)
        assert all(seqs == sorted(seqs) for seqs in first_seen.values())
        print(
            f"{len(expected)} events, {len(receiver.received)} receipts "
            f"({len(receiver.received) - len(expected)} duplicates), killed after {at_kill}"
        )
    finally:
        await cluster.kill_all()
        shutil.rmtree(logs, ignore_errors=True)


def _key(body: dict[str, Any]) -> tuple[str, int]:
    return body["data"]["execution_id"], body["data"]["seq"]


def _keys(receiver: Receiver) -> set[tuple[str, int]]:
    return {_key(r.body) for r in receiver.received}


async def _more_than(receiver: Receiver, n: int) -> bool:
    return len(receiver.received) > n
