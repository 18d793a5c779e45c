"""examples/consumer.py against real Redis: its own group, each event handled once
per (execution_id, seq) despite redelivery, and a restart resumes where it was."""

from __future__ import annotations

import asyncio
import importlib.util
import sqlite3
from pathlib import Path
from types import ModuleType

from engine.adapters.bus import Bus
from engine.adapters.store import EventStore, NewEvent
from engine.core import events as ev
from tests.integration.test_projection_executions import T0, start


def _example() -> ModuleType:
    path = Path(__file__).parents[2] / "examples" / "consumer.py"
    spec = importlib.util.spec_from_file_location("example_consumer", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_the_example_consumer_handles_each_event_once_and_resumes(
    store: EventStore, bus: Bus, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    consumer = _example()
    db = tmp_path / "effects.sqlite3"
    argv = ["--redis", redis_url, "--prefix", redis_prefix, "--group", "g", "--start", "0"]
    argv += ["--db", str(db), "--once", "--block-ms", "100", "--partitions", str(bus.partitions)]
    args = consumer.parser().parse_args(argv)
    eid = await start(store)
    done = ev.ExecutionSucceeded(output=1)
    await store.append(eid, 1, [NewEvent("ExecutionSucceeded", ev.encode_event(done), T0)])
    events = await store.load(eid)
    other = await start(store)
    # Published twice: at-least-once delivery, as after a relay crash.
    await bus.publish_events(events + events[:1])

    await asyncio.to_thread(consumer.consume, args)
    await bus.publish_events(events + (await store.load(other)))  # redelivered, plus a new one
    await asyncio.to_thread(consumer.consume, args)

    rows = sqlite3.connect(db).execute("SELECT execution_id, seq, type FROM effects").fetchall()
    assert sorted(rows) == sorted(
        [
            (str(eid), 1, "ExecutionStarted"),
            (str(eid), 2, "ExecutionSucceeded"),
            (str(other), 1, "ExecutionStarted"),
        ]
    )
    assert consumer.partition_of(str(eid), bus.partitions) == bus.partition_of(eid)
    for stream in bus.events_streams():
        assert (await bus.redis.xpending(stream, "g"))["pending"] == 0
