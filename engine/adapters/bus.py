"""Redis Streams adapter: publishing, consumer groups and redelivery.

Redis follows PostgreSQL: everything published here was committed there first (the
relay), so Redis may be flushed and rebuilt. Delivery is at least once; consumers
dedupe on (execution_id, seq).

Key names (all in `Keys`, hash-tagged for Redis Cluster). The tag holds the prefix
and the partition, so each partition's streams share one slot (one XREADGROUP or a
MULTI over a partition's events and triggers stays legal in Cluster) while
partitions and deployments spread over slots:

    {<prefix>:p<n>}:events      events of partition n (n = crc32(execution_id) % partitions)
    {<prefix>:p<n>}:triggers    triggers of partition n (kind, execution_id, body)
    {<prefix>:q:<queue>}:tasks  tasks of one queue
    <stream>:dead               dead letters of <stream> (same slot as the stream)
    {<prefix>}:intact           sentinel: present while Redis holds what steplog put
                                there; its absence means Redis was flushed or lost its
                                data, and engine.loops.recovery rebuilds from PostgreSQL

Streams of different partitions live in different slots: read them with one
`read_group` call per partition when running against Redis Cluster.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from uuid import UUID

import msgspec
from redis.asyncio import Redis
from redis.exceptions import ResponseError
from redis.typing import EncodableT, FieldT

from engine.adapters.store import StoredEvent

ENTRY_VERSION = "1"
TRIGGER_KINDS = ("begin", "task_result", "heartbeat", "timer", "stop")
DEFAULT_EVENTS_MAXLEN = 1_000_000

FieldValue = str | bytes | int | float
XaddFields = dict[FieldT, EncodableT]


def _xadd_fields(fields: Mapping[str, FieldValue]) -> XaddFields:
    return {k: v for k, v in fields.items()}


class Keys:
    """Every Redis key steplog uses, for one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def events(self, partition: int) -> str:
        return f"{{{self.prefix}:p{partition}}}:events"

    def triggers(self, partition: int) -> str:
        return f"{{{self.prefix}:p{partition}}}:triggers"

    def tasks(self, queue: str) -> str:
        return f"{{{self.prefix}:q:{queue}}}:tasks"

    @staticmethod
    def dead_letters(stream: str) -> str:
        return f"{stream}:dead"

    def sentinel(self) -> str:
        return f"{{{self.prefix}}}:intact"


class StreamEntry(msgspec.Struct, frozen=True):
    """One stream entry as read by a consumer. ``deliveries`` is how many times it was
    delivered (1 for a first read; from XPENDING after `Bus.autoclaim`)."""

    stream: str
    id: str
    fields: dict[str, bytes]
    deliveries: int = 1


class Trigger(msgspec.Struct, frozen=True):
    """A trigger to add to its execution's partition stream; ``body`` is JSON bytes."""

    execution_id: UUID
    kind: str
    body: bytes


class Task(msgspec.Struct, frozen=True):
    """A task to add to the stream of ``queue``."""

    queue: str
    fields: dict[str, FieldValue]


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _entry(stream: str, entry_id: Any, fields: Any, deliveries: int = 1) -> StreamEntry:
    return StreamEntry(
        stream=stream,
        id=_str(entry_id),
        fields={_str(k): _bytes(v) for k, v in (fields or {}).items()},
        deliveries=deliveries,
    )


def event_fields(event: StoredEvent) -> XaddFields:
    """The fields of an events-stream entry (docs/internals.md "Bus")."""
    return {
        "v": ENTRY_VERSION,
        "execution_id": str(event.execution_id),
        "seq": event.seq,
        "position": event.position,
        "type": event.type,
        "timestamp": event.timestamp.isoformat(),
        "data": event.data,
    }


