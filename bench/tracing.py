"""Benchmark: what tracing costs, in CPU per state transition and transitions per second.

Each round runs in a new interpreter (this file with ``--one-round``) on embedded
PostgreSQL and Redis of its own under a new temporary folder, so that every round
starts as the first did: no heap, caches or tables left by the rounds before (in one
process on one database, the same mode slowed by a tenth from the first round to the
fourth, and the mode run later in a cycle paid for it). The round runs every role in
its process (steplog.app.open_resources + run_roles) and drives it through the API: N
executions of a 3-Task workflow (test:echo) and of a 10-state Pass chain, bounded
client concurrency, until every one has ended (its terminal event is in PostgreSQL).
Modes, interleaved round by round in an order rotated each cycle, so that the
machine's drift falls on all of them alike:

    off        tracing off (the default: no tracer anywhere)
    on         tracing on, sampled at 100%, as steplog ships it: steplog's own
               spans, batched (BatchSpanProcessor, the SDK's defaults) and handed
               to the export process (steplog.export_process), which encodes each
               batch as OTLP/HTTP protobuf and POSTs it to a local receiver that
               discards it (a subprocess; its CPU, like a collector's, is not
               counted; the export process's is, in "all", not in "own")
    in-process as "on", the exporter in this process (STEPLOG_TRACE_EXPORT_IN_PROCESS=true):
               its thread encodes each batch and POSTs it
    discard    the same spans, batched to an exporter that discards them unencoded:
               what making the spans costs, without the export
    sampled    as "on", sampling 10% of the traces (parentbased_traceidratio 0.1)
    drivers    the same as "on" with the asyncpg and Redis instrumentations
               (STEPLOG_TRACE_DRIVERS=true)

Prints, per mode and workload, the median over rounds of:
- CPU milliseconds per transition (utime + stime from /proc) of this process (every
  thread: the exporter's included, and the client's requests, the same in every mode)
  plus the embedded PostgreSQL (postmaster, its backends, the backends that ended) and
  Redis: what the machine spent on the work, the figure that load from other work
  disturbs least; with its spread (min-max) and ratio to "off";
- transitions/s (wall clock) and its ratio to "off" (on a saturated machine the two
  ratios agree; on a shared one the wall clock swings with the neighbours' load);
- spans exported per execution;
- per mode, the ratios to "off" within each cycle (every mode runs once per cycle,
  next to the others): their median and spread, for the CPU per transition of all,
  of this process and of this process's system time alone (the kernel's share: pipe
  writes, thread wake-ups, sockets), and for transitions/s;
- how the process did the work, per transition: the event loop thread's CPU (what
  bounds transitions/s: the roles and the client run on it, the span processor's
  thread does not), the commands Redis served and the transactions PostgreSQL
  committed (fewer per transition: larger batches; their ratios to "off" say whether
  tracing changed how the roles batch);
- what tracing off still does per transition, timed alone (`_off_path`): the
  `tracer is None` tests of the roles and the API's look-up of the request's trace
  context, as an upper bound, against the CPU per transition of "off".

Each round first runs ``--warmup`` executions of each workload (300 by default), then
measures: a process's first requests, decisions, spans and batches are paid once.

``--paired PAIRS`` measures another way (`_paired`): "off" and one other mode side by
side in one interpreter, each a steplog on servers of its own, given phases of ``-n``
executions in turns, a few seconds apart, so that the machine's drift (which here moves
a mode's transitions/s by more than the budget between rounds a minute apart) falls on
both sides of each pair's ratio. It prints, per workload, the median and quartiles of the
pairs' ratios, and for transitions/s two 95% bootstrap intervals (the pairs resampled):
of the median of the pairs' ratios (which a pair's stall moves least) and of the ratio
over all pairs (every phase weighed by its length). ``--workloads task3`` runs one
workload (a longer run in the same time).

    .venv/bin/python bench/tracing.py [-n 300] [--rounds 3] [--concurrency 32]
        [--modes off,on,discard,sampled,drivers] [--rate TRANSITIONS_PER_S]
        [--warmup 300]
    .venv/bin/python bench/tracing.py --modes off,on --paired 120 -n 500 --workloads task3

With ``--rate`` each workload's starts are offered open-loop at that many transitions/s
(of its states: task3 at 1,000 is 333 starts/s) instead of as fast as the clients can
send them: every mode then does the same work at the same pace, so its CPU per
transition is what tracing adds at equal load (its transitions/s is the rate). At
full speed a mode that slows the process also changes how the roles batch their
work (fewer triggers per append, fewer events per publish), which moves the CPU per
transition as well.

Run by hand; never part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import asyncpg
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from api.middleware import request_traceparent
from bench import goal
from bench.transitions import PASS_10, TASK_3
from engine.core.events import TERMINAL_EVENT_TYPES
from steplog.app import open_resources, run_roles
from steplog.datadir import local_servers
from steplog.heap import freeze_heap
from steplog.otlp import LeanOtlpHttpExporter
from steplog.settings import Settings
from steplog.span_export import ChildProcessExporter
from steplog.tracing import InsideTraces, instrument_drivers
from tests.serving import free_port

T = TypeVar("T")
WORKLOADS = [("task3", TASK_3, 3), ("pass10", PASS_10, 10)]
MODES = ("off", "on", "in-process", "discard", "sampled", "drivers")
TICKS = os.sysconf("SC_CLK_TCK")

# A local OTLP/HTTP receiver: answers every POST with an empty 200 (a valid
# ExportTraceServiceResponse) and discards the body. HTTP/1.1, keeping the connection
# open as a collector does (the exporter's session reuses it: an HTTP/1.0 receiver had
# it connect again for every batch).
RECEIVER = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


class _Counting(SpanExporter):
    """Counts the spans an exporter (the class after this one in the bases) exported,
    each batch asserted a success."""

    spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = super().export(spans)
        assert result is SpanExportResult.SUCCESS, result
        self.spans += len(spans)
        return result


class CountingOtlpExporter(_Counting, LeanOtlpHttpExporter):
    """steplog's OTLP/HTTP exporter (protobuf encoding, a POST per batch), counting spans."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(endpoint=endpoint)


