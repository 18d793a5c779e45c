"""aiomonitor in a running steplog: a client connects to STEPLOG_MONITOR_PORT and runs each
of steplog's commands (steplog/monitor.py)."""

from __future__ import annotations

import asyncio
import re
import socket
from typing import Any

import msgspec

from steplog.settings import Settings
from tests.serving import running_steplog

PROMPT = b"monitor >>> "
# What a telnet client answers to prompt_toolkit's negotiation: a terminal type (the
# session starts on it) and a window 250 columns wide (tables are not wrapped).
IAC, SB, SE, TTYPE, NAWS = b"\xff", b"\xfa", b"\xf0", b"\x18", b"\x1f"
HELLO = (
    IAC + SB + TTYPE + b"\x00VT100" + IAC + SE + IAC + SB + NAWS + b"\x00\xfa\x00\x32" + IAC + SE
)
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\xff[\xfb-\xfe].|\xff[\xf0-\xfa]|[\x00-\x08\x0e-\x1f]")


def two_free_ports() -> int:
    """A port p such that p and p + 1 are free (the terminal and the web UI)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port
    raise RuntimeError("no two consecutive free ports")


async def read_until_prompt(reader: asyncio.StreamReader, prompts: int = 1) -> str:
    """What the monitor sends until it shows ``prompts`` prompts and waits at the last
    (a command's echo is one, the prompt after its output another)."""
    data = b""
    async with asyncio.timeout(15):
        while True:
            text = ANSI.sub(b"", data)
            if text.count(PROMPT) >= prompts and text.rstrip(b" ").endswith(PROMPT.rstrip()):
                return text.decode(errors="replace")
            chunk = await reader.read(4096)
            assert chunk, data
            data += chunk


async def run_command(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, cmd: str) -> str:
    writer.write(cmd.encode() + b"\r")
    await writer.drain()
    return await read_until_prompt(reader, prompts=2)


async def test_monitor_runs_steplogs_commands(settings: Settings, eventually: Any) -> None:
    port = two_free_ports()
    settings = msgspec.structs.replace(settings, monitor_port=port, shutdown_grace_s=0.1)
    async with running_steplog(settings) as s:
        await s.register(
            "mon",
            {
                "StartAt": "Sleep",
                "States": {"Sleep": {"Type": "Task", "Resource": "test:sleep", "End": True}},
            },
        )
        await s.start_id("mon", {"seconds": 30})
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(HELLO)
            await read_until_prompt(reader)

            async def sleeping_task() -> str | None:
                out = await run_command(reader, writer, "tasks")
                return out if "test:sleep" in out else None

            tasks = await eventually(sleeping_task, timeout_s=15, interval_s=0.2)
            roles = await run_command(reader, writer, "roles")
            executions = await run_command(reader, writer, "executions")
            lag = await run_command(reader, writer, "lag")
        finally:
            writer.close()

    assert re.search(r"test:sleep\s+0\s+\S+\s+\d+\.\ds", tasks), tasks
    assert "1 running" in tasks
    for role in ("engine", "timers", "relay", "recovery", "worker", "sampler"):
        assert re.search(rf"\b{role}\s+running\s+0\s+ok\b", roles), roles
    assert "projector:executions" in roles
    assert "being decided" in executions and "triggers handled" in executions
    assert re.search(r"\d+ triggers handled", executions)
    # The one engine reads every partition.
    assert "reads trigger partitions 0, 1, 2, 3 of 4 (1 live engine)" in executions
    # The sleeping task is pending on its queue; the trigger streams have nothing waiting.
    assert re.search(r":tasks\s+workers\s+1\s+\d+\.\ds\s+0\s+0", lag), lag
    assert re.search(r":triggers\s+engine\s+0\s+0\.0s\s+0\s+0", lag), lag