class Bus:
    """Redis Streams over a client it does not own (it never closes it).

    ``events_maxlen`` trims each events stream approximately (MAXLEN ~): events are
    kept in PostgreSQL, the stream is a feed. Trigger and task streams are trimmed only
    when ``work_maxlen`` is set, because trimming them could drop undelivered work.
    """

    def __init__(
        self,
        redis: Redis,
        prefix: str = "steplog",
        partitions: int = 4,
        *,
        events_maxlen: int | None = DEFAULT_EVENTS_MAXLEN,
        work_maxlen: int | None = None,
    ) -> None:
        if partitions < 1:
            raise ValueError("partitions must be >= 1")
        self.redis = redis
        self.prefix = prefix
        self.partitions = partitions
        self.keys = Keys(prefix)
        self._events_maxlen = events_maxlen
        self._work_maxlen = work_maxlen

    # -- names ----------------------------------------------------------------------------

    def partition_of(self, execution_id: UUID | str) -> int:
        """crc32 of the canonical (lower-case, hyphenated) id text, modulo partitions."""
        text = str(execution_id if isinstance(execution_id, UUID) else UUID(execution_id))
        return zlib.crc32(text.encode()) % self.partitions

    def events_stream(self, partition: int) -> str:
        return self.keys.events(partition)

    def triggers_stream(self, partition: int) -> str:
        return self.keys.triggers(partition)

    def tasks_stream(self, queue: str) -> str:
        return self.keys.tasks(queue)

    def events_streams(self) -> list[str]:
        return [self.keys.events(p) for p in range(self.partitions)]

    def triggers_streams(self) -> list[str]:
        return [self.keys.triggers(p) for p in range(self.partitions)]

    # -- publishing -----------------------------------------------------------------------

    async def publish(
        self,
        events: Sequence[StoredEvent] = (),
        triggers: Iterable[Trigger] = (),
        tasks: Iterable[Task] = (),
    ) -> None:
        """XADD all of it in one pipelined round trip: events first, then triggers, then
        tasks, each in the order given (so per-execution order is kept per stream)."""
        pipe = self.redis.pipeline(transaction=False)
        for event in events:
            pipe.xadd(
                self.keys.events(self.partition_of(event.execution_id)),
                event_fields(event),
                maxlen=self._events_maxlen,
                approximate=True,
            )
        for trigger in triggers:
            self._xadd_trigger(pipe, trigger)
        for task in tasks:
            pipe.xadd(
                self.keys.tasks(task.queue),
                _xadd_fields(task.fields),
                maxlen=self._work_maxlen,
                approximate=True,
            )
        if len(pipe):
            await pipe.execute()

    async def publish_events(self, events: Sequence[StoredEvent]) -> None:
        """XADD each event to its partition's events stream, pipelined."""
        await self.publish(events=events)

    def _xadd_trigger(self, pipe: Any, trigger: Trigger) -> None:
        if trigger.kind not in TRIGGER_KINDS:
            raise ValueError(f"unknown trigger kind {trigger.kind!r}")
        pipe.xadd(
            self.keys.triggers(self.partition_of(trigger.execution_id)),
            {
                "v": ENTRY_VERSION,
                "kind": trigger.kind,
                "execution_id": str(trigger.execution_id),
                "body": trigger.body,
            },
            maxlen=self._work_maxlen,
            approximate=True,
        )

    async def add_trigger(self, execution_id: UUID, kind: str, body: bytes) -> str:
        """Add one trigger (kind: begin|task_result|timer|stop) to its partition's
        triggers stream; returns the entry id."""
        pipe = self.redis.pipeline(transaction=False)
        self._xadd_trigger(pipe, Trigger(execution_id, kind, body))
        (entry_id,) = await pipe.execute()
        return _str(entry_id)

    async def add_task(self, queue: str, fields: Mapping[str, FieldValue]) -> str:
        """Add one task to the stream of ``queue``; returns the entry id."""
        entry_id = await self.redis.xadd(
            self.keys.tasks(queue),
            _xadd_fields(fields),
            maxlen=self._work_maxlen,
            approximate=True,
        )
        return _str(entry_id)

    # -- consuming ------------------------------------------------------------------------

    async def ensure_group(self, stream: str, group: str, start_id: str = "0") -> bool:
        """Create consumer group ``group`` on ``stream`` (and the stream) unless it exists.
        Returns True when created. Only BUSYGROUP (already exists) is ignored."""
        try:
            await self.redis.xgroup_create(stream, group, id=start_id, mkstream=True)
        except ResponseError as exc:
            if str(exc).startswith("BUSYGROUP"):
                return False
            raise
        return True

    async def read_group(
        self,
        group: str,
        consumer: str,
        streams: Sequence[str] | Mapping[str, str],
        count: int = 100,
        block_ms: int | None = None,
    ) -> list[StreamEntry]:
        """XREADGROUP: new entries (id ">") of ``streams``, or from the given ids when
        ``streams`` maps stream -> id (e.g. "0" re-reads this consumer's pending entries).
        Blocks up to ``block_ms`` when given; returns [] on timeout."""
        ids = dict(streams) if isinstance(streams, Mapping) else dict.fromkeys(streams, ">")
        if not ids:
            return []
        reply = await self.redis.xreadgroup(
            group, consumer, dict[Any, Any](ids), count=count, block=block_ms
        )
        entries: list[StreamEntry] = []
        for stream, items in _stream_items(reply):
            for entry_id, fields in items:
                if fields is None:  # a pending entry that was trimmed away
                    continue
                entries.append(_entry(stream, entry_id, fields))
        return entries

    async def ack(self, stream: str, group: str, ids: Sequence[str]) -> int:
        """XACK; returns how many were pending."""
        if not ids:
            return 0
        return int(await self.redis.xack(stream, group, *ids))

    async def autoclaim(
        self, stream: str, group: str, consumer: str, min_idle_ms: int, count: int = 100
    ) -> list[StreamEntry]:
        """Claim for ``consumer`` up to ``count`` entries of ``group`` that have been pending
        (delivered, not acked) for at least ``min_idle_ms`` (XAUTOCLAIM, following its
        cursor through the whole pending list). Each entry carries its delivery count
        (XPENDING, this claim included) so the caller can dead-letter poison entries.
        Entries trimmed from the stream while pending are dropped by Redis and skipped."""
        claimed: list[tuple[str, Any]] = []
        cursor = "0-0"
        while len(claimed) < count:
            reply = await self.redis.xautoclaim(
                stream, group, consumer, min_idle_ms, start_id=cursor, count=count - len(claimed)
            )
            claimed.extend((_str(i), f) for i, f in reply[1] if f is not None)
            cursor = _str(reply[0])
            if cursor == "0-0":
                break
        if not claimed:
            return []
        counts = await self.delivery_counts(stream, group, [i for i, _ in claimed], consumer)
        return [
            _entry(stream, entry_id, fields, counts.get(entry_id, 1))
            for entry_id, fields in claimed
        ]

    async def delivery_counts(
        self, stream: str, group: str, ids: Sequence[str], consumer: str | None = None
    ) -> dict[str, int]:
        """Times delivered of the given pending entries (absent when not pending)."""
        if not ids:
            return {}
        ordered = sorted(ids, key=_id_key)
        rows = await self.redis.xpending_range(
            stream,
            group,
            min=ordered[0],
            max=ordered[-1],
            count=max(len(ids), 1) * 2,
            consumername=consumer,
        )
        wanted = set(ids)
        counts: dict[str, int] = {}
        for row in rows:
            entry_id = _str(row["message_id"])
            if entry_id in wanted:
                counts[entry_id] = int(row["times_delivered"])
        return counts

    async def dead_letter(self, entry: StreamEntry, group: str, reason: str) -> str:
        """Move ``entry`` to its stream's dead-letter stream and XACK it, atomically
        (MULTI; both keys share a slot). Returns the dead letter's id."""
        pipe = self.redis.pipeline(transaction=True)
        fields: XaddFields = _xadd_fields(entry.fields)
        fields.update(
            {
                "dead_id": entry.id,
                "dead_group": group,
                "dead_reason": reason,
                "dead_deliveries": entry.deliveries,
            }
        )
        pipe.xadd(Keys.dead_letters(entry.stream), fields)
        pipe.xack(entry.stream, group, entry.id)
        dead_id, _ = await pipe.execute()
        return _str(dead_id)

    async def touch(self, stream: str, group: str, consumer: str, ids: Sequence[str]) -> None:
        """Reset the idle time of entries ``consumer`` is still working on (XCLAIM JUSTID,
        which does not count a delivery), so `autoclaim` leaves them alone."""
        if ids:
            await self.redis.xclaim(stream, group, consumer, 0, list(ids), justid=True)

    async def is_intact(self) -> bool:
        """True while the sentinel key is present (see `Keys.sentinel`)."""
        return bool(await self.redis.exists(self.keys.sentinel()))

    async def mark_intact(self, value: str) -> None:
        """Set the sentinel (``value`` says who rebuilt Redis and when, for operators)."""
        await self.redis.set(self.keys.sentinel(), value)

    async def ping(self) -> bool:
        """True when Redis answers (raises the client's error when it does not)."""
        return bool(await self.redis.ping())


def is_missing_group(exc: BaseException) -> bool:
    """True for the error of reading a group or stream that does not exist (NOGROUP),
    e.g. after Redis was flushed: the consumer should create its group again."""
    return isinstance(exc, ResponseError) and str(exc).startswith("NOGROUP")


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _stream_items(reply: Any) -> list[tuple[str, list[Any]]]:
    """Normalise XREADGROUP replies: RESP2 gives [[stream, items]], RESP3 a dict."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return [(_str(k), v[0] if v and isinstance(v[0], list) else v) for k, v in reply.items()]
    return [(_str(stream), items) for stream, items in reply]
