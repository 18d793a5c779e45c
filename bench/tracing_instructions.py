"""Benchmark: what tracing costs, in instructions per state transition (callgrind).

A wall-clock or CPU-time ratio on a shared 2-core machine swings with the neighbours'
load; an instruction count does not. This runs ``steplog serve`` (every role in one
process) under valgrind's callgrind, with instrumentation off through start-up, and
drives it from this process (not counted) through the API: per run, a warm-up (what
a process does once, such as its first export, is not a cost per transition), then N
executions of one workload (bench/transitions.py's task3: 3 Tasks on test:echo, or
pass10: a 10-state Pass chain), bounded client concurrency. Instrumentation is
switched on (``callgrind_control --instr=on``) after the warm-up and the count runs
until the process has exited after SIGTERM, so the spans still batched at the end are
exported and counted too. Every thread of the steplog process counts (the span
processor's export thread included); PostgreSQL and Redis do the same work in every
mode and are not counted; neither is the local OTLP/HTTP receiver (as a collector's).
The span export process steplog starts (steplog.export_process) runs under callgrind too
and is counted from the same moment: its instructions are in each total, and shown.

Modes (the standard OTEL_* variables, as an operator would set them):

    off        tracing off (the default)
    sampled    OTEL_TRACES_EXPORTER=otlp, parentbased_traceidratio at 0.1
    on         OTEL_TRACES_EXPORTER=otlp, sampled at 100% (the default sampler)

with OTEL_BSP_SCHEDULE_DELAY=600000: a batch leaves when 512 spans wait, as at any
real rate, instead of every 5 s of a run that callgrind makes ~50 times longer.

The idle roles poll on wall-clock timers (about 7M instructions a second here), and a
run under callgrind lasts minutes, longer on a loaded machine and a little longer with
tracing: ``--idle`` (default 30 s) first measures that cost per second with two idle
runs and prints each figure also less it, for the seconds the run was counted.

Prints instructions per transition per mode and workload and the ratio to "off".
Optionally keeps the callgrind files (``--keep DIR``) for callgrind_annotate.

    .venv/bin/python bench/tracing_instructions.py [-n 100] [--concurrency 8]
        [--modes off,sampled,on] [--workloads task3,pass10] [--idle 30] [--keep DIR]
        [--source DIR] [--cprofile] [--repeat 1]

Run by hand (20-30 minutes on a loaded 2-core machine); never part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.tracing import ENDED, export_process, otlp_receiver, wait_idle
from bench.transitions import PASS_10, TASK_3
from engine.core.events import TERMINAL_EVENT_TYPES
from steplog.datadir import local_servers
from tests.serving import free_port

# workload -> (definition, transitions per execution, executions to warm up). With tracing
# on the warm-up makes a multiple of 512 spans, so that it exports whole batches and leaves
# none to be exported, and counted, in the run: 512 executions make 512 times the spans of
# one, however many that is (task3 makes 11, pass10 3).
WORKLOADS = {"task3": (TASK_3, 3, 512), "pass10": (PASS_10, 10, 512)}
MODES = ("off", "sampled", "on")
ROOT = Path(__file__).resolve().parents[1]
SERVE = "from steplog.cli import main; raise SystemExit(main(['serve']))"
# With --cprofile: the same server under cProfile (its main thread), stats at exit.
# Profiling starts at SIGUSR1 (where the instruction count would).
PROFILED = (
    "import cProfile, signal, sys, time; from steplog.cli import main; p = cProfile.Profile(time.thread_time); "
    "signal.signal(signal.SIGUSR1, lambda *a: p.enable()); code = main(['serve']); "
    "p.disable(); p.dump_stats(sys.argv[1]); raise SystemExit(code)"
)


# Whether the relay and every projector have applied every event (in the global order,
# (tx_id, position)).
SETTLED = """
SELECT NOT EXISTS (
    SELECT 1 FROM (
        SELECT tx_id, position FROM projection_checkpoints
        UNION ALL SELECT tx_id, position FROM relay_checkpoint
    ) c
    WHERE EXISTS (SELECT 1 FROM events e WHERE (e.tx_id, e.position) > (c.tx_id, c.position))
)"""


def _environment(
    mode: str, db_url: str, redis_url: str, port: int, endpoint: str, index: int
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "STEPLOG_"))}
    env.update(
        STEPLOG_DATABASE_URL=db_url,
        STEPLOG_REDIS_URL=redis_url,
        STEPLOG_PORT=str(port),
        STEPLOG_AUTH="off",  # the loopback bench's client is the anonymous admin
        STEPLOG_REDIS_PREFIX=f"cg{index}",
        STEPLOG_LOG_LEVEL="WARNING",
    )
    if mode != "off":
        env.update(
            OTEL_TRACES_EXPORTER="otlp",
            OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=endpoint,
            # A batch is exported when 512 spans wait (as at any real rate with tracing
            # on), not every 5 s: under callgrind a run lasts ~50 times longer, and a
            # POST every 5 s would be counted as a cost per span.
            OTEL_BSP_SCHEDULE_DELAY="600000",
        )
    if mode == "sampled":
        env.update(OTEL_TRACES_SAMPLER="parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG="0.1")
    return env


async def _wait_ready(
    http: aiohttp.ClientSession, url: str, proc: asyncio.subprocess.Process
) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise RuntimeError(f"steplog exited with {proc.returncode} before it was ready")
        try:
            async with http.get(url + "/health/ready") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(1)
    raise RuntimeError("steplog under callgrind was not ready in 5 minutes")


async def _control(pid: int, *args: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        "callgrind_control", *args, str(pid), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"callgrind_control {args}: {out.decode()}")


def _totals(out_file: Path) -> list[int]:
    """The instructions of each thread (callgrind writes a file per thread, -NN)."""
    totals = []
    for part in sorted(out_file.parent.glob(out_file.name + "-*")):
        text = part.read_text(errors="replace")
        match = re.search(r"^(?:totals|summary): (\d+)", text, re.MULTILINE)
        if match is None:
            raise RuntimeError(f"no totals in {part}")
        totals.append(int(match.group(1)))
    if not totals:
        raise RuntimeError(f"no callgrind files {out_file}-*")
    return totals


async def _execute(
    http: aiohttp.ClientSession,
    pool: asyncpg.Pool,
    url: str,
    name: str,
    prefix: str,
    n: int,
    conc: int,
) -> None:
    """Start ``n`` executions of workflow ``name`` and wait until all have ended."""
    sem = asyncio.Semaphore(conc)

    async def start(i: int) -> None:
        # Named, so a start sent again (a 503 from a statement timed out under
        # callgrind's slowness) starts nothing twice.
        body = {"name": f"{prefix}{i}", "input": {"i": i}}
        async with sem:
            for _ in range(10):
                async with http.post(f"{url}/v1/workflows/{name}/executions", json=body) as resp:
                    if resp.status in (200, 201):
                        return
                    assert resp.status == 503, await resp.text()
                await asyncio.sleep(1)
            raise RuntimeError(f"could not start execution {prefix}{i}")

    before = await pool.fetchval(ENDED, name, list(TERMINAL_EVENT_TYPES))
    await asyncio.gather(*(start(i) for i in range(n)))
    while True:
        if await pool.fetchval(ENDED, name, list(TERMINAL_EVENT_TYPES)) >= before + n:
            break
        await asyncio.sleep(0.2)
    # And until the relay and every projector have caught up: the work of these
    # executions' events is theirs (a warm-up's left to the run was counted in it, and
    # moved a run's count by up to a third).
    deadline = time.monotonic() + 120
    while not await pool.fetchval(SETTLED):
        if time.monotonic() > deadline:
            # Counted anyway, but not silently: the figure includes a backlog.
            print("  (the relay or a projector had not caught up in 2 minutes)", flush=True)
            break
        await asyncio.sleep(0.2)


async def _run(
    mode: str,
    workload: str,
    db_url: str,
    redis_url: str,
    pool: asyncpg.Pool,
    endpoint: str,
    out_dir: Path,
    n: int,
    conc: int,
    index: int,
    profile: bool,
    source: Path,
    idle_s: float = 0.0,
) -> tuple[list[int], int, float]:
    """Instructions of each thread of one steplog process running ``n`` executions of
    ``workload``, then idle ``idle_s`` seconds, then stopping (with ``profile``: its
    cProfile statistics in a file instead, and none), those of its span export process
    (0 without one) and the seconds counted."""
    port = free_port()
    out_file = out_dir / f"callgrind.{mode}.{workload}.{index}"
    if profile:
        command = [sys.executable, "-c", PROFILED, str(out_dir / f"prof.{mode}.{workload}")]
    else:
        command = [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            "--separate-threads=yes",
            # (and the span export process steplog starts: what tracing costs it counts)
            "--trace-children=yes",
            f"--callgrind-out-file={out_file}.%p",
            sys.executable,
            "-c",
            SERVE,
        ]
    proc = await asyncio.create_subprocess_exec(
        *command,
        env=_environment(mode, db_url, redis_url, port, endpoint, index),
        cwd=source,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    name = f"{workload}-{index}"
    definition = WORKLOADS[workload][0]
    timeout = aiohttp.ClientTimeout(total=600)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as http:
            await _wait_ready(http, url, proc)
            async with http.put(
                f"{url}/v1/workflows/{name}", json={"definition": definition}
            ) as resp:
                assert resp.status in (200, 201), await resp.text()
            # Warm up uncounted: what runs once per process (the first export's set-up,
            # caches filled on first use) is not a cost per transition.
            await _execute(http, pool, url, name, "warm", WORKLOADS[workload][2], conc)
            exporter = export_process(proc.pid)
            if exporter is not None:
                # Until it has sent the warm-up's spans (under callgrind it lags behind).
                await asyncio.to_thread(wait_idle, exporter, 1.0, 300.0)
            if profile:
                proc.send_signal(signal.SIGUSR1)
            else:
                await _control(proc.pid, "--instr=on")
                if exporter is not None:
                    await _control(exporter, "--instr=on")
            counting = time.monotonic()
            await _execute(http, pool, url, name, "e", n, conc)
            await asyncio.sleep(idle_s)
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 180)  # (see docs/observability.md)
        seconds = time.monotonic() - counting
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if profile:
        return [], 0, seconds
    exported = 0 if exporter is None else sum(_totals(Path(f"{out_file}.{exporter}")))
    return _totals(Path(f"{out_file}.{proc.pid}")), exported, seconds


async def _bench(
    n: int,
    conc: int,
    modes: list[str],
    workloads: list[str],
    keep: Path | None,
    profile: bool,
    source: Path,
    idle_s: float,
    repeat: int = 1,
) -> None:
    with tempfile.TemporaryDirectory(prefix="steplog-bench-cg-") as folder:
        data = Path(folder) / "data"
        out_dir = keep or Path(folder) / "out"
        out_dir.mkdir(parents=True, exist_ok=True)
        # (mode, workload) -> per run: (instructions, of the other threads, of the span
        # export process, seconds counted)
        figures: dict[tuple[str, str], list[tuple[int, int, int, float]]] = {}
        async with local_servers(data, own=True) as (db_url, redis_url):
            pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
            try:
                with otlp_receiver() as endpoint:
                    index = 0

                    async def run(mode: str, workload: str, n: int, idle: float) -> None:
                        nonlocal index
                        index += 1
                        began = time.monotonic()
                        threads, exported, seconds = await _run(
                            mode,
                            workload,
                            db_url,
                            redis_url,
                            pool,
                            endpoint,
                            out_dir,
                            n,
                            conc,
                            index,
                            profile,
                            source,
                            idle,
                        )
                        label = workload if n else f"idle {idle:.0f} s"
                        if profile:
                            print(f"  {label:7} {mode:8} profiled", flush=True)
                            return
                        total = sum(threads) + exported
                        figures.setdefault((mode, label), []).append(
                            (total, total - max(threads) - exported, exported, seconds)
                        )
                        print(
                            f"  {label:7} {mode:8} {total:>15,} instructions in {seconds:.0f} s"
                            f" counted, by thread {threads}, export process {exported:,}"
                            f" ({time.monotonic() - began:.0f} s)",
                            flush=True,
                        )

                    if idle_s and not profile:
                        # What the idle roles cost per second (their polls): the same in
                        # every mode, and a run counts it for as long as it lasts, which
                        # callgrind stretches ~50 times and tracing a little more.
                        await run("off", workloads[0], 0, 5.0)
                        await run("off", workloads[0], 0, 5.0 + idle_s)
                    # Rounds of every mode in turn: a run's count moves by a few percent
                    # with how its work happened to batch; medians tell more than one run.
                    for _ in range(repeat):
                        for workload in workloads:
                            for mode in modes:
                                await run(mode, workload, n, 0.0)
            finally:
                await pool.close()
    if profile:
        print(f"cProfile statistics in {out_dir}")
        return
    rate = 0.0
    if idle_s:
        short, long = figures["off", "idle 5 s"][0], figures["off", f"idle {5 + idle_s:.0f} s"][0]
        rate = (long[0] - short[0]) / (long[3] - short[3])
        print(f"\nidle: {rate:,.0f} instructions per second counted")
    print(f"\n{n} executions per run, concurrency {conc}; instructions per transition")
    print(
        f"{'workload':8} {'mode':8} {'instr/tr':>12} {'vs off':>7} {'other threads':>14}"
        f" {'export proc':>12} {'seconds':>8} {'less idle':>12} {'vs off':>7}"
    )
    for workload in workloads:
        states = WORKLOADS[workload][1]
        offs = figures.get(("off", workload), [])
        for mode in modes:
            ratios: list[float] = []
            for i, (total, others, exported, seconds) in enumerate(figures[mode, workload]):
                off = offs[i] if i < len(offs) else None
                busy = total - rate * seconds
                ratio = f"{total / off[0]:7.3f}" if off else "      -"
                busy_ratio = f"{busy / (off[0] - rate * off[3]):7.3f}" if off else "      -"
                if off:
                    ratios.append(busy / (off[0] - rate * off[3]))
                print(
                    f"{workload:8} {mode:8} {total / (n * states):12,.0f} {ratio}"
                    f" {others / (n * states):14,.0f} {exported / (n * states):12,.0f}"
                    f" {seconds:8.0f}"
                    f" {busy / (n * states):12,.0f} {busy_ratio}"
                )
            if repeat > 1 and ratios:
                print(
                    f"{workload:8} {mode:8} median of {len(ratios)} rounds, less idle, vs off:"
                    f" {statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma separated, of {MODES}")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help=f"of {tuple(WORKLOADS)}")
    parser.add_argument("--keep", type=Path, default=None, help="keep the callgrind files here")
    parser.add_argument(
        "--idle",
        type=float,
        default=30.0,
        help="first measure what the idle roles cost per second (two idle runs, 5 and 5 +"
        " IDLE seconds) and print the figures less that cost for the seconds each run was"
        " counted (0: skip)",
    )
    parser.add_argument(
        "--source",
        type=Path,
        default=ROOT,
        help="run the steplog of this source folder (e.g. `git archive` of an older commit,"
        " for a before/after table); default: this checkout",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds of every mode in turn; with more than one, also the median ratio",
    )
    parser.add_argument(
        "--cprofile",
        action="store_true",
        help="run the server under cProfile instead (no counts; statistics kept in --keep)",
    )
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if any(m not in MODES for m in modes) or any(w not in WORKLOADS for w in workloads):
        parser.error(f"--modes of {MODES}, --workloads of {tuple(WORKLOADS)}")
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        parser.error("needs valgrind (callgrind, callgrind_control) on PATH")
    source = args.source.resolve()
    if not (source / "steplog" / "cli.py").is_file():
        parser.error(f"--source: no steplog source in {source}")
    asyncio.run(
        _bench(
            args.n,
            args.concurrency,
            modes,
            workloads,
            args.keep,
            args.cprofile,
            source,
            args.idle,
            args.repeat,
        )
    )


if __name__ == "__main__":
    main()
