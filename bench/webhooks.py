"""Benchmark: webhook delivery throughput, and latency from commit to receipt.

Runs every role in this process (the webhooks role included) on embedded PostgreSQL and
Redis under a temporary folder, with a local aiohttp receiver (in this process too) and
a subscription to every event. Per round:

    ceiling   a bare aiohttp client POSTs as many signed payloads of the same size to the
              same receiver, with the same concurrency as the webhooks role: what one
              HTTP request per event costs here, without the queue
    live      N executions of a 10-state Pass chain (22 events each) started through the
              API while the subscription is enabled: deliveries/s from the first start to
              the last receipt, and the latency of each event from its timestamp (taken
              in the appending transaction, a moment before the commit) to its receipt
    backlog   the same workload with the subscription paused; then resumed: deliveries/s
              draining the backlog (queueing from the log included), and per CPU second
              of this process (receiver included; the steadier figure on a shared box)
    idle      one execution of a one-state Pass (3 events) at a time, waiting for its
              last event to arrive before the next: latency from commit to receipt with
              no queue in front (a Pass chain appends all its events at once, and an
              execution's events go one after the other, so `live` latencies include
              waiting for the earlier events of the same execution)

Prints the medians over the rounds, each throughput with its ratio to the ceiling of the
same run. The receiver and the client share the machine (2 cores) with PostgreSQL,
Redis and every steplog role: the figures are what this box does with everything on it.

    .venv/bin/python bench/webhooks.py [-n 200] [--rounds 3] [--concurrency 32]

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
import msgspec
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.transitions import PASS_10
from engine.core.events import TERMINAL_EVENT_TYPES
from engine.core.timestamps import parse_iso
from engine.webhooks import new_secret, sign
from steplog.app import open_resources, run_roles
from steplog.datadir import local_servers
from steplog.settings import Settings
from tests.serving import free_port

EVENTS_PER_EXECUTION = 22
IDLE_EXECUTIONS = 30
ENDED = """
SELECT count(*) FROM events e JOIN executions x USING (execution_id)
WHERE x.workflow = $1 AND e.type = ANY($2::text[])"""
_decode = msgspec.json.Decoder(dict[str, Any])


class Receiver:
    def __init__(self) -> None:
        self.receipts: list[tuple[float, str, str]] = []  # (time, webhook-id, event time)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        now = time.time()
        timestamp = _decode.decode(body).get("timestamp", "")
        self.receipts.append((now, request.headers.get("webhook-id", ""), timestamp))
        return web.Response(status=204)


async def _ceiling(url: str, count: int, conc: int, size: int) -> float:
    """POSTs/s of a bare client sending ``count`` signed bodies of ``size`` bytes."""
    secret = new_secret()
    body = b'{"type":"execution.event","data":"' + b"x" * max(0, size - 40) + b'"}'
    sem = asyncio.Semaphore(conc)
    connector = aiohttp.TCPConnector(limit=conc)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def post(i: int) -> None:
            async with sem:
                ts = int(time.time())
                headers = {
                    "Content-Type": "application/json",
                    "webhook-id": f"msg_{i}",
                    "webhook-timestamp": str(ts),
                    "webhook-signature": sign(secret, f"msg_{i}", ts, body),
                }
                async with http.post(url, data=body, headers=headers) as resp:
                    await resp.read()

        began = time.perf_counter()
        await asyncio.gather(*(post(i) for i in range(count)))
        return count / (time.perf_counter() - began)


async def _workload(api: str, name: str, n: int, conc: int) -> None:
    # A session of its own: the API closes connections idle for its keep-alive timeout
    # while a phase waits for deliveries, and a reused closed one would be reset.
    async with aiohttp.ClientSession() as http:
        async with http.put(f"{api}/v1/workflows/{name}", json={"definition": PASS_10}) as resp:
            assert resp.status in (200, 201), await resp.text()
        sem = asyncio.Semaphore(conc)

        async def start(i: int) -> None:
            async with sem:
                async with http.post(
                    f"{api}/v1/workflows/{name}/executions", json={"input": {"i": i}}
                ) as resp:
                    assert resp.status == 201, await resp.text()

        await asyncio.gather(*(start(i) for i in range(n)))


async def _received(receiver: Receiver, count: int, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while len(receiver.receipts) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(receiver.receipts)} of {count} received")
        await asyncio.sleep(0.01)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _round(
    db_url: str, redis_url: str, data: Path, n: int, conc: int, index: int
) -> dict[str, float]:
    settings = Settings(
        database_url=db_url,
        redis_url=redis_url,
        data_dir=data,
        port=free_port(),
        redis_prefix=f"benchwh{index}",
        log_level="WARNING",
        auth=False,  # loopback only
        outbound_allow="127.0.0.1/32",
        webhook_concurrency=conc,
    )
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    hook_url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    count = n * EVENTS_PER_EXECUTION
    out: dict[str, float] = {}
    stop, ready = asyncio.Event(), asyncio.Event()
    try:
        async with open_resources(settings, db_url, redis_url) as r:
            assert r.webhooks is not None
            task = asyncio.create_task(run_roles(r, stop, ready=ready))
            await asyncio.wait_for(ready.wait(), 30)
            api = f"http://{settings.host}:{settings.port}"
            try:
                out["ceiling"] = await _ceiling(hook_url, count, conc, 700)
                receiver.receipts.clear()
                sub = await r.webhooks.create(settings.namespace, url=hook_url)
                began = time.time()
                await _workload(api, f"live{index}", n, conc)
                await _received(receiver, count)
                last = max(t for t, _, _ in receiver.receipts)
                out["live"] = count / (last - began)
                latencies = [t - parse_iso(ts).timestamp() for t, _, ts in receiver.receipts]
                out["p50_ms"] = _pct(latencies, 0.50) * 1000
                out["p99_ms"] = _pct(latencies, 0.99) * 1000
                out["duplicates"] = len(receiver.receipts) - len(
                    {i for _, i, _ in receiver.receipts}
                )
                await r.webhooks.update(settings.namespace, sub.webhook_id, enabled=False)
                receiver.receipts.clear()
                name = f"backlog{index}"
                await _workload(api, name, n, conc)
                terminal = list(TERMINAL_EVENT_TYPES)
                while True:
                    if await r.pool.fetchval(ENDED, name, terminal) >= n:
                        break
                    await asyncio.sleep(0.05)
                resumed, cpu = time.time(), time.process_time()
                await r.webhooks.update(settings.namespace, sub.webhook_id, enabled=True)
                await _received(receiver, count)
                last = max(t for t, _, _ in receiver.receipts)
                out["backlog"] = count / (last - resumed)
                out["backlog/cpu"] = count / (time.process_time() - cpu)
                receiver.receipts.clear()
                one = {"StartAt": "A", "States": {"A": {"Type": "Pass", "End": True}}}
                async with aiohttp.ClientSession() as http:
                    async with http.put(
                        f"{api}/v1/workflows/idle{index}", json={"definition": one}
                    ) as resp:
                        assert resp.status in (200, 201)
                    for i in range(IDLE_EXECUTIONS):
                        async with http.post(
                            f"{api}/v1/workflows/idle{index}/executions", json={"input": {}}
                        ) as resp:
                            assert resp.status == 201
                        await _received(receiver, 3 * (i + 1))
                idle = [t - parse_iso(ts).timestamp() for t, _, ts in receiver.receipts]
                out["idle_p50_ms"] = _pct(idle, 0.50) * 1000
                out["idle_p99_ms"] = _pct(idle, 0.99) * 1000
                # The next round's receiver is another: this one's subscription goes.
                await r.webhooks.delete(settings.namespace, sub.webhook_id)
            finally:
                stop.set()
                await asyncio.wait_for(task, 60)
    finally:
        await runner.cleanup()
    return out


async def _bench(n: int, rounds: int, conc: int) -> None:
    with tempfile.TemporaryDirectory(prefix="steplog-bench-wh-") as folder:
        data = Path(folder)
        figures: dict[str, list[float]] = {}
        async with local_servers(data, own=True) as (db_url, redis_url):
            for index in range(1, rounds + 1):
                result = await _round(db_url, redis_url, data, n, conc, index)
                print(f"  round {index}: " + ", ".join(f"{k} {v:.1f}" for k, v in result.items()))
                for key, value in result.items():
                    figures.setdefault(key, []).append(value)
    med = {k: statistics.median(v) for k, v in figures.items()}
    events = n * EVENTS_PER_EXECUTION
    print(f"\n{n} executions x {EVENTS_PER_EXECUTION} events = {events} deliveries per mode")
    print(f"rounds {rounds}, concurrency {conc}; medians:")
    print(f"  ceiling (bare signed POSTs)   {med['ceiling']:8.0f} /s")
    print(
        f"  live delivery                 {med['live']:8.0f} /s  "
        f"({med['live'] / med['ceiling']:.2f} of the ceiling); commit -> receipt p50 "
        f"{med['p50_ms']:.0f} ms, p99 {med['p99_ms']:.0f} ms"
    )
    print(
        f"  backlog drain                 {med['backlog']:8.0f} /s  "
        f"({med['backlog'] / med['ceiling']:.2f} of the ceiling)"
    )
    print(f"  backlog drain per CPU-second  {med['backlog/cpu']:8.0f} /cpu-s (this process)")
    print(
        f"  idle: commit -> receipt       p50 {med['idle_p50_ms']:.0f} ms, "
        f"p99 {med['idle_p99_ms']:.0f} ms ({IDLE_EXECUTIONS} x 3 events, one at a time)"
    )
    print(f"  duplicates (live)             {med['duplicates']:8.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    asyncio.run(_bench(args.n, args.rounds, args.concurrency))


if __name__ == "__main__":
    main()
