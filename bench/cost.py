"""CPU cost of the workloads of bench/transitions.py: milliseconds of CPU that steplog,
PostgreSQL (postmaster and backends) and Redis spend per 1,000 transitions, read from /proc.

    .venv/bin/python bench/cost.py [-n 400] [--rounds 2] [--concurrency 32]
    .venv/bin/python bench/cost.py --url http://127.0.0.1:8080 --data-dir .steplog

A cost rather than a rate: on a machine that other work loads, transitions/s (and even its
ratio to a same-run ceiling) swings by 2x from run to run, while the CPU each transition
takes barely moves, so a before/after of a change reads best here. Starts `steplog dev`
(every role in one process) under a temporary folder unless given ``--url`` and the
``--data-dir`` of a running one; Linux only (/proc). Prints per workload and round the
throughput and the CPU per 1,000 transitions of each role, then the median over rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import goal  # bench/goal.py
import transitions  # bench/transitions.py, a sibling script

ROLES = ("steplog", "postgres", "redis")
_TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name (index 0: state); [] when gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return text[text.rindex(")") + 2 :].split()


def _cpu_s(pid: int, *, reaped: bool = False) -> float:
    """CPU seconds (user + system) of ``pid``, and of its ended children when ``reaped``."""
    f = _stat(pid)
    if not f:
        return 0.0
    ticks = int(f[11]) + int(f[12]) + (int(f[13]) + int(f[14]) if reaped else 0)
    return ticks * _TICK_S


def role_pids(data_dir: Path) -> dict[str, list[int]]:
    """The processes of the `steplog dev` that owns ``data_dir``: its embedded Redis (the
    redis-server whose --dir is in the folder) is its child; PostgreSQL's postmaster is
    named in the folder and its backends are the postmaster's children."""
    postmaster = int((data_dir / "pg" / "postmaster.pid").read_text().split()[0])
    redis_dir = str(data_dir / "redis").encode()
    redis = steplog = 0
    backends = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        f = _stat(pid)
        if len(f) < 2:
            continue
        if int(f[1]) == postmaster:
            backends.append(pid)
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"redis-server" in cmdline and redis_dir in cmdline:
            redis, steplog = pid, int(f[1])
    if not redis:
        raise SystemExit(f"no embedded Redis of a steplog dev found for {data_dir}")
    return {"steplog": [steplog], "postgres": [postmaster, *backends], "redis": [redis]}


def cpu_by_role(data_dir: Path) -> dict[str, float]:
    """CPU seconds each role has used so far (PostgreSQL's ended backends included, through
    the postmaster's reaped children)."""
    return {
        role: sum(_cpu_s(pid, reaped=(role == "postgres" and i == 0)) for i, pid in enumerate(ps))
        for role, ps in role_pids(data_dir).items()
    }


async def measure(url: str, data_dir: Path, n: int, conc: int) -> dict[str, dict[str, float]]:
    """Per workload: transitions/s and the CPU ms per 1,000 transitions of each role."""
    async with aiohttp.ClientSession() as http:
        await transitions._wait_ready(http, url)
    key = transitions._api_key(data_dir)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    out: dict[str, dict[str, float]] = {}
    async with aiohttp.ClientSession(headers=headers) as http:
        for name, definition, states in transitions.WORKLOADS:
            before = cpu_by_role(data_dir)  # backends come and go with the pools
            r = await transitions._run_workload(http, url, name, definition, n, conc)
            after = cpu_by_role(data_dir)
            per_1000 = 1000 * 1000 / (n * states)
            out[name] = {"transitions/s": r["executions_per_s"] * states} | {
                role: (after[role] - before[role]) * per_1000 for role in ROLES
            }
    return out


def _print(results: dict[str, dict[str, float]]) -> None:
    print("CPU ms per 1,000 transitions, by role")
    print(f"{'workload':8} {'transitions/s':>14} " + " ".join(f"{role:>9}" for role in ROLES))
    for name, r in results.items():
        cpu = " ".join(f"{r[role]:9.0f}" for role in ROLES)
        print(f"{name:8} {r['transitions/s']:14.1f} {cpu}")


async def _bench(url: str, data_dir: Path, args: argparse.Namespace) -> None:
    rounds = []
    for i in range(args.rounds):
        print(f"-- round {i + 1} of {args.rounds} ({args.n} executions per workload)")
        rounds.append(await measure(url, data_dir, args.n, args.concurrency))
        _print(rounds[-1])
    if len(rounds) > 1:
        print(f"-- median of {len(rounds)} rounds")
        _print(
            {
                name: {k: statistics.median(r[name][k] for r in rounds) for k in rounds[0][name]}
                for name in rounds[0]
            }
        )
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--url", default=None, help="a running steplog dev; default: start one")
    parser.add_argument("--data-dir", default=None, help="the data folder of --url's steplog")
    args = parser.parse_args()
    if args.url:
        if not args.data_dir:
            raise SystemExit("--url needs --data-dir (its processes are found through it)")
        asyncio.run(_bench(args.url, Path(args.data_dir), args))
        return
    port = transitions._free_port()
    with tempfile.TemporaryDirectory(prefix="steplog-cost-") as data:
        env = {
            **os.environ,
            "STEPLOG_DATA_DIR": data,
            "STEPLOG_PORT": str(port),
            "STEPLOG_LOG_LEVEL": "WARNING",
            "STEPLOG_MONITOR_PORT": "0",
            **goal.UNLIMITED,
        }
        env.pop("STEPLOG_DATABASE_URL", None)
        env.pop("STEPLOG_REDIS_URL", None)
        steplog = os.path.join(os.path.dirname(sys.executable), "steplog")
        proc = subprocess.Popen([steplog, "dev"], env=env, stdout=subprocess.DEVNULL)
        try:
            asyncio.run(_bench(f"http://127.0.0.1:{port}", Path(data), args))
        finally:
            proc.terminate()
            proc.wait(timeout=60)


if __name__ == "__main__":
    main()
