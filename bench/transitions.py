"""Benchmark: state transitions per second and start latency, through the API.

Starts steplog (`steplog dev`, every role in one process, embedded PostgreSQL and
Redis under a temporary folder) as a separate process, then starts N executions
of each workload with bounded client concurrency and waits until none is
RUNNING. Prints, per workload: executions/s, state transitions/s, start latency
p50/p99, and the ratio to the baseline workload (a 1-state Pass machine)
measured in the same run, so figures compare across machines. Then 1-state Pass starts
are offered open-loop at a fixed arrival rate (``--open-rate``, default half of pass1's
closed-loop executions/s, for ``--open-seconds``): each start is sent at its scheduled
moment whatever the earlier ones are doing, and its latency counts from that moment, so
queueing shows (a closed loop of 32 clients hides it); p50/p99 against the goal p99 < 50 ms.

With ``--split`` steplog runs as two processes on the same servers: `steplog dev` with the
api and engine roles (the engine role brings the relay, the timers and recovery), and
`steplog serve` with the worker, projector and webhooks roles: what one steplog process
cannot do on one core (it runs at about 90% of one), two can on the machine's two.

With ``--ceiling`` (what `make bench` runs) each round first measures the bare-client
ceilings of bench/ceiling.py on the same PostgreSQL and Redis, then the workloads, and
prints each workload's ratio to its ceiling of the same round: pass10 transitions/s to
the write-path ceiling, pass1 executions/s to the POST + one INSERT ceiling (and to the
pass1 write path). After the open loop, the bare POST + INSERT server is offered the same
rate by the same client, and its p50/p99 printed beside: what the machine itself allows
at that rate (the goal stays absolute). ``--rounds`` alternates them for longer runs.

Authentication is on by default, so every request carries an API key:
``STEPLOG_API_KEY`` when set, else the admin key `steplog dev` keeps in its data folder
(``<data dir>/admin.key``: the folder of the steplog started here, else ``--data-dir``,
``STEPLOG_DATA_DIR`` or the nearest ``.steplog``).

    .venv/bin/python bench/transitions.py [-n 500] [--concurrency 32] [--ceiling] [--rounds 1]
        [--split]
    .venv/bin/python bench/transitions.py --url http://127.0.0.1:8080   # a running steplog

Run by hand; never part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ceiling  # bench/ceiling.py, a sibling script
import goal  # bench/goal.py

PASS_1 = {"StartAt": "S0", "States": {"S0": {"Type": "Pass", "End": True}}}
PASS_10 = {
    "StartAt": "S0",
    "States": {
        f"S{i}": ({"Type": "Pass", "Next": f"S{i + 1}"} if i < 9 else {"Type": "Pass", "End": True})
        for i in range(10)
    },
}
TASK_3 = {
    "StartAt": "T0",
    "States": {
        f"T{i}": (
            {"Type": "Task", "Resource": "test:echo", "Next": f"T{i + 1}"}
            if i < 2
            else {"Type": "Task", "Resource": "test:echo", "End": True}
        )
        for i in range(3)
    },
}
WORKLOADS = [("pass1", PASS_1, 1), ("pass10", PASS_10, 10), ("task3", TASK_3, 3)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _wait_ready(http: aiohttp.ClientSession, url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            async with http.get(url + "/health/ready") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError("steplog did not become ready")


async def _run_workload(
    http: aiohttp.ClientSession, url: str, name: str, definition: dict[str, Any], n: int, conc: int
) -> dict[str, float]:
    async with http.put(f"{url}/v1/workflows/{name}", json={"definition": definition}) as resp:
        assert resp.status in (200, 201), await resp.text()
    latencies: list[float] = []
    sem = asyncio.Semaphore(conc)

    async def start(i: int) -> None:
        async with sem:
            t0 = time.perf_counter()
            async with http.post(
                f"{url}/v1/workflows/{name}/executions", json={"input": {"i": i}}
            ) as resp:
                assert resp.status == 201, await resp.text()
                await resp.read()
            latencies.append(time.perf_counter() - t0)

    began = time.perf_counter()
    await asyncio.gather(*(start(i) for i in range(n)))
    while True:
        async with http.get(
            f"{url}/v1/executions", params={"workflow": name, "status": "RUNNING", "limit": "1"}
        ) as resp:
            body = await resp.json()
        if not body["executions"]:
            break
        # Often: 400 pass1 executions take about 0.2 s, so a coarser poll would add a
        # tenth or more to their time.
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - began
    latencies.sort()
    return {
        "elapsed_s": elapsed,
        "executions_per_s": n / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
    }


async def _open_loop(
    http: aiohttp.ClientSession, target: str, rate: float, seconds: float
) -> dict[str, float]:
    """Starts POSTed to ``target`` (a workflow's executions, or the bare POST + INSERT
    server) at a fixed arrival rate (open loop): start ``i`` is sent at ``i / rate``
    seconds whatever the earlier ones are doing, and its latency counts from that
    scheduled moment (so a client-side queue is not hidden)."""
    total = max(1, int(rate * seconds))
    latencies: list[float] = []
    failures = 0
    loop = asyncio.get_running_loop()

    async def start(i: int, due: float) -> None:
        nonlocal failures
        async with http.post(target, json={"input": {"open": i}}) as resp:
            await resp.read()
            if resp.status != 201:
                failures += 1
                return
        latencies.append(loop.time() - due)

    began = loop.time()
    tasks = []
    for i in range(total):
        due = began + i / rate
        if (delay := due - loop.time()) > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(start(i, due)))
    await asyncio.gather(*tasks)
    elapsed = loop.time() - began
    latencies.sort()
    return {
        "offered_per_s": rate,
        "sent": total,
        "achieved_per_s": len(latencies) / elapsed,
        "failures": failures,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
    }


def _api_key(data_dir: Path | None) -> str | None:
    """STEPLOG_API_KEY, else the admin key kept in ``data_dir`` (None: send no key)."""
    if key := os.environ.get("STEPLOG_API_KEY"):
        return key
    if data_dir is not None and (data_dir / "admin.key").is_file():
        return (data_dir / "admin.key").read_text().strip()
    return None


def _default_data_dir() -> Path | None:
    if env := os.environ.get("STEPLOG_DATA_DIR"):
        return Path(env)
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / ".steplog").is_dir():
            return folder / ".steplog"
    return None


async def _workloads(
    url: str, data_dir: Path | None, n: int, conc: int, args: argparse.Namespace
) -> dict[str, Any]:
    """The closed-loop workloads, then (unless ``--open-seconds 0``) pass1 starts offered
    open-loop at ``--open-rate`` per second (default: half of pass1's closed-loop rate)."""
    async with aiohttp.ClientSession() as http:
        await _wait_ready(http, url)
    key = _api_key(data_dir)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    # Open loop: enough connections that the client never queues what it offers.
    connector = aiohttp.TCPConnector(limit=512)
    async with aiohttp.ClientSession(headers=headers, connector=connector) as http:
        results = {}
        for name, definition, states in WORKLOADS:
            r = await _run_workload(http, url, name, definition, n, conc)
            r["transitions_per_s"] = r["executions_per_s"] * states
            results[name] = r
        if args.open_seconds > 0:
            rate = args.open_rate or results["pass1"]["executions_per_s"] / 2
            target = f"{url}/v1/workflows/pass1/executions"
            results["open"] = await _open_loop(http, target, rate, args.open_seconds)
    return results


def _print_workloads(results: dict[str, Any], n: int, conc: int) -> None:
    base = results["pass1"]["executions_per_s"]
    print(f"{n} executions per workload, client concurrency {conc}")
    print(
        f"{'workload':8} {'exec/s':>9} {'transitions/s':>14} {'start p50':>10} "
        f"{'start p99':>10} {'exec/s vs pass1':>16}"
    )
    for name, r in results.items():
        if name == "open":
            continue
        print(
            f"{name:8} {r['executions_per_s']:9.1f} {r['transitions_per_s']:14.1f} "
            f"{r['p50_ms']:8.1f}ms {r['p99_ms']:8.1f}ms {r['executions_per_s'] / base:16.2f}"
        )

    if (r := results.get("open")) is not None:
        print(
            f"pass1 open loop: {r['offered_per_s']:.1f} starts/s offered ({r['sent']} sent), "
            f"{r['achieved_per_s']:.1f}/s answered, {r['failures']} failed; "
            f"start latency p50 {r['p50_ms']:.1f}ms p99 {r['p99_ms']:.1f}ms (goal p99 < 50 ms)"
        )


def _ratios(work: dict[str, Any], ceil: dict[str, Any]) -> dict[str, float]:
    figures = {
        "task3 task round trips/s": work["task3"]["transitions_per_s"],
    }
    if "open" in work:
        figures["pass1 open-loop start p99 ms"] = work["open"]["p99_ms"]
    return figures | {
        "pass10 transitions/s / write-path ceiling": work["pass10"]["transitions_per_s"]
        / ceil["pass10"]["transitions_per_s"],
        "pass1 exec/s / POST + INSERT ceiling": work["pass1"]["executions_per_s"]
        / ceil["post_insert"]["executions_per_s"],
        "pass1 exec/s / pass1 write-path ceiling": work["pass1"]["executions_per_s"]
        / ceil["pass1"]["executions_per_s"],
    }


async def _bench(url: str, data_dir: Path | None, args: argparse.Namespace) -> None:
    n, conc = args.n, args.concurrency
    if not args.ceiling:
        _print_workloads(await _workloads(url, data_dir, n, conc, args), n, conc)
        return
    if data_dir is None:
        raise SystemExit("--ceiling needs the data folder of the steplog (--data-dir)")
    async with aiohttp.ClientSession() as http:
        await _wait_ready(http, url)
    database_url, redis_url = ceiling.servers_of(data_dir)
    rounds: list[dict[str, float]] = []
    for r in range(args.rounds):
        print(f"-- round {r + 1} of {args.rounds}")
        ceil = await ceiling.measure(database_url, redis_url, n, args.batch, args.connections, conc)
        ceiling.print_ceilings(ceil)
        work = await _workloads(url, data_dir, n, conc, args)
        _print_workloads(work, n, conc)
        if (open_loop := work.get("open")) is not None:
            # The latency goal's ceiling: the bare POST + INSERT server offered the same
            # rate by the same client, on the same machine (not a ratio: the goal is
            # absolute; what the machine itself allows at that rate).
            async with (
                ceiling.bare_server(database_url) as bare,
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=512)) as http,
            ):
                bare_open = await _open_loop(
                    http, bare, open_loop["offered_per_s"], args.open_seconds
                )
            print(
                f"ceiling POST + INSERT open loop: {bare_open['offered_per_s']:.1f}/s offered, "
                f"p50 {bare_open['p50_ms']:.1f}ms p99 {bare_open['p99_ms']:.1f}ms"
            )
        ratios = _ratios(work, ceil)
        for name, value in ratios.items():
            if "/" in name and "round trips" not in name:
                print(f"ratio {name}: {value:.2f}")
        rounds.append(ratios)
    medians = {name: statistics.median(x[name] for x in rounds) for name in rounds[0]}
    if len(rounds) > 1:
        print(f"-- median of {len(rounds)} rounds")
        for name, value in medians.items():
            if "/" in name and "round trips" not in name:
                print(f"ratio {name}: {value:.2f}")
    _goals(medians, args.split)
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def _goals(m: dict[str, float], split: bool = False) -> None:
    """The issue's throughput and latency goals, from the (median) figures of this run
    (named for the two-process layout with ``split``)."""
    of = ", 2 processes" if split else ""
    pass10 = m["pass10 transitions/s / write-path ceiling"]
    goal.report(
        f"pass10 transitions/s / write-path ceiling{of}", f"{pass10:.2f}", ">= 0.6", pass10 >= 0.6
    )
    pass1 = m["pass1 exec/s / POST + INSERT ceiling"]
    goal.report(f"pass1 exec/s / POST + INSERT ceiling{of}", f"{pass1:.2f}", ">= 0.4", pass1 >= 0.4)
    if (p99 := m.get("pass1 open-loop start p99 ms")) is not None:
        goal.report(f"pass1 open-loop start latency p99{of}", f"{p99:.1f} ms", "< 50 ms", p99 < 50)
    task3 = m["task3 task round trips/s"]
    goal.report(f"task3 task round trips/s{of}", f"{task3:,.0f}", ">= 2,000", task3 >= 2000)


