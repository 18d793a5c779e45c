"""The bus's connections pack commands with hiredis (engine.adapters.bus.pack_in_c): the
bytes sent are exactly those redis-py's own packer makes, and Redis takes them."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis
from redis.exceptions import DataError

from engine.adapters.bus import Bus, pack_in_c

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
    pack_in_c(client)
    pack_in_c(client)  # idempotent
    fast = client.connection_pool.make_connection()
    assert type(fast) is not type(plain)
    for command in COMMANDS:
        assert b"".join(fast.pack_command(*command)) == b"".join(plain.pack_command(*command))
    assert b"".join(fast.pack_commands(COMMANDS)) == b"".join(plain.pack_commands(COMMANDS))
    with pytest.raises(DataError):  # refused as redis-py refuses it
        fast.pack_command("SET", "k", True)


async def test_a_bus_client_packs_in_c_and_redis_takes_it(bus: Bus, redis: Redis) -> None:
    assert getattr(redis.connection_pool.connection_class, "_steplog_packs_in_c", False)
    stream = bus.keys.events(0)
    entry_id = await redis.xadd(stream, {"data": b'{"x":"\xc3\xa9"}', "seq": 7, "t": "é"})
    ((_, fields),) = await redis.xrange(stream, entry_id, entry_id)
    assert fields == {b"data": b'{"x":"\xc3\xa9"}', b"seq": b"7", b"t": "é".encode()}