class CountingChildExporter(_Counting, ChildProcessExporter):
    """The export process's exporter (what steplog uses by default), counting spans; the
    child sends to the endpoint the environment names (set by `_bench`)."""

    def __init__(self, endpoint: str) -> None:
        super().__init__("http/protobuf")


class DiscardingExporter(CountingOtlpExporter):
    """Counts the spans and sends nothing (no encoding either). It takes the records
    steplog's spans end as, as the export process's exporter does."""

    takes_records = True

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


@contextmanager
def otlp_receiver() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", RECEIVER, str(port)])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/v1/traces"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds of the process and its reaped children)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # fields[0] is the state (field 3); utime, stime, cutime, cstime are fields 14-17.
    return int(fields[1]), sum(int(x) for x in fields[11:15]) / TICKS


def wait_idle(pid: int, interval: float = 0.2, timeout: float = 30.0) -> None:
    """Until process ``pid`` has used no CPU for ``interval`` seconds (or ``timeout``
    has passed, or it is gone): e.g. the span export process done with its imports, or
    with the batches it was sent. Start-up, paid once per process, is not what a
    workload's spans cost."""
    last, deadline = -1.0, time.monotonic() + timeout
    while time.monotonic() < deadline and (st := _stat(pid)) is not None:
        if st[1] == last:
            return
        last = st[1]
        time.sleep(interval)


_EXPORT_PROCESS_MODULES = ("steplog.export_process", "steplog.span_export")


