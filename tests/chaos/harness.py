"""Real steplog processes on their own embedded PostgreSQL and Redis, for the chaos tests
and bench/scale.py: start, SIGKILL, SIGTERM and restart `steplog serve` processes, flush
Redis, restart PostgreSQL. The servers are this harness's own (never the test session's),
because it empties and restarts them.

Also the workflow the chaos test and the bench run (`WORKFLOW`), with `chaos_input(i)`
and the output it must end with (`expected_output`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from engine.adapters.bus import connect
from steplog.embedded import embedded_servers
from steplog.migrate import migrate
from tests.chaos.handlers import create_tables

REPO = Path(__file__).resolve().parents[2]
STEPLOG = Path(sys.executable).parent / "steplog"
PREFIX = "chaos"

WORKFLOW: dict[str, Any] = {
    "StartAt": "Charge",
    "States": {
        "Charge": {
            "Type": "Task",
            "Resource": "chaos:charge",
            "Parameters": {"amount.$": "$.amount"},
            "ResultPath": "$.charge",
            "Next": "Flaky",
        },
        "Flaky": {
            "Type": "Task",
            "Resource": "chaos:flaky",
            "Parameters": {"fail_times.$": "$.fail_times"},
            "ResultPath": "$.flaky",
            "Retry": [
                {
                    "ErrorEquals": ["Chaos.Flaky"],
                    "IntervalSeconds": 1,
                    "MaxAttempts": 3,
                    "BackoffRate": 1.0,
                }
            ],
            "Next": "Hold",
        },
        "Hold": {"Type": "Wait", "SecondsPath": "$.hold", "Next": "Route"},
        "Route": {
            "Type": "Choice",
            "Choices": [{"Variable": "$.amount", "NumericGreaterThan": 50, "Next": "Split"}],
            "Default": "Small",
        },
        "Split": {
            "Type": "Map",
            "ItemsPath": "$.items",
            "ItemProcessor": {
                "ProcessorConfig": {"Mode": "INLINE"},
                "StartAt": "Part",
                "States": {
                    "Part": {
                        "Type": "Task",
                        "Resource": "chaos:charge",
                        "Parameters": {"amount.$": "$"},
                        "End": True,
                    }
                },
            },
            "ResultPath": "$.parts",
            "End": True,
        },
        "Small": {"Type": "Pass", "Result": "small", "ResultPath": "$.route", "End": True},
    },
}


def chaos_input(i: int) -> dict[str, Any]:
    """Input of execution ``i``: a third fail once and a third twice before succeeding,
    waits of 0-2 s, half take the Map path with three charges."""
    big = i % 2 == 0
    return {
        "i": i,
        "amount": 100 + i if big else i % 50,
        "fail_times": i % 3,
        "hold": (i // 2) % 3,
        "items": [1, 2, 3 + i % 5],
    }


def expected_output(input: dict[str, Any]) -> dict[str, Any]:
    out = {
        **input,
        "charge": {"charged": input["amount"]},
        "flaky": {"attempt": input["fail_times"]},
    }
    if input["amount"] > 50:
        out["parts"] = [{"charged": x} for x in input["items"]]
    else:
        out["route"] = "small"
    return out


def expected_charges(input: dict[str, Any]) -> tuple[int, int]:
    """(number of charge tasks, their total) for an input."""
    if input["amount"] > 50:
        return 1 + len(input["items"]), input["amount"] + sum(input["items"])
    return 1, input["amount"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """``size`` steplog processes (all roles unless ``roles`` says otherwise; process ``i``
    runs ``roles_of[i]`` when given) on the servers given; their output goes to
    ``log_dir/proc-<i>.log``. ``env`` is added to every process's environment, then
    ``env_of[i]`` to process ``i``'s."""

    def __init__(
        self,
        database_url: str,
        redis_url: str,
        pgdata: Path,
        log_dir: Path,
        size: int,
        *,
        roles: str = "api,engine,worker,projector",
        roles_of: list[str] | None = None,
        env: dict[str, str] | None = None,
        env_of: dict[int, dict[str, str]] | None = None,
        redis_cluster: bool = False,
    ) -> None:
        assert roles_of is None or len(roles_of) == size
        self.redis_cluster = redis_cluster  # redis_url names a node of a Redis Cluster
        self.database_url = database_url
        self.redis_url = redis_url
        self.pgdata = pgdata
        self.log_dir = log_dir
        self.roles = roles
        self.ports = [free_port() for _ in range(size)]
        self.procs: list[asyncio.subprocess.Process | None] = [None] * size
        self.roles_of = roles_of
        self.extra_env = env or {}
        self.env_of = env_of or {}
        self.starts = 0
        self.ready: set[int] = set()  # started and serving (not being restarted)

    def url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.ports[i]}"

    def alive(self) -> list[int]:
        return [i for i, p in enumerate(self.procs) if p is not None and p.returncode is None]

    def _env(self, i: int) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STEPLOG_")}
        env.update(
            {
                "PYTHONPATH": str(REPO),
                "STEPLOG_DATABASE_URL": self.database_url,
                "STEPLOG_REDIS_URL": self.redis_url,
                "STEPLOG_REDIS_PREFIX": PREFIX,
                "STEPLOG_REDIS_CLUSTER": "true" if self.redis_cluster else "false",
                "STEPLOG_PORT": str(self.ports[i]),
                # The processes listen on loopback; the chaos tests are not about keys.
                "STEPLOG_AUTH": "off",
                "STEPLOG_HANDLERS": "tests.chaos.handlers",
                "STEPLOG_LOG_LEVEL": "WARNING",
                "STEPLOG_TASK_VISIBILITY_TIMEOUT_S": "3",
                "STEPLOG_SHUTDOWN_GRACE_S": "5",
            }
        )
        env.update(self.extra_env)
        env.update(self.env_of.get(i, {}))
        return env

    def roles_at(self, i: int) -> str:
        return self.roles_of[i] if self.roles_of is not None else self.roles

    async def start(self, i: int, *, wait: bool = True) -> None:
        assert i not in self.alive()
        log = (self.log_dir / f"proc-{i}.log").open("ab")
        try:
            self.procs[i] = await asyncio.create_subprocess_exec(
                str(STEPLOG),
                "serve",
                "--roles",
                self.roles_at(i),
                cwd=str(REPO),
                env=self._env(i),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
        finally:
            log.close()
        self.starts += 1
        if wait and "api" in self.roles_at(i):
            await self.wait_ready(i)
        self.ready.add(i)

    async def wait_ready(self, i: int, timeout_s: float = 60.0) -> None:
        """Until process ``i`` serves HTTP (it may wait for PostgreSQL first)."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        async with aiohttp.ClientSession() as http:
            while True:
                proc = self.procs[i]
                assert proc is not None
                if proc.returncode is not None:
                    raise AssertionError(
                        f"process {i} exited with {proc.returncode}:\n{self.tail(i)}"
                    )
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with http.get(self.url(i) + "/health/live") as resp:
                        if resp.status == 200:
                            return
                if asyncio.get_running_loop().time() > deadline:
                    raise AssertionError(f"process {i} not ready in {timeout_s}s:\n{self.tail(i)}")
                await asyncio.sleep(0.1)

    async def kill(self, i: int) -> None:
        proc = self.procs[i]
        assert proc is not None
        self.ready.discard(i)
        proc.send_signal(signal.SIGKILL)
        await proc.wait()

    async def terminate(self, i: int, timeout_s: float = 30.0) -> int:
        """SIGTERM; returns the exit code (the process must exit within ``timeout_s``)."""
        proc = self.procs[i]
        assert proc is not None
        self.ready.discard(i)
        proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(proc.wait(), timeout_s)

    async def stop_all(self) -> list[int]:
        codes = await asyncio.gather(*(self.terminate(i) for i in self.alive()))
        return list(codes)

    async def kill_all(self) -> None:
        for i in self.alive():
            with contextlib.suppress(ProcessLookupError):
                await self.kill(i)

    def tail(self, i: int, lines: int = 40) -> str:
        path = self.log_dir / f"proc-{i}.log"
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def tails(self) -> str:
        return "\n".join(f"--- process {i} ---\n{self.tail(i)}" for i in range(len(self.procs)))

    async def flush_redis(self) -> None:
        client = connect(self.redis_url, cluster=self.redis_cluster)
        try:
            await client.flushall()  # on a cluster: on every primary
        finally:
            await client.aclose()

    async def restart_postgres(self, down_s: float) -> None:
        """Stop PostgreSQL as a crash would (immediate: no checkpoint, WAL replay at
        start), keep it down ``down_s`` seconds, start it again with pgserver's options."""
        await asyncio.to_thread(_pg_ctl_stop, self.pgdata)
        await asyncio.sleep(down_s)
        await asyncio.to_thread(_pg_ctl_start, self.pgdata)


def _pgserver(pgdata: Path) -> Any:
    from pgserver.postgres_server import PostgresServer

    return PostgresServer._instances[pgdata.resolve()]


_socket_dirs: dict[Path, str] = {}


def _pg_ctl_stop(pgdata: Path) -> None:
    from pgserver._commands import pg_ctl

    # postmaster.pid line 5 is the socket directory the server was started with.
    _socket_dirs[pgdata] = (pgdata / "postmaster.pid").read_text().splitlines()[4]
    pg_ctl(["-m", "immediate", "-w", "stop"], pgdata=pgdata, user=_pgserver(pgdata).system_user)


def _pg_ctl_start(pgdata: Path) -> None:
    from pgserver._commands import pg_ctl

    server = _pgserver(pgdata)
    args = ["-w", "-o", '-h ""', "-o", f"-k {_socket_dirs[pgdata]}", "-l", str(server.log), "start"]
    pg_ctl(args, pgdata=pgdata, user=server.system_user, timeout=60)


@contextlib.asynccontextmanager
async def servers(data_dir: Path) -> AsyncIterator[tuple[str, str, Path]]:
    """Own embedded servers under ``data_dir``, migrated, with the chaos tables:
    (database_url, redis_url, pgdata). Durable (fsync and synchronous_commit on): a
    PostgreSQL crash must not lose a commit it acknowledged, which is what steplog's
    guarantees stand on (the test suite's throwaway servers turn both off)."""
    async with embedded_servers(data_dir, durable=True) as (database_url, redis_url):
        conn = await asyncpg.connect(database_url)
        try:
            await migrate(conn)
            await create_tables(conn)
        finally:
            await conn.close()
        yield database_url, redis_url, (data_dir / "pg").resolve()


async def post_json(
    http: aiohttp.ClientSession, url: str, body: Any, method: str = "POST"
) -> tuple[int, Any]:
    async with http.request(method, url, json=body) as resp:
        return resp.status, await resp.json(content_type=None)
