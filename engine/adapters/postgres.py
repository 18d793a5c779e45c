"""PostgreSQL connections and the one translation of their failures.

Every asyncpg call of the store and of the read models runs inside
`translate_errors()`: a server that does not answer or cannot serve now
(refused or reset socket, timeout, connection closed or terminated, the
driver's protocol state broken by a terminated connection, too many
connections, shutdown, restart in progress, a read-only server, a statement
or lock timeout, a serialization failure or deadlock) becomes
`engine.errors.Unavailable` with the driver's error chained; a value the server refuses (SQLSTATE class 22) or the driver
cannot encode becomes `engine.errors.InvalidData`. Other errors about the
statement itself (a unique violation, ...) pass through for the caller to
translate into what they mean.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import asyncpg
from prometheus_client import Counter

from engine.errors import InvalidData, Unavailable

# A server that is down, restarting, overloaded or dropped the connection: the
# same call may succeed later.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # refused/reset sockets; also TimeoutError (pool acquire, command timeouts)
    asyncpg.PostgresConnectionError,  # includes ConnectionDoesNotExistError
    asyncpg.InterfaceError,  # "connection is closed", "pool is closed", released mid-query
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    # The driver's own state machine broken under it, e.g. "cannot switch to state 12"
    # when the server terminates the connection mid-operation (ProtocolError is one).
    asyncpg.InternalClientError,
)


# Server states that say "not now" rather than "not this" (DESIGN invariant 9: down,
# read-only, full, paused, a lock held): connection exceptions (08), insufficient
# resources such as a full disk (53), operator intervention such as a cancelled
# statement or a shutdown (57), system errors (58); a read-only transaction, a lock not
# available, a serialization failure or a deadlock.
_OUTAGE_CLASSES = ("08", "53", "57", "58")
_OUTAGE_STATES = frozenset({"25006", "55P03", "40001", "40P01"})


def _is_outage(sqlstate: str) -> bool:
    return sqlstate[:2] in _OUTAGE_CLASSES or sqlstate in _OUTAGE_STATES


# The client-side "invalid input for query argument" error (asyncpg.DataError is the
# server's SQLSTATE 22000, a different class).
_ENCODING_ERROR: type[Exception] = asyncpg.exceptions._base.DataError


POSTGRES_ERRORS = Counter(
    "steplog_postgres_errors",
    "PostgreSQL calls that failed, by kind: unavailable (no answer, or cannot serve now), "
    "invalid_data (a value refused), other (any other error of a statement).",
    ("kind",),
)
for _kind in ("unavailable", "invalid_data", "other"):
    POSTGRES_ERRORS.labels(_kind)  # every kind shown from the start, at 0
POSTGRES_CONNECTIONS = Counter(
    "steplog_postgres_connections_opened",
    "Connections to PostgreSQL opened by the pool (the first ones, then every reconnect).",
)


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Raise `Unavailable` (from the driver's error) for a connection-level failure
    inside the block and `InvalidData` for a refused value; let every other exception
    through unchanged. Each is counted in steplog_postgres_errors_total."""
    try:
        yield
    except _ENCODING_ERROR as exc:
        # The driver could not encode an argument (e.g. beyond int32): before the
        # generic InterfaceError below, of which it is a subclass.
        POSTGRES_ERRORS.labels("invalid_data").inc()
        raise InvalidData(f"a value PostgreSQL cannot take: {exc}") from exc
    except asyncpg.PostgresError as exc:
        sqlstate = str(getattr(exc, "sqlstate", "") or "")
        if sqlstate.startswith("22"):
            POSTGRES_ERRORS.labels("invalid_data").inc()
            raise InvalidData(f"PostgreSQL refused a value: {exc}") from exc
        if isinstance(exc, CONNECTION_ERRORS) or _is_outage(sqlstate):
            POSTGRES_ERRORS.labels("unavailable").inc()
            raise Unavailable(f"PostgreSQL is unavailable: {exc!r}") from exc
        POSTGRES_ERRORS.labels("other").inc()
        raise
    except CONNECTION_ERRORS as exc:
        POSTGRES_ERRORS.labels("unavailable").inc()
        raise Unavailable(f"PostgreSQL is unavailable: {exc!r}") from exc


