"""The bus's connections (engine.adapters.bus.lean_connections) pack commands with
hiredis: the bytes sent are exactly those redis-py's own packer makes, and Redis takes
them; and they send without a task per command, the socket timeout still bounding a
write that Redis does not take."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import DataError
from redis.exceptions import TimeoutError as RedisTimeoutError

from engine.adapters.bus import Bus, lean_connections

COMMANDS: list[tuple[object, ...]] = [
    ("XADD", "s{p}", "MAXLEN", "~", 1000, "*", "data", b'{"a":1}' * 3000, "n", -5),
    ("XADD", "s{p}", "*", "text", "é ü ∑", "raw", b"\x00\xff\r\n", "f", 0.1),
    ("CLIENT KILL", "ID", 5),
    (b"CONFIG GET", b"maxmemory"),
    ("SET", "k", memoryview(b"xyz"), "EX", 10),
    ("EVALSHA", "0" * 40, 2, "a", "b", 1.5, 10**20),
]


def test_packing_in_c_sends_the_bytes_redis_py_would() -> None:
    client = Redis.from_url("redis://127.0.0.1:1")  # never connected
    plain = client.connection_pool.make_connection()
    lean_connections(client)
    lean_connections(client)  # idempotent
    fast = client.connection_pool.make_connection()
    assert type(fast) is not type(plain)
    for command in COMMANDS:
        assert b"".join(fast.pack_command(*command)) == b"".join(plain.pack_command(*command))
    assert b"".join(fast.pack_commands(COMMANDS)) == b"".join(plain.pack_commands(COMMANDS))
    with pytest.raises(DataError):  # refused as redis-py refuses it
        fast.pack_command("SET", "k", True)


async def test_a_bus_client_packs_in_c_and_redis_takes_it(bus: Bus, redis: Redis) -> None:
    assert getattr(redis.connection_pool.connection_class, "_steplog_lean", False)
    stream = bus.keys.events(0)
    entry_id = await redis.xadd(stream, {"data": b'{"x":"\xc3\xa9"}', "seq": 7, "t": "é"})
    ((_, fields),) = await redis.xrange(stream, entry_id, entry_id)
    assert fields == {b"data": b'{"x":"\xc3\xa9"}', b"seq": b"7", b"t": "é".encode()}


async def test_a_write_redis_does_not_take_times_out() -> None:
    """A server that accepts and never reads: the first writes fill the sockets' buffers,
    then a write has to wait, and the socket timeout ends it (redis-py's TimeoutError,
    the connection dropped), as redis-py's own sending does."""
    held: list[asyncio.StreamWriter] = []

    def never_read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.transport.pause_reading()
        held.append(writer)

    server = await asyncio.start_server(never_read, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    # No handshake to answer (RESP2, no client name or library info), no retries.
    client = Redis(
        host="127.0.0.1",
        port=port,
        socket_timeout=0.5,
        protocol=2,
        driver_info=None,
        retry=Retry(NoBackoff(), 0),
    )
    lean_connections(client)
    try:
        began = time.monotonic()
        with pytest.raises(RedisTimeoutError, match="writing"):
            for _ in range(64):  # 64 x 4 MiB: more than any socket buffers
                await client.execute_command("SET", "k", b"x" * (4 << 20))
        assert time.monotonic() - began < 30
    finally:
        await client.aclose()
        await client.connection_pool.disconnect()
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