# The roles `--split` runs in a second process: what a task round trip spends beside the
# API and the engine (the worker, the projectors, the webhooks role).
BACKGROUND_ROLES = ("worker", "projector", "webhooks")


def _background(steplog: str, env: dict[str, str], data: Path) -> subprocess.Popen[bytes]:
    """`steplog serve` with BACKGROUND_ROLES on the servers of the `steplog dev` that owns
    ``data`` (once it has published them in servers.json)."""
    deadline = time.monotonic() + 120
    while not (data / "servers.json").is_file():
        if time.monotonic() > deadline:
            raise SystemExit("steplog dev did not publish its servers")
        time.sleep(0.2)
    database_url, redis_url = ceiling.servers_of(data)
    background = {k: v for k, v in env.items() if k not in ("STEPLOG_DATA_DIR", "STEPLOG_ROLES")}
    background |= {
        "STEPLOG_DATABASE_URL": database_url,
        "STEPLOG_REDIS_URL": redis_url,
        "STEPLOG_PORT": str(_free_port()),  # (no api role: nothing listens)
    }
    return subprocess.Popen(
        [steplog, "serve", "--roles", ",".join(BACKGROUND_ROLES)], env=background
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--url", default=None, help="a running steplog; default: start one")
    parser.add_argument("--data-dir", default=None, help="the data folder of --url's steplog")
    parser.add_argument("--ceiling", action="store_true", help="measure the ceilings too")
    parser.add_argument("--rounds", type=int, default=1, help="ceiling + workloads rounds")
    parser.add_argument("--batch", type=int, default=50, help="ceiling: executions per batch")
    parser.add_argument("--connections", type=int, default=4, help="ceiling: connections")
    parser.add_argument(
        "--open-rate",
        type=float,
        default=0.0,
        help="pass1 starts/s offered open-loop (default: half of pass1's closed-loop rate)",
    )
    parser.add_argument(
        "--open-seconds", type=float, default=10.0, help="open-loop duration (0: skip it)"
    )
    parser.add_argument(
        "--split",
        action="store_true",
        help="two processes: `steplog dev` with the api and engine roles, and `steplog "
        "serve --roles " + ",".join(BACKGROUND_ROLES) + "` on its servers",
    )
    args = parser.parse_args()
    if args.url:
        data_dir = Path(args.data_dir) if args.data_dir else _default_data_dir()
        asyncio.run(_bench(args.url, data_dir, args))
        return
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="steplog-bench-") as data:
        env = {
            **os.environ,
            "STEPLOG_DATA_DIR": data,
            "STEPLOG_PORT": str(port),
            "STEPLOG_LOG_LEVEL": "WARNING",
            **goal.UNLIMITED,
        }
        env.pop("STEPLOG_DATABASE_URL", None)
        env.pop("STEPLOG_REDIS_URL", None)
        steplog = os.path.join(os.path.dirname(sys.executable), "steplog")
        if args.split:
            env["STEPLOG_ROLES"] = "api,engine"
        procs = [subprocess.Popen([steplog, "dev"], env=env)]
        try:
            if args.split:
                procs.append(_background(steplog, env, Path(data)))
            asyncio.run(_bench(f"http://127.0.0.1:{port}", Path(data), args))
        finally:
            for proc in reversed(procs):
                proc.terminate()
                proc.wait(timeout=60)


if __name__ == "__main__":
    main()