class PoolQueries:
    """The pool's one-statement calls with their failures translated: the base of the
    adapters that own SQL over a pool they do not own."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def _fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        with translate_errors():
            rows: list[asyncpg.Record] = await self._pool.fetch(query, *args)
            return rows

    async def _fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        with translate_errors():
            row: asyncpg.Record | None = await self._pool.fetchrow(query, *args)
            return row

    async def _fetchval(self, query: str, *args: Any) -> Any:
        with translate_errors():
            return await self._pool.fetchval(query, *args)

    async def _execute(self, query: str, *args: Any) -> str:
        with translate_errors():
            status: str = await self._pool.execute(query, *args)
            return status


async def _opened(conn: asyncpg.Connection) -> None:
    POSTGRES_CONNECTIONS.inc()


def session_settings(statement_timeout_ms: int) -> dict[str, str]:
    """The server settings every connection of a pool starts with: ``statement_timeout``
    (0: none) bounds each statement, waits for locks included; a statement cut short
    fails with SQLSTATE 57014, which `translate_errors` makes `Unavailable`."""
    if statement_timeout_ms < 0:
        raise ValueError("statement_timeout_ms must be >= 0")
    return {"statement_timeout": str(statement_timeout_ms)}


async def _no_session_state(conn: asyncpg.Connection) -> None:
    """The pool's reset when a connection comes back: nothing on the server.

    asyncpg's default reset costs a round trip per release (``SELECT
    pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``, about a tenth of the
    engine's time under load). Before calling this, the pool itself still rolls back a
    transaction left open and forgets the connection's listeners (client side), so what
    is skipped is only session state, and pooled calls leave none: statements run in
    autocommit or in transactions, settings are changed with ``SET LOCAL`` or
    ``set_config(..., true)`` (gone at the end of their transaction), the server
    settings a connection starts with are startup parameters (not changed later),
    cursors live inside transactions, prepared statements are asyncpg's own cache
    (kept on purpose). What does leave session state - LISTEN, a session advisory
    lock, a plain SET - runs on a connection taken with `session`, which resets it in
    full before giving it back."""


class LeanPool(asyncpg.Pool):  # type: ignore[misc]  # (asyncpg is untyped)
    """asyncpg's pool, whose ``release`` of a connection that needs nothing done on the
    server is done at once, in the caller's task.

    asyncpg's release runs the connection holder's release in a Task of its own
    (``asyncio.shield``, so that a cancelled caller still returns the connection)
    under an ``asyncio.timeout``, even when the reset is `_no_session_state`: a Task,
    a timeout and a loop iteration per query of a pooled call, about 5% of the
    event loop in a 3-Task run (py-spy). When the pool's reset is that no-op and the
    connection is open, idle (no transaction, no cancellation in flight), of the
    pool's generation and under its query limit, every step of that release is
    synchronous: done here, there is nothing to cancel or wait for. Any other
    connection goes through asyncpg's release. The steps are those of asyncpg
    0.29-0.32's ``PoolConnectionHolder.release``; with a version whose private
    members differ, every release is asyncpg's own."""

    __slots__ = ("_lean",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lean = (
            kwargs.get("reset") is _no_session_state
            and all(hasattr(asyncpg.pool.PoolConnectionHolder, m) for m in _HOLDER_MEMBERS)
            and all(hasattr(asyncpg.Connection, m) for m in _CONNECTION_MEMBERS)
            and all(hasattr(asyncpg.protocol.Protocol, m) for m in _PROTOCOL_MEMBERS)
        )

    async def release(self, connection: Any, *, timeout: float | None = None) -> None:  # noqa: ASYNC109 (asyncpg's signature)
        holder = getattr(connection, "_holder", None)
        con = getattr(connection, "_con", None)
        if (
            not self._lean
            or type(connection) is not asyncpg.pool.PoolConnectionProxy
            or holder is None
            or holder._pool is not self
            or con is None
            or holder._in_use is None
            or con.is_closed()
            or con._protocol.queries_count >= holder._max_queries
            or holder._generation != self._generation
            or con._protocol._is_cancelling()
            or con._protocol.is_in_transaction()
            or con._top_xact is not None
        ):
            return await super().release(connection, timeout=timeout)  # type: ignore[no-any-return]
        self._check_init()
        con._on_release()
        holder._timeout = None
        # Connection._reset, with no transaction to roll back; then the pool's reset,
        # which does nothing.
        con._listeners.clear()
        con._log_listeners.clear()
        holder._release()
        holder._setup_inactive_callback()


_HOLDER_MEMBERS = {
    "_in_use",
    "_max_queries",
    "_generation",
    "_timeout",
    "_release",
    "_setup_inactive_callback",
    "_pool",
}
_CONNECTION_MEMBERS = {"_protocol", "_top_xact", "_listeners", "_log_listeners", "_on_release"}
_PROTOCOL_MEMBERS = {"queries_count", "_is_cancelling", "is_in_transaction"}


@contextlib.asynccontextmanager
async def session(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection for session state (LISTEN, a session advisory lock, a plain
    SET): reset in full (UNLISTEN *, every advisory lock released, RESET ALL, CLOSE
    ALL) before it goes back to the pool, which skips that round trip for every other
    connection (`_no_session_state`). A connection that cannot be reset is terminated
    instead, so no pooled connection ever keeps a lock or a setting it was given here."""
    async with pool.acquire() as conn:
        try:
            yield conn
        finally:
            if not conn.is_closed():
                try:
                    await conn.reset()
                except asyncio.CancelledError:
                    conn.terminate()
                    raise
                except Exception:  # its state dies with it; the caller's error stands
                    conn.terminate()


async def listen(
    pool: asyncpg.Pool,
    channel: str,
    notified: Callable[[str], None],
    stop: asyncio.Event,
    *,
    poll_s: float,
    what: str,
    listening: Callable[[], None] = lambda: None,
    lost: Callable[[], None] = lambda: None,
) -> None:
    """Until ``stop`` is set: hold a pooled connection (`session`) that LISTENs on
    ``channel``, calling ``notified(payload)`` at each notification; reconnect
    ``poll_s`` after a failure (logged, naming ``what``). ``listening()`` runs once each
    connection listens, ``lost()`` as soon as it stops (its end reaching the client,
    an error, the stop): what was notified in between is unknown."""
    log = logging.getLogger(__name__)

    def on_notify(_conn: object, _pid: int, _channel: str, payload: object) -> None:
        notified(str(payload))

    def on_end(_conn: object) -> None:
        lost()

    while not stop.is_set():
        try:
            async with session(pool) as conn:
                await conn.add_listener(channel, on_notify)
                conn.add_termination_listener(on_end)
                listening()
                try:
                    # Wake now and then to notice a connection that died quietly.
                    while not conn.is_closed() and not stop.is_set():
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), poll_s)
                finally:
                    lost()
                    if not conn.is_closed():
                        conn.remove_termination_listener(on_end)
                        await conn.remove_listener(channel, on_notify)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # Cancelled, and a dropped connection's error raised while unwinding
                # (e.g. "released back to the pool") replaced the CancelledError.
                raise asyncio.CancelledError from exc
            log.warning("%s lost: %r; reconnecting", what, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), poll_s)


async def open_pool(
    url: str, *, min_size: int, max_size: int, statement_timeout_ms: int = 0
) -> asyncpg.Pool:
    """A connection pool to ``url`` whose statements time out after
    ``statement_timeout_ms`` (0: never; see `session_settings`); `Unavailable` when the
    server does not answer (the caller decides whether to wait for it). A connection
    goes back to the pool without asyncpg's reset round trip (`_no_session_state`),
    and an idle one without a Task of its own either (`LeanPool`):
    session state is set only on connections taken with `session`. The caller closes
    the pool."""
    with translate_errors():
        pool: asyncpg.Pool = await LeanPool(
            url,
            min_size=min_size,
            max_size=max_size,
            # What asyncpg.create_pool passes, with its defaults.
            max_queries=50_000,
            max_inactive_connection_lifetime=300.0,
            loop=None,
            connection_class=asyncpg.Connection,
            record_class=asyncpg.Record,
            init=_opened,
            reset=_no_session_state,
            server_settings=session_settings(statement_timeout_ms),
        )
    return pool
