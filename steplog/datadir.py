"""One data folder, one owner: the embedded servers of a data folder are started by one
steplog process, and every other steplog command on that folder uses them.

The process that starts the embedded servers holds an exclusive lock on
``<data_dir>/owner.lock`` for as long as they run and writes ``<data_dir>/servers.json``
(its pid and both URLs). Another command finds the lock taken and connects to the URLs
in that file instead of starting a second PostgreSQL and Redis over the first one's
files (a second redis-server on the same socket would unlink it under the running one).
`steplog dev` refuses to start when the folder is already owned: it would also fight
over the API port.

Without ``STEPLOG_DATA_DIR`` the folder is ``.steplog`` in the current directory or the
nearest parent that has one, so commands work from anywhere inside the project.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

from steplog.embedded import embedded_servers

DEFAULT_NAME = ".steplog"
_LOCK = "owner.lock"
_SERVERS = "servers.json"
# How long a command waits for an owner that holds the lock but is still starting.
_OWNER_START_TIMEOUT_S = 30.0


class DataDirError(Exception):
    """The data folder cannot be used as asked; the message is one line for the user."""


def find_data_dir(start: Path) -> Path | None:
    """``.steplog`` in ``start`` or its nearest parent that has one; None when none has."""
    here = start.resolve()
    for folder in (here, *here.parents):
        candidate = folder / DEFAULT_NAME
        if candidate.is_dir():
            return candidate
    return None


def _owner_pid(data: Path) -> int | None:
    try:
        return int(json.loads((data / _SERVERS).read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


async def _owner_urls(data: Path) -> tuple[str, str]:
    """The URLs the owner wrote; waits while the owner is still starting its servers."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _OWNER_START_TIMEOUT_S
    while (urls := await asyncio.to_thread(_read_urls, data)) is None:
        if loop.time() > deadline:
            raise DataDirError(
                f"the data folder {data} is locked by another steplog, which has not "
                "published its servers; is it still starting?"
            )
        await asyncio.sleep(0.1)
    return urls


def _open_lock_file(data_dir: Path) -> tuple[Path, int]:
    data = data_dir.expanduser().resolve()
    data.mkdir(parents=True, exist_ok=True)
    return data, os.open(data / _LOCK, os.O_RDWR | os.O_CREAT, 0o600)


def _read_urls(data: Path) -> tuple[str, str] | None:
    try:
        doc = json.loads((data / _SERVERS).read_text())
        return str(doc["database_url"]), str(doc["redis_url"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_servers(data: Path, database_url: str, redis_url: str) -> None:
    tmp = data / (_SERVERS + ".tmp")
    tmp.write_text(
        json.dumps({"pid": os.getpid(), "database_url": database_url, "redis_url": redis_url})
    )
    tmp.replace(data / _SERVERS)  # atomic: a reader sees the old file or the whole new one


def _remove_servers(data: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(data / _SERVERS)


@contextlib.asynccontextmanager
async def local_servers(data_dir: Path, *, own: bool) -> AsyncIterator[tuple[str, str]]:
    """``(database_url, redis_url)`` of the embedded servers of ``data_dir``.

    When no steplog owns the folder, start the servers here (creating the folder), own
    them until the block exits, then stop them. When another process owns it: with
    ``own`` (``steplog dev``) raise `DataDirError`; otherwise use that process's servers.
    """
    data, fd = await asyncio.to_thread(_open_lock_file, data_dir)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if own:
                pid = _owner_pid(data)
                who = f"steplog (pid {pid})" if pid else "another steplog"
                raise DataDirError(
                    f"the data folder {data} is in use by {who}; stop it first, "
                    "or set STEPLOG_DATA_DIR to another folder"
                ) from None
            yield await _owner_urls(data)
            return
        # A file left by an owner that was killed would point a reader at dead servers.
        _remove_servers(data)
        async with embedded_servers(data) as (database_url, redis_url):
            await asyncio.to_thread(_write_servers, data, database_url, redis_url)
            try:
                yield database_url, redis_url
            finally:
                _remove_servers(data)
    finally:
        os.close(fd)  # releases the lock


__all__ = ["DataDirError", "find_data_dir", "local_servers"]
