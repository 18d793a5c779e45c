"""aiomonitor in a steplog process, with steplog's own commands.

``STEPLOG_MONITOR_PORT`` (0, off, by default; `make run` sets 20101) starts aiomonitor
on 127.0.0.1 only: its terminal on that port (``nc 127.0.0.1 20101``, or
``python -m aiomonitor.cli -p 20101``), its web UI on the next one. Its Python console
is off (it would run any code in the process). Besides aiomonitor's own commands (``ps``,
``where``, ``cancel``, ...):

    roles        each role loop: state (running, restarting, stopped), restarts, last
                 error, and what readiness says of it
    executions   the executions the engine of this process is deciding right now, and
                 the trigger partitions it reads (engine.loops.partition_owners)
    tasks        the task handlers running in this process: resource, attempt, age
    lag          each consumer group: pending entries, oldest pending age, not yet
                 delivered, dead letters (measured now)

The commands run in aiomonitor's own thread; each one reads the process's state on
the process's event loop (`_on_loop`), so it never races the loops.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import aiomonitor
import click
from aiomonitor.termui.commands import auto_async_command_done, monitor_cli

log = logging.getLogger("steplog.monitor")

HOST = "127.0.0.1"


class SteplogMonitor(aiomonitor.Monitor):  # type: ignore[misc]
    """aiomonitor whose start returns (``started`` False) when its thread cannot
    serve, e.g. a port taken, where aiomonitor's own would wait forever."""

    steplog: dict[str, Any]

    def _ui_main(self) -> None:
        try:
            super()._ui_main()
        except BaseException:
            log.exception("the monitor stopped")
        finally:
            self._ui_started.set()

    @property
    def started(self) -> bool:
        return bool(self._ui_thread.is_alive())


def start_monitor(
    settings: Any, resources: Any, health: Any, sampler: Any, **watched: Any
) -> SteplogMonitor | None:
    """Start aiomonitor on 127.0.0.1:settings.monitor_port (web UI on the next port)
    for the running loop; None (logged) when it cannot listen there. ``watched``: the
    engine and the worker of this process, when it runs them."""
    port = int(settings.monitor_port)
    monitor = SteplogMonitor(
        asyncio.get_running_loop(),
        host=HOST,
        termui_port=port,
        webui_port=port + 1,
        console_enabled=False,
    )
    monitor.steplog = {"health": health, "sampler": sampler, "resources": resources, **watched}
    monitor.start()
    if not monitor.started:
        log.warning("monitor: cannot listen on %s:%d; running without it", HOST, port)
        return None
    log.info("monitor on %s:%d (web UI on %d)", HOST, port, port + 1)
    return monitor


def _table(header: tuple[str, ...], rows: Sequence[tuple[object, ...]]) -> str:
    cells = [tuple(str(c) for c in header), *(tuple(str(c) for c in r) for r in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def _command(
    name: str, help: str
) -> Callable[[Callable[[dict[str, Any]], Coroutine[Any, Any, str]]], Any]:
    """Register a monitor command whose body, ``body(watched) -> text``, runs on the
    monitored event loop."""

    def register(body: Callable[[dict[str, Any]], Coroutine[Any, Any, str]]) -> Any:
        @monitor_cli.command(name=name, help=help)  # type: ignore[untyped-decorator]
        def command(ctx: click.Context) -> None:
            monitor: SteplogMonitor = ctx.obj

            @auto_async_command_done  # type: ignore[untyped-decorator]
            async def run(ctx: click.Context) -> None:
                try:
                    future = asyncio.run_coroutine_threadsafe(
                        body(monitor.steplog), monitor._monitored_loop
                    )
                    text = await asyncio.wait_for(asyncio.wrap_future(future), 10)
                except Exception as exc:
                    text = f"error: {type(exc).__name__}: {exc}"
                click.echo(text)

            task = monitor._ui_loop.create_task(run(ctx))
            monitor._termui_tasks.add(task)

        return command

    return register


@_command("roles", "Each role loop: state, restarts, last error, readiness.")
async def _roles(watched: dict[str, Any]) -> str:
    health = watched["health"]
    problems = health.problems()
    rows = [
        (
            name,
            role.state,
            role.restarts,
            problems.get(name, "ok"),
            role.last_error or "-",
        )
        for name, role in health.roles.items()
    ]
    return _table(("role", "state", "restarts", "ready", "last error"), rows)


@_command("executions", "The executions this process's engine is deciding right now.")
async def _executions(watched: dict[str, Any]) -> str:
    engine = watched.get("engine")
    if engine is None:
        return "no engine role in this process"
    now = time.monotonic()
    rows = [(str(eid), f"{now - began:.3f}s") for eid, began in engine.deciding.items()]
    text = _table(("execution", "for"), rows)
    owners = engine.owners
    partitions = ", ".join(map(str, owners.owned)) or "none (standing by)"
    return (
        f"{text}\n{len(rows)} being decided; {engine.handled} triggers handled\n"
        f"reads trigger partitions {partitions} of {owners.bus.partitions} "
        f"({len(owners.members)} live engine{'' if len(owners.members) == 1 else 's'})"
    )


@_command("tasks", "The task handlers running in this process: resource, attempt, age.")
async def _tasks(watched: dict[str, Any]) -> str:
    worker = watched.get("worker")
    if worker is None:
        return "no worker role in this process"
    now = time.monotonic()
    rows = [
        (str(r.execution_id), r.resource, r.attempt, entry_id, f"{now - r.started_at:.1f}s")
        for entry_id, r in worker._running.items()
    ]
    text = _table(("execution", "resource", "attempt", "entry", "age"), rows)
    return f"{text}\n{len(rows)} running; {worker.completed} completed"


@_command("lag", "Each consumer group: pending, oldest pending age, undelivered, dead letters.")
async def _lag(watched: dict[str, Any]) -> str:
    stats = await watched["sampler"].sample()
    rows = [
        (stream, group, s.pending, f"{s.oldest_pending_age_s:.1f}s", s.lag, s.dead_letters)
        for (stream, group), s in stats.items()
    ]
    return _table(("stream", "group", "pending", "oldest", "undelivered", "dead"), rows)