def export_process(pid: int) -> int | None:
    """The span export process (steplog.export_process; steplog.span_export before
    session 18, for `--source` of an older commit) that process ``pid`` started."""
    for entry in os.listdir("/proc"):
        if (
            entry.isdigit()
            and (st := _stat(int(entry))) is not None
            and st[0] == pid
            and any(m in _cmdline(int(entry)) for m in _EXPORT_PROCESS_MODULES)
        ):
            return int(entry)
    return None


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class CpuMeter:
    """CPU seconds (user + system) of this process and of the embedded servers under
    ``folder``: the processes whose command line names it (the postmaster, redis-server)
    and all their descendants (PostgreSQL's backends and workers); a child that ended is
    in its parent's cutime/cstime once reaped, which the postmaster does at once."""

    def __init__(self, folder: Path) -> None:
        self._folder = str(folder)
        self._roots: set[int] = set()

    def _find_roots(self) -> set[int]:
        me = os.getpid()
        roots = {me}
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != me and self._folder in _cmdline(int(entry)):
                roots.add(int(entry))
        return roots

    def read(self) -> tuple[float, float, float]:
        """(this process, this process + servers + span export process, the span export
        process alone), in CPU seconds."""
        if len(self._roots) < 3:  # this process, the postmaster, redis
            self._roots = self._find_roots()
        stats: dict[int, tuple[int, float]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit() and (st := _stat(int(entry))) is not None:
                stats[int(entry)] = st
        children: dict[int, list[int]] = {}
        for pid, (ppid, _) in stats.items():
            children.setdefault(ppid, []).append(pid)
        me = os.getpid()
        own = time.process_time()  # this process's threads, not its children (the receiver)
        total = own
        # The servers, and the span export process (a child of this one, as of steplog's).
        exporters = [
            pid
            for pid in children.get(me, [])
            if any(m in _cmdline(pid) for m in _EXPORT_PROCESS_MODULES)
        ]
        export = sum(stats[pid][1] for pid in exporters)
        todo = [r for r in self._roots if r != me] + exporters
        while todo:
            pid = todo.pop()
            if pid in stats:
                total += stats[pid][1]
                todo.extend(children.get(pid, []))
        return own, total, export


# Executions of a workflow that have ended, read from the event store itself (the read
# models may lag behind: a listing of RUNNING ones can be empty too early).
ENDED = """
SELECT count(*) FROM events e JOIN executions x USING (execution_id)
WHERE x.workflow = $1 AND e.type = ANY($2::text[])"""


async def _workload(
    http: aiohttp.ClientSession,
    pool: asyncpg.Pool,
    redis: Any,
    meter: CpuMeter,
    url: str,
    name: str,
    definition: Any,
    n: int,
    conc: int,
    rate: float = 0.0,
) -> tuple[float, float, float, float, float, dict[str, float]]:
    """Seconds from the first start to the last execution's end, and the CPU seconds
    this process, this process with the servers and the span export process alone spent
    meanwhile, and of this process's the kernel's share (system time: its pipe writes,
    its threads' wake-ups, its sockets); and what tells how the process did the work
    (`_counts`). With ``rate`` the starts are offered open-loop
    at that many per second (start i sent at i / rate, at most ``conc`` in flight), else
    as fast as ``conc`` clients can send them."""
    async with http.put(f"{url}/v1/workflows/{name}", json={"definition": definition}) as resp:
        assert resp.status in (200, 201), await resp.text()
    sem = asyncio.Semaphore(conc)

    async def start(i: int) -> None:
        # Named, so that a start sent again after a connection reset (a loaded machine)
        # starts nothing twice.
        body = {"name": f"e{i}", "input": {"i": i}}
        if rate and (due := began + i / rate - time.perf_counter()) > 0:
            await asyncio.sleep(due)
        async with sem:
            for _ in range(5):
                try:
                    async with http.post(
                        f"{url}/v1/workflows/{name}/executions", json=body
                    ) as resp:
                        assert resp.status in (200, 201), await resp.text()
                        return
                except aiohttp.ClientOSError:
                    await asyncio.sleep(0.1)
            raise RuntimeError(f"could not start execution {i}")

    counts0 = await _counts(pool, redis)
    own0, all0, export0 = meter.read()
    kernel0 = os.times().system
    began = time.perf_counter()
    await asyncio.gather(*(start(i) for i in range(n)))
    while True:
        if await pool.fetchval(ENDED, name, list(TERMINAL_EVENT_TYPES)) >= n:
            break
        await asyncio.sleep(0.02)
    elapsed = time.perf_counter() - began
    own1, all1, export1 = meter.read()
    kernel = os.times().system - kernel0
    counts = {k: v - counts0[k] for k, v in (await _counts(pool, redis)).items()}
    return elapsed, own1 - own0, all1 - all0, export1 - export0, kernel, counts


async def _counts(pool: asyncpg.Pool, redis: Any) -> dict[str, float]:
    """What tells how the process did its work, as totals to subtract: the event loop's
    thread's CPU seconds (what bounds transitions/s: the roles and the client run on
    it; the span processor's thread does not), the commands Redis served (fewer per
    transition: larger batches), and the transactions PostgreSQL committed (as its
    statistics have them: flushed within a second)."""
    info = await redis.info("commandstats")
    commits = await pool.fetchval(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
    )
    return {
        "loop-ms": time.thread_time() * 1000,
        "redis": float(sum(v["calls"] for v in info.values())),
        "commits": float(commits),
    }


def _settings(db_url: str, redis_url: str, data: Path, index: int) -> Settings:
    return Settings(
        database_url=db_url,
        redis_url=redis_url,
        data_dir=data,
        port=free_port(),
        redis_prefix=f"bench{index}",
        log_level="WARNING",
        auth=False,  # the loopback bench's client is the anonymous admin
        # Capacity, not the rate limits that protect a deployment (bench/goal.py).
        rate_limits=goal.UNLIMITED["STEPLOG_RATE_LIMITS"],
        key_rate_limits=goal.UNLIMITED["STEPLOG_KEY_RATE_LIMITS"],
    )


def _provider(
    mode: str, endpoint: str
) -> tuple[TracerProvider, CountingOtlpExporter | CountingChildExporter, Callable[[], None]]:
    """The tracer provider of a mode other than "off", its exporter, and what undoes the
    drivers' instrumentation ("drivers")."""
    kind = {"discard": DiscardingExporter, "in-process": CountingOtlpExporter}.get(
        mode, CountingChildExporter
    )
    exporter = kind(endpoint)
    sampler = ParentBased(TraceIdRatioBased(0.1)) if mode == "sampled" else ALWAYS_ON
    provider = TracerProvider(sampler=InsideTraces(sampler), shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    undo: Callable[[], None] = lambda: None  # noqa: E731
    if mode == "drivers":
        undo = instrument_drivers(provider)
    return provider, exporter, undo


async def _round(
    mode: str,
    db_url: str,
    redis_url: str,
    data: Path,
    meter: CpuMeter,
    endpoint: str,
    n: int,
    conc: int,
    index: int,
    rate: float = 0.0,
    warmup: int = 0,
) -> dict[str, float]:
    """Figures per workload in one mode, after ``warmup`` executions of each."""
    settings = _settings(db_url, redis_url, data, index)
    exporter: CountingOtlpExporter | CountingChildExporter | None = None
    provider: TracerProvider | None = None
    undo: Callable[[], None] = lambda: None  # noqa: E731
    if mode != "off":
        provider, exporter, undo = _provider(mode, endpoint)
    results: dict[str, float] = {}
    stop, ready = asyncio.Event(), asyncio.Event()
    try:
        async with open_resources(settings, db_url, redis_url, tracer_provider=provider) as r:
            task = asyncio.create_task(run_roles(r, stop, ready=ready))
            await asyncio.wait_for(ready.wait(), 30)
            freeze_heap()  # as `steplog serve` does once its roles run
            if isinstance(exporter, CountingChildExporter) and exporter._child is not None:
                wait_idle(exporter._child.pid)
            url = f"http://{settings.host}:{settings.port}"
            try:
                async with aiohttp.ClientSession() as http:
                    if warmup:
                        # What a process does once (its first requests, decisions, spans
                        # and batches) is not what each transition costs.
                        for name, definition, _ in WORKLOADS:
                            await _workload(
                                http,
                                r.pool,
                                r.redis,
                                meter,
                                url,
                                f"{name}-{index}-warm",
                                definition,
                                warmup,
                                conc,
                            )
                        if provider is not None:
                            provider.force_flush()
                        if isinstance(exporter, CountingChildExporter) and exporter._child:
                            wait_idle(exporter._child.pid, interval=0.05)
                        await _settle()
                    for name, definition, states in WORKLOADS:
                        before = exporter.spans if exporter is not None else 0
                        elapsed, own, total, export, kernel, counts = await _workload(
                            http,
                            r.pool,
                            r.redis,
                            meter,
                            url,
                            f"{name}-{index}",
                            definition,
                            n,
                            conc,
                            rate / states,
                        )
                        results[name] = n * states / elapsed
                        results[f"{name}/own-ms"] = own * 1000 / (n * states)
                        results[f"{name}/own-sys-ms"] = kernel * 1000 / (n * states)
                        results[f"{name}/all-ms"] = total * 1000 / (n * states)
                        for key, value in counts.items():
                            results[f"{name}/{key}"] = value / (n * states)
                        if mode != "off":
                            results[f"{name}/export-ms"] = export * 1000 / (n * states)
                        if provider is not None and exporter is not None:
                            provider.force_flush()  # (the registration's request span in)
                            results[f"{name}/spans"] = (exporter.spans - before) / n
            finally:
                stop.set()
                await asyncio.wait_for(task, 60)
    finally:
        undo()
        if provider is not None:
            provider.shutdown()
    return results


# With tracing off, what a transition still runs of tracing: each role tests `tracer is
# None` once per trigger decided (engine: 2, the command side's append: 1), task run
# (worker: 1), relay batch (at most one per event: an execution's transition records
# 1-3 events) and heartbeat; 12 per transition is a generous bound. And each start asks
# api.middleware.request_traceparent() for the request's span (none: ""), at most one
# per transition (a 1-state execution).
CHECKS_PER_TRANSITION = 12


def _off_path() -> tuple[float, float]:
    """Seconds per `tracer is None` test (the loop's own overhead included) and per
    request_traceparent() outside any span, the fastest of 5 repeats."""
    n = 1_000_000
    check = min(timeit.repeat("if tracer is None: pass", globals={"tracer": None}, number=n))
    lookup = min(timeit.repeat(request_traceparent, number=n // 10)) / (n // 10)
    return check / n, lookup


def _spread(values: list[float]) -> str:
    return f"{min(values):.3f}-{max(values):.3f}"


async def _one_round(
    mode: str, n: int, conc: int, index: int, rate: float, warmup: int = 0
) -> dict[str, float]:
    """One round of ``mode`` on servers of its own (embedded PostgreSQL and Redis in a
    new temporary folder) and a receiver of its own: the round `_bench` runs in a child
    interpreter (``--one-round``)."""
    with tempfile.TemporaryDirectory(prefix="steplog-bench-trace-") as folder:
        data = Path(folder)
        meter = CpuMeter(data)
        async with local_servers(data, own=True) as (db_url, redis_url):
            with otlp_receiver() as endpoint:
                # (read by the span export process, which inherits the environment)
                os.environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = endpoint
                return await _round(
                    mode, db_url, redis_url, data, meter, endpoint, n, conc, index, rate, warmup
                )


def _round_in_child(
    mode: str, n: int, conc: int, index: int, rate: float, warmup: int
) -> dict[str, float]:
    """`_one_round` in a new interpreter (why: the module's docstring), its figures read
    from the last line it prints."""
    argv = [sys.executable, __file__, "--one-round", mode, "-n", str(n)]
    argv += ["--concurrency", str(conc), "--index", str(index), "--rate", str(rate)]
    argv += ["--warmup", str(warmup), "--workloads", ",".join(w[0] for w in WORKLOADS)]
    done = subprocess.run(argv, stdout=subprocess.PIPE, text=True, check=True)
    results: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return results


async def _paired(mode: str, n: int, pairs: int, conc: int) -> None:
    """``--paired``: "off" and ``mode`` side by side in this one interpreter, each a
    steplog (every role, `open_resources` + `run_roles`) on embedded servers of its own,
    given the same workload in turns: a phase of ``n`` executions to one, then to the
    other (the first of each pair alternating), ``pairs`` times per workload after one
    pair of warm-up. The steplog not given a phase idles beside the one that works, in
    both modes alike.

    Why: between rounds in new interpreters (`_bench`) this machine's speed drifts by
    more than the budget (one cycle's two rounds are a minute apart); a pair of phases
    here is a few seconds apart, on one heap, so the drift falls on both sides of each
    ratio. What it cannot show is what a new interpreter shows: the heap and tables as a
    deployment's first minutes have them (both steplogs grow alike here)."""
    with tempfile.TemporaryDirectory(prefix="steplog-bench-paired-") as folder:
        async with (
            local_servers(Path(folder) / "off", own=True) as (db_off, redis_off),
            local_servers(Path(folder) / mode, own=True) as (db_on, redis_on),
        ):
            with otlp_receiver() as endpoint:
                os.environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = endpoint
                sides = {
                    "off": (db_off, redis_off, Path(folder) / "off"),
                    mode: (db_on, redis_on, Path(folder) / mode),
                }
                async with _steplogs(sides, endpoint) as running:
                    freeze_heap()
                    await _paired_phases(running, mode, n, pairs, conc)


@dataclass
class _Side:
    """One steplog of `_paired`: its resources, its API's URL, the CPU meter of its
    servers, and (tracing on) its tracer provider and exporter."""

    resources: Any
    url: str
    meter: CpuMeter
    provider: TracerProvider | None = None
    exporter: Any = None


@asynccontextmanager
async def _steplogs(
    sides: dict[str, tuple[str, str, Path]], endpoint: str
) -> AsyncIterator[dict[str, _Side]]:
    """Each side's steplog, running."""
    running: dict[str, _Side] = {}
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    async with AsyncExitStack() as stack:
        for index, (mode, (db_url, redis_url, data)) in enumerate(sides.items(), 1):
            provider, exporter = None, None
            if mode != "off":
                provider, exporter, undo = _provider(mode, endpoint)
                stack.callback(provider.shutdown)
                stack.callback(undo)
            settings = _settings(db_url, redis_url, data, index)
            r = await stack.enter_async_context(
                open_resources(settings, db_url, redis_url, tracer_provider=provider)
            )
            ready = asyncio.Event()
            tasks.append(asyncio.create_task(run_roles(r, stop, ready=ready)))
            await asyncio.wait_for(ready.wait(), 30)
            url = f"http://{settings.host}:{settings.port}"
            running[mode] = _Side(r, url, CpuMeter(data), provider, exporter)
        try:
            yield running
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 60)


async def _settle(interval: float = 0.1, busy: float = 0.05) -> None:
    """Until this process's threads use less than ``busy`` of a core over ``interval``
    seconds: what a phase left behind (its projections catching up, its relay and
    acknowledgements) done before the next phase, not in it."""
    while True:
        before = time.process_time()
        await asyncio.sleep(interval)
        if time.process_time() - before < busy * interval:
            return


_PAIRED = ("tr/s", "loop CPU/tr", "own CPU/tr", "all CPU/tr", "Redis commands/tr")


async def _paired_phases(
    running: dict[str, _Side], mode: str, n: int, pairs: int, conc: int
) -> None:
    """The phases of `_paired`, and what they show: per pair, ``mode`` / off of
    transitions/s, the event loop thread's CPU per transition, this process's, this
    process's with the side's servers and the span export process, and Redis commands
    per transition."""
    async with aiohttp.ClientSession() as http:
        for name, definition, states in WORKLOADS:
            ratios: dict[str, list[float]] = {key: [] for key in _PAIRED}
            seconds: dict[str, list[float]] = {side: [] for side in running}  # per phase
            spans = 0.0
            for pair in range(pairs + 1):
                figures = {}
                for side in ["off", mode] if pair % 2 else [mode, "off"]:
                    s = running[side]
                    before = s.exporter.spans if s.exporter is not None else 0
                    elapsed, own, total, _, _, counts = await _workload(
                        http,
                        s.resources.pool,
                        s.resources.redis,
                        s.meter,
                        s.url,
                        f"{name}-{side}-{pair}",
                        definition,
                        n,
                        conc,
                    )
                    if s.provider is not None:
                        # What is left of the phase's spans leaves now, not in the
                        # other side's phase.
                        s.provider.force_flush()
                        spans = (s.exporter.spans - before) / n
                        if (child := getattr(s.exporter, "_child", None)) is not None:
                            wait_idle(child.pid, interval=0.05)
                    await _settle()
                    transitions = n * states
                    figures[side] = (
                        transitions / elapsed,
                        counts["loop-ms"] / transitions,
                        own * 1000 / transitions,
                        total * 1000 / transitions,
                        counts["redis"] / transitions,
                    )
                    if pair:  # (the first pair warms both up)
                        seconds[side].append(elapsed)
                if pair:
                    for key, a, b in zip(_PAIRED, figures[mode], figures["off"], strict=True):
                        ratios[key].append(a / b)
                    shown = ", ".join(f"{key} {ratios[key][-1]:.3f}" for key in _PAIRED)
                    print(f"  {name} pair {pair}, {mode} / off: {shown}", flush=True)
            pairs_seconds = list(zip(seconds["off"], seconds[mode], strict=True))
            pooled = _pooled(pairs_seconds)
            low, high = _bootstrap_interval(pairs_seconds, _pooled)
            print(
                f"\n{name}: {pairs} pairs of {n} executions, concurrency {conc}, "
                f"{spans:.1f} spans per execution; {mode} / off:"
            )
            for key, values in ratios.items():
                q1, _, q3 = statistics.quantiles(values, n=4)
                print(
                    f"  {key:18} median {statistics.median(values):.3f}"
                    f" (quartiles {q1:.3f}-{q3:.3f}, {_spread(values)})"
                )
            # The median of the pairs' ratios: what one pair's stall (a phase held up
            # for seconds by the machine) moves least; over all pairs: every phase
            # weighed by its length.
            median_low, median_high = _bootstrap_interval(ratios["tr/s"], statistics.median)
            print(
                f"  tr/s, 95% intervals (pairs resampled): median {median_low:.3f}-"
                f"{median_high:.3f}; over all pairs {pooled:.3f} ({low:.3f}-{high:.3f})\n",
                flush=True,
            )


def _pooled(pairs: Sequence[tuple[float, float]]) -> float:
    """transitions/s over all ``pairs`` of (off's seconds, the mode's), mode / off: every
    phase runs the same transitions, so it is the ratio of the seconds, off's over the
    mode's."""
    return sum(off for off, _ in pairs) / sum(mode for _, mode in pairs)


def _bootstrap_interval(
    samples: Sequence[T], statistic: Callable[[list[T]], float], draws: int = 10_000
) -> tuple[float, float]:
    """The 95% percentile bootstrap interval of ``statistic`` over ``samples`` (one per
    pair), drawn again with replacement ``draws`` times (a fixed seed: the same figures
    give the same interval). Each pair is one sample of the machine's speed at its
    moment, which both of its phases share; resampling pairs, not phases, keeps that."""
    rng = random.Random(0)
    count = len(samples)
    values = sorted(
        statistic([samples[rng.randrange(count)] for _ in range(count)]) for _ in range(draws)
    )
    return values[int(0.025 * draws)], values[int(0.975 * draws) - 1]


def _bench(
    n: int, rounds: int, conc: int, modes: Sequence[str], rate: float = 0.0, warmup: int = 0
) -> None:
    figures: dict[str, dict[str, list[float]]] = {m: {} for m in modes}
    index = 0
    for cycle in range(rounds):
        # Each cycle in another order: the machine's speed drifts, and a mode always
        # first would gain.
        shift = cycle % len(modes)
        for mode in [*modes[shift:], *modes[:shift]]:
            index += 1
            results = _round_in_child(mode, n, conc, index, rate, warmup)
            for name, value in results.items():
                figures[mode].setdefault(name, []).append(value)
            shown = {k: round(v, 3) for k, v in results.items()}
            print(f"  round {index}: {mode:8} {shown}", flush=True)
    offered = f", offered open-loop at {rate:,.0f} transitions/s" if rate else ""
    print(
        f"\n{n} executions per workload and round (after {warmup} of each), {rounds} rounds,"
        f" concurrency {conc}{offered}"
    )
    print(
        "CPU ms per transition: this process + PostgreSQL + Redis + the span export process"
        " (median, min-max, vs off); this process alone; the span export process alone;"
        " transitions/s (wall clock, vs off)"
    )
    print(
        f"{'mode':8} {'workload':8} {'cpu-ms/tr':>9} {'spread':>12} {'vs off':>7} "
        f"{'own-ms/tr':>9} {'vs off':>7} {'export-ms':>9} {'tr/s':>8} {'vs off':>7} "
        f"{'spans/exec':>10}"
    )
    for mode in modes:
        for name, _, _ in WORKLOADS:
            f, off = figures[mode], figures["off"]
            cpu, cpu_off = (
                statistics.median(f[f"{name}/all-ms"]),
                statistics.median(off[f"{name}/all-ms"]),
            )
            own, own_off = (
                statistics.median(f[f"{name}/own-ms"]),
                statistics.median(off[f"{name}/own-ms"]),
            )
            wall, wall_off = statistics.median(f[name]), statistics.median(off[name])
            print(
                f"{mode:8} {name:8} {cpu:9.3f} {_spread(f[f'{name}/all-ms']):>12} "
                f"{cpu / cpu_off:7.3f} {own:9.3f} {own / own_off:7.3f} "
                f"{statistics.median(f.get(f'{name}/export-ms', [0.0])):9.3f} {wall:8.1f} "
                f"{wall / wall_off:7.3f} {statistics.median(f.get(f'{name}/spans', [0.0])):10.1f}"
            )
    print(
        "\nhow the work was done, per transition (medians): the event loop thread's CPU ms,"
        " Redis commands, PostgreSQL commits"
    )
    for mode in modes:
        for name, _, _ in WORKLOADS:
            f = figures[mode]
            shown = " ".join(
                f"{key} {statistics.median(f[f'{name}/{key}']):.4f}"
                for key in ("loop-ms", "redis", "commits")
                if f"{name}/{key}" in f
            )
            print(f"  {mode:8} {name:8} {shown}")
    # Each cycle ran every mode once, next to each other: a ratio within a cycle leaves
    # out most of the drift between cycles, and its spread says how far to trust the
    # median's margin to a budget.
    print("\nper cycle, mode / off of that cycle (median, min-max):")
    for mode in modes[1:]:
        for name, _, _ in WORKLOADS:
            f, off = figures[mode], figures["off"]
            parts = []
            for figure, label in (
                (f"{name}/all-ms", "all CPU/tr"),
                (f"{name}/own-ms", "own CPU/tr"),
                (f"{name}/own-sys-ms", "of it system"),
                (f"{name}/loop-ms", "loop thread CPU/tr"),
                (f"{name}/redis", "Redis commands/tr"),
                (f"{name}/commits", "PG commits/tr"),
                (name, "tr/s"),
            ):
                ratios = [
                    a / b if b else math.nan for a, b in zip(f[figure], off[figure], strict=True)
                ]
                parts.append(f"{label} {statistics.median(ratios):.3f} ({_spread(ratios)})")
            print(f"  {mode:8} {name:8} " + ", ".join(parts))
            if rounds > 1:  # (the cycles resampled, as `_paired` resamples its pairs)
                wall = [a / b for a, b in zip(f[name], off[name], strict=True)]
                low, high = _bootstrap_interval(wall, statistics.median)
                print(
                    f"  {'':8} {'':8} tr/s per cycle, 95% interval of the median {low:.3f}-{high:.3f}"
                )
    check, lookup = _off_path()
    per_transition = CHECKS_PER_TRANSITION * check + lookup
    print(
        f"\ntracing off, per transition: at most {CHECKS_PER_TRANSITION} x {check * 1e9:.0f} ns"
        f" (tracer is None) + {lookup * 1e9:.0f} ns (request_traceparent) ="
        f" {per_transition * 1e6:.3f} µs"
    )
    for name, _, _ in WORKLOADS:
        own_off = statistics.median(figures["off"][f"{name}/own-ms"]) / 1000
        print(
            f"  {name}: {per_transition / own_off:.4%} of this process's CPU per transition"
            f" with tracing off ({own_off * 1e3:.3f} ms)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--modes", default=",".join(MODES), help=f"comma separated, of {MODES}; off first"
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="offer each workload's starts open-loop at this many transitions/s (0: as "
        "fast as the clients can; a rate below what tracing on sustains compares the CPU "
        "per transition at equal load)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=300,
        help="executions of each workload a round runs before it measures (its process's"
        " first requests, decisions, spans and batches); 0: none",
    )
    parser.add_argument(
        "--paired",
        type=int,
        default=0,
        metavar="PAIRS",
        help="instead of rounds in new interpreters: off and the one other mode of --modes "
        "side by side in one interpreter, PAIRS phases of -n executions each, in turns "
        "(`_paired`)",
    )
    parser.add_argument(
        "--workloads",
        default=",".join(w[0] for w in WORKLOADS),
        help=f"comma separated, of {tuple(w[0] for w in WORKLOADS)}",
    )
    parser.add_argument("--one-round", metavar="MODE", help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    chosen = {w.strip() for w in args.workloads.split(",") if w.strip()}
    if not chosen or not chosen <= {w[0] for w in WORKLOADS}:
        parser.error(f"--workloads: any of {tuple(w[0] for w in WORKLOADS)}")
    WORKLOADS[:] = [w for w in WORKLOADS if w[0] in chosen]
    if args.one_round:  # (a round in a child interpreter: `_round_in_child`)
        results = asyncio.run(
            _one_round(args.one_round, args.n, args.concurrency, args.index, args.rate, args.warmup)
        )
        print(json.dumps(results), flush=True)
        return
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or modes[0] != "off" or any(m not in MODES for m in modes):
        parser.error(f"--modes: off first, then any of {MODES}")
    if args.rate < 0:
        parser.error("--rate: not negative")
    if args.paired:
        if args.paired < 2 or len(modes) != 2 or modes[1] == "drivers":
            # (the drivers' instrumentation wraps asyncpg and redis for the whole
            # process: the "off" steplog beside it would run through it too)
            parser.error("--paired: at least 2 pairs; --modes off and one other, not drivers")
        asyncio.run(_paired(modes[1], args.n, args.paired, args.concurrency))
        return
    _bench(args.n, args.rounds, args.concurrency, modes, args.rate, args.warmup)


if __name__ == "__main__":
    main()
