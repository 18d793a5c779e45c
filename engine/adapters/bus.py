"""Redis Streams adapter: publishing, consumer groups and redelivery.

Redis follows PostgreSQL: everything published here was committed there first (the
relay), so Redis may be flushed and rebuilt. Delivery is at least once; consumers
dedupe on (execution_id, seq).

Key names (all in `Keys`, hash-tagged for Redis Cluster). The tag holds the prefix
and the partition, so each partition's streams share one slot (one XREADGROUP or a
MULTI over a partition's events and triggers stays legal in Cluster) while
partitions and deployments spread over slots:

    {<prefix>:p<n>}:events      events of partition n (n = crc32(execution_id) % partitions)
    {<prefix>:p<n>}:triggers    triggers of partition n (v, execution_id, message)
    {<prefix>:q:<queue>}:tasks  tasks of one queue (v, message); an activity's queue is
                                activity:<namespace>:<name> (engine.core.tasktokens)
    {<prefix>:q:<queue>}:leases hash: task id -> the entry an activity poller was given
    <stream>:dead               dead letters of <stream> (same slot as the stream)
    {<prefix>}:ready            readiness probe: a tiny value written (10 s expiry) by
                                /health/ready checks (Bus.ready_probe)
    {<prefix>}:intact           sentinel: present while Redis holds what steplog put
                                there; its absence means Redis was flushed or lost its
                                data, and engine.loops.recovery rebuilds from PostgreSQL
    {<prefix>:rl:<ns>}:<budget>           token bucket of one namespace and budget
    {<prefix>:rl:<ns>}:<budget>:k:<key>   token bucket of one API key in that namespace
                                (hashes {t: tokens, ts: Redis TIME of the last take}; a
                                namespace's buckets share one slot, so one script may
                                take from the key's and the namespace's bucket at once)

Redis Cluster (`connect` with ``cluster=True``, setting STEPLOG_REDIS_CLUSTER): every
command and every MULTI or script touches the keys of one hash tag, so one slot. Streams
of different partitions live in different slots: on a cluster `read_group` reads each
slot with its own XREADGROUP (concurrently) and `publish` runs each stream's script on
its own, concurrently (one Redis takes them all in one pipeline).

Trigger and task entries carry one engine.messages message each; `read_triggers`,
`read_tasks` and the `claim_*` methods return them decoded, an entry that does not
decode as `Malformed` (its consumer dead-letters it). Every call of the Redis client
raises steplog's errors (`translate`): `Unavailable` when Redis does not answer or
cannot serve now, `MissingGroup` for NOGROUP, `BusError` for any other refusal, each
with the client's error chained.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import zlib
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any
from uuid import UUID

import hiredis
import msgspec
import redis.exceptions
from prometheus_client import Counter
from redis.asyncio import Connection, Redis, RedisCluster
from redis.typing import EncodableT, FieldT

from engine import messages
from engine.core.events import CommittedEvent
from engine.errors import BusError, MissingGroup, SteplogError, Unavailable
from engine.messages import TaskMessage, TriggerMessage

ENTRY_VERSION = "1"  # of events-stream entries: a public format (docs/event-stream.md)
WORK_VERSION = "2"  # of trigger and task entries: internal (docs/internals.md "Bus")
DEFAULT_EVENTS_MAXLEN = 1_000_000

XaddFields = dict[FieldT, EncodableT]
# A report asked of `Bus.report`: its keys (trigger stream, task stream), its part of
# REPORT_LUA's arguments, and the future of its trigger's entry id.
_AskedReport = tuple[tuple[str, str], list[EncodableT], "asyncio.Future[str]"]
# A single Redis (or a primary behind Sentinel) or a Redis Cluster: the bus speaks both.
RedisClient = Redis | RedisCluster


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

    def leases(self, queue: str) -> str:
        """An activity queue's hash: task id -> the entry a poller was given (the entry
        to acknowledge when the result arrives, to touch at each heartbeat)."""
        return f"{{{self.prefix}:q:{queue}}}:leases"

    @staticmethod
    def dead_letters(stream: str) -> str:
        return f"{stream}:dead"

    @staticmethod
    def publish_token(stream: str, publisher: str) -> str:
        """The token of ``publisher``'s last publish to ``stream`` (a cluster's `Bus.publish`),
        in the stream's slot."""
        return f"{stream}:published:{publisher}"

    def sentinel(self) -> str:
        return f"{{{self.prefix}}}:intact"

    def engines(self) -> str:
        """The live engines: a sorted set of consumer names, each scored with the time
        (Redis's clock, ms) its membership lapses (`Bus.engine_members`)."""
        return f"{{{self.prefix}}}:engines"

    def ready_probe(self) -> str:
        return f"{{{self.prefix}}}:ready"

    def rate_bucket(self, namespace: str, budget: str, key_id: str | None = None) -> str:
        """The token bucket of ``namespace`` (or of its API key ``key_id``) for
        ``budget``; braces in a name are escaped so the hash tag stays the namespace."""
        tag = f"{{{self.prefix}:rl:{_tag_safe(namespace)}}}:{budget}"
        return tag if key_id is None else f"{tag}:k:{_tag_safe(key_id)}"


def _hash_tag(key: str) -> str:
    """The part of ``key`` Redis Cluster hashes: its ``{...}`` tag, else all of it."""
    if key.startswith("{"):
        end = key.find("}")
        if end > 1:
            return key[: end + 1]
    return key


def _tag_safe(name: str) -> str:
    return name.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


class PartlyPublished(Unavailable):
    """Redis published part of a `Bus.publish` and refused the rest as an outage (OOM
    at the edge of maxmemory, a failover under way, ...). Every stream got all of its
    entries or none: ``events``, ``triggers`` and ``tasks`` are those of the streams
    refused, in the order given; publish them (only them) again."""

    def __init__(
        self,
        message: str,
        events: Sequence[CommittedEvent],
        triggers: Sequence[tuple[UUID, TriggerMessage]],
        tasks: Sequence[TaskMessage],
    ) -> None:
        super().__init__(message)
        self.events = events
        self.triggers = triggers
        self.tasks = tasks


class StreamEntry(msgspec.Struct, frozen=True):
    """One stream entry as read by a consumer. ``deliveries`` is how many times it was
    delivered (1 for a first read; from XPENDING after `Bus.autoclaim`)."""

    stream: str
    id: str
    fields: dict[str, bytes]
    deliveries: int = 1


class TriggerDelivery(msgspec.Struct, frozen=True):
    """A trigger-stream entry and the message it carries for ``execution_id``."""

    entry: StreamEntry
    execution_id: UUID
    message: TriggerMessage


class TaskDelivery(msgspec.Struct, frozen=True):
    """A task-stream entry and the task it carries."""

    entry: StreamEntry
    message: TaskMessage


class Malformed(msgspec.Struct, frozen=True):
    """An entry of a trigger or task stream that carries no message this version can
    read; ``reason`` says why. Consumers dead-letter it (it would never decode)."""

    entry: StreamEntry
    reason: str


# --- Redis errors, translated once ------------------------------------------------------

# Replies of a server that is up but cannot serve now (loading, disk or memory full,
# a replica, a busy script, a cluster failing over): an outage, like no answer at all.
_OUTAGE_CODES = frozenset(
    {"LOADING", "MISCONF", "READONLY", "OOM", "BUSY", "MASTERDOWN", "NOREPLICAS"}
    | {"CLUSTERDOWN", "TRYAGAIN"}
)
_OUTAGE_TYPES = (
    redis.exceptions.ConnectionError,  # BusyLoadingError too
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
    OSError,
)


# A command refused inside a Lua script comes back wrapped: "Error running script (call
# to f_...): @user_script:37: @user_script: 37: -OOM command not allowed ..."; through
# redis.pcall (REPORT_LUA), as "@user_script: 16: -OOM command not allowed ...".
_SCRIPT_REPLY = re.compile(r": -([A-Z]+) ")


def _reply_code(exc: BaseException) -> str:
    """The error code of a Redis reply ("NOGROUP", ...), also when a pipeline or a
    script wrapped it."""
    text = str(exc)
    _, marker, rest = text.partition("caused error: ")
    # redis-py 8 writes the wrapped error's args there: "caused error: ('BUSY ...',)".
    text = rest.lstrip("('\"") if marker else text
    if text.startswith(("Error running script", "@user_script")) and (
        found := _SCRIPT_REPLY.search(text)
    ):
        return found.group(1)
    # An EXEC refused (EXECABORT) names the refusal: "Transaction discarded because of:
    # OOM command not allowed ..." (redis-py drops the EXECABORT code).
    _, marker, rest = text.partition("Transaction discarded because of: ")
    if marker:
        return rest.split(" ", 1)[0]
    return text.split(" ", 1)[0]


def translate(exc: Exception) -> SteplogError:
    """The steplog error for an error of the Redis client: Unavailable for a server that
    does not answer or cannot serve now, MissingGroup for NOGROUP, BusError otherwise."""
    code = _reply_code(exc)
    if isinstance(exc, _OUTAGE_TYPES) or code in _OUTAGE_CODES:
        return Unavailable(f"Redis is unavailable: {exc}")
    if code == "NOGROUP":
        return MissingGroup(str(exc))
    return BusError(f"Redis refused a command: {exc}")


REDIS_ERRORS = Counter(
    "steplog_redis_errors",
    "Redis calls that failed, by kind: unavailable (no answer, or cannot serve now), "
    "missing_group (NOGROUP: Redis was flushed), refused (any other error reply).",
    ("kind",),
)
REDIS_CONNECTIONS = Counter(
    "steplog_redis_connections_opened",
    "Connections to Redis opened (the first ones, then every reconnect).",
)
_ERROR_KINDS: dict[type[SteplogError], str] = {
    Unavailable: "unavailable",
    MissingGroup: "missing_group",
    BusError: "refused",
}
for _kind in _ERROR_KINDS.values():
    REDIS_ERRORS.labels(_kind)  # every kind shown from the start, at 0


def _add_arguments(token: str, entries: list[tuple[XaddFields, int | None]]) -> list[EncodableT]:
    """ADD_LUA's ARGV for one stream's ``entries``."""
    maxlen = entries[0][1]  # one per stream: its kind's
    args: list[EncodableT] = [token, "" if maxlen is None else maxlen]
    for fields, _ in entries:
        args.append(2 * len(fields))
        for item in fields.items():
            args.extend(item)
    return args


@contextlib.contextmanager
def _redis_errors() -> Iterator[None]:
    """Around every call of the client: raise steplog's error, the driver's chained."""
    try:
        yield
    except (redis.exceptions.RedisError, OSError) as exc:
        error = translate(exc)
        REDIS_ERRORS.labels(_ERROR_KINDS.get(type(error), "refused")).inc()
        raise error from exc


def _counting(base: type[Any]) -> type[Any]:
    """``base`` (a redis-py connection class) counting each socket it opens; counted at
    the socket's connect, which every redis-py version and connection kind (TCP, unix
    socket) goes through (on_connect is skipped by some)."""
    if getattr(base, "_steplog_counted", False):
        return base

    connect_socket: Any = base._connect  # redis-py's own, untyped

    async def _connect(self: Any) -> None:
        await connect_socket(self)
        REDIS_CONNECTIONS.inc()

    return type(
        f"Counting{base.__name__}", (base,), {"_connect": _connect, "_steplog_counted": True}
    )


def count_connections(client: RedisClient) -> None:
    """Count every connection ``client`` opens (steplog_redis_connections_opened), on a
    single Redis or on every node of a cluster; idempotent."""
    if isinstance(client, RedisCluster):
        manager = client.nodes_manager
        kwargs = manager.connection_kwargs
        kwargs["connection_class"] = _counting(kwargs.get("connection_class", Connection))
        for node in [*manager.startup_nodes.values(), *manager.nodes_cache.values()]:
            node.connection_class = _counting(node.connection_class)
        return
    pool = client.connection_pool
    pool.connection_class = _counting(pool.connection_class)


def connect(url: str, *, cluster: bool = False, **options: Any) -> RedisClient:
    """A client for the Redis at ``url`` (redis://, rediss:// or unix://), or for the
    Redis Cluster one of whose nodes ``url`` names when ``cluster`` (the client finds
    the other nodes and follows slot moves). ``options`` go to the client (timeouts)."""
    if cluster:
        return RedisCluster.from_url(url, **options)
    return Redis.from_url(url, **options)


def lean_connections(client: RedisClient) -> None:
    """Have ``client``'s connections pack commands with hiredis and send them without a
    task each; the bytes on the wire and the errors raised are redis-py's own.

    - Packing: redis-py's asyncio packer is Python, which re-joins the buffer at every
      argument (about 8% of a busy steplog process's CPU, most of it the relay's
      XADDs); hiredis (C) packs the same bytes. Each argument is still encoded by
      redis-py's own encoder, and a command name with a space (``"CLIENT KILL"``) is
      still split.
    - Sending: with a socket timeout, redis-py waits for every write with
      ``asyncio.wait_for``, which on Python 3.11 wraps the write in a Task of its own
      (about 10 us a command, six commands a task3 transition). A write only has to
      wait when the socket's buffer is full (the transport above its high-water mark):
      only then is the timeout armed (``asyncio.timeout``, no task).

    Idempotent; a client without one connection pool (a cluster client) is left as it
    is."""
    pool = getattr(client, "connection_pool", None)
    if pool is None or getattr(pool.connection_class, "_steplog_lean", False):
        return
    base = pool.connection_class
    pool.connection_class = type(
        f"Lean{base.__name__}",
        (base,),
        {
            "pack_command": _pack_command,
            "send_packed_command": _sender(base.send_packed_command),
            "_steplog_lean": True,
        },
    )


def _sender(general: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """redis-py's `send_packed_command` (``general``), sending a connected connection's
    command with the socket timeout armed only if the write must wait for the socket."""

    async def send_packed_command(
        self: Any, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        writer = getattr(self, "_writer", None)
        if (
            not self.socket_timeout
            or writer is None
            or not self.is_connected
            or (check_health and self.health_check_interval)
            or writer.transport.is_closing()
        ):
            # Not connected, a health check due, no timeout: redis-py's own path.
            await general(self, command, check_health)
            return
        if isinstance(command, str):
            command = command.encode()
        if isinstance(command, bytes):
            command = [command]
        # What redis-py does around its write, errors included.
        try:
            writer.writelines(command)
            transport = writer.transport
            if transport.get_write_buffer_size() > transport.get_write_buffer_limits()[1]:
                async with asyncio.timeout(self.socket_timeout):
                    await writer.drain()
            else:
                await writer.drain()  # (returns at once: only a paused writer waits)
        except TimeoutError:
            await self.disconnect(nowait=True)
            raise redis.exceptions.TimeoutError("Timeout writing to socket") from None
        except OSError as exc:
            await self.disconnect(nowait=True)
            raise redis.exceptions.ConnectionError(f"Error while writing to socket: {exc}") from exc
        except BaseException:
            await self.disconnect(nowait=True)
            raise

    return send_packed_command


def _pack_command(self: Any, *args: EncodableT) -> list[bytes]:
    """redis-py's `pack_command` (same arguments, same bytes), packed by hiredis."""
    command = args[0]
    if isinstance(command, str):
        args = (*command.encode().split(), *args[1:])
    elif isinstance(command, bytes) and b" " in command:
        args = (*command.split(), *args[1:])
    if not _PACKED_AS_IS.issuperset(map(type, args)):
        # Anything else (a float, a memoryview, ...) as redis-py encodes it (or refuses).
        args = tuple(map(self.encoder.encode, args))
    # hiredis's stub types its argument as a 1-tuple; it takes a tuple of any length.
    packed: bytes = hiredis.pack_command(args)  # type: ignore[arg-type]
    return [packed]


# Argument types hiredis packs exactly as redis-py's encoder does (str as UTF-8, int in
# decimal; not bool, which redis-py refuses, nor float, whose spelling could differ).
_PACKED_AS_IS = frozenset({bytes, str, int})


class GroupStats(msgspec.Struct, frozen=True):
    """A consumer group's backlog on one stream: entries delivered and not acknowledged
    (``pending``), not yet delivered (``lag``), the age of the oldest pending entry by
    Redis's clock, and the entries of the stream's dead-letter stream."""

    pending: int = 0
    lag: int = 0
    oldest_pending_age_s: float = 0.0
    dead_letters: int = 0


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _entry(stream: str, entry_id: Any, fields: Any, deliveries: int = 1) -> StreamEntry:
    """A stream entry as the consumers read it. A field name that is not UTF-8 (no entry
    steplog writes has one) is read with U+FFFD in place of its bad bytes: the entry
    then lacks the fields its reader needs and is malformed, never an error of the
    read that would fail every later read of the same pending entry."""
    decoded: dict[str, bytes] | None = None
    if (
        type(fields) is dict
        and _BYTES.issuperset(map(type, fields))
        and _BYTES.issuperset(map(type, fields.values()))
    ):
        # What the client parses every entry into (bytes to bytes): decoded in C, as
        # below per field (every consumer reads every entry through here).
        try:
            decoded = dict(zip(map(bytes.decode, fields), fields.values(), strict=True))
        except UnicodeDecodeError:
            pass
    if decoded is None:
        decoded = {_name(k): _bytes(v) for k, v in _pairs(fields)}
    return StreamEntry(stream=stream, id=_str(entry_id), fields=decoded, deliveries=deliveries)


def _name(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


_BYTES = frozenset((bytes,))


def _pairs(fields: Any) -> Iterator[tuple[Any, Any]]:
    """An entry's (field, value) pairs: from a dict, or from a raw reply's flat list."""
    if isinstance(fields, dict):
        return iter(fields.items())
    items = list(fields or ())
    return zip(items[::2], items[1::2], strict=True)


def event_fields(event: CommittedEvent) -> XaddFields:
    """The fields of an events-stream entry (docs/event-stream.md): a public format."""
    return {
        "v": ENTRY_VERSION,
        "execution_id": str(event.execution_id),
        "seq": event.seq,
        "position": event.position,
        "type": event.type,
        "timestamp": event.timestamp.isoformat(),
        "data": event.data,
    }


def trigger_fields(execution_id: UUID, message: TriggerMessage) -> XaddFields:
    """The fields of a trigger-stream entry (docs/internals.md "Bus")."""
    return {
        "v": WORK_VERSION,
        "execution_id": str(execution_id),
        "message": messages.encode(message),
    }


def task_fields(message: TaskMessage) -> XaddFields:
    """The fields of a task-stream entry (docs/internals.md "Bus")."""
    return {"v": WORK_VERSION, "message": messages.encode(message)}


_UNREADABLE = (KeyError, ValueError, msgspec.DecodeError)  # ValueError: UnicodeDecodeError too


def _reason(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"


def read_trigger(entry: StreamEntry) -> TriggerDelivery | Malformed:
    """The message of a trigger-stream entry (version 2, or 1 written before messages)."""
    f = entry.fields
    try:
        execution_id = UUID(f["execution_id"].decode())
        version = f.get("v", b"").decode()
        message: TriggerMessage
        if version == WORK_VERSION:
            message = messages.decode_trigger(f["message"])
        elif version == "1":
            message = messages.upcast_v1_trigger(f["kind"].decode(), f.get("body", b"{}"))
        else:
            raise ValueError(f"unknown entry version {version!r}")
    except _UNREADABLE as exc:
        return Malformed(entry, _reason(exc))
    return TriggerDelivery(entry, execution_id, message)


def read_task(entry: StreamEntry) -> TaskDelivery | Malformed:
    """The message of a task-stream entry (version 2, or 1 written before messages)."""
    f = entry.fields
    try:
        version = f.get("v", b"").decode()
        if version == WORK_VERSION:
            message = messages.decode_task(f["message"])
        elif version == "1":
            execution_id = UUID(f["execution_id"].decode())
            message = messages.upcast_v1_task(execution_id, int(f["seq"]), f["data"])
        else:
            raise ValueError(f"unknown entry version {version!r}")
    except _UNREADABLE as exc:
        return Malformed(entry, _reason(exc))
    return TaskDelivery(entry, message)


class Bus:
    """Redis Streams over a client it does not own (it never closes it).

    ``events_maxlen`` trims each events stream approximately (MAXLEN ~): events are
    kept in PostgreSQL, the stream is a feed. Trigger and task streams are trimmed only
    when ``work_maxlen`` is set, because trimming them could drop undelivered work.
    """

    def __init__(
        self,
        redis: RedisClient,
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
        self.cluster = isinstance(redis, RedisCluster)
        count_connections(redis)
        lean_connections(redis)
        self._events_maxlen = events_maxlen
        self._work_maxlen = work_maxlen
        self._renew = redis.register_script(RENEW_LUA)
        self._reclaim = redis.register_script(RECLAIM_LUA)
        self._members = redis.register_script(MEMBERS_LUA)
        self._add = redis.register_script(ADD_LUA)
        # This bus's name in the keys of its last publish tokens (ADD_LUA).
        self._publisher = secrets.token_hex(6)
        self._dead_letter = redis.register_script(DEAD_LETTER_LUA)
        self._release = redis.register_script(RELEASE_LUA)
        self._report = redis.register_script(REPORT_LUA)
        self._reports_asked: list[_AskedReport] | None = None  # (see `report`)
        self._runs: set[asyncio.Future[None]] = set()

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
        events: Sequence[CommittedEvent] = (),
        triggers: Sequence[tuple[UUID, TriggerMessage]] = (),
        tasks: Sequence[TaskMessage] = (),
        *,
        token: str | None = None,
    ) -> None:
        """XADD all of it in one pipelined round trip: events, triggers (each with its
        execution's id) and tasks (to their queues), each stream's entries in the order
        given (so per-execution order is kept per stream).

        Each stream's entries go in one script run (ADD_LUA), so Redis adds all of them
        or none (a script is refused at its first write, e.g. OOM at the edge of
        maxmemory, or runs to its end; a stream is one slot, so this holds on Redis
        Cluster too). When Redis refuses some streams and accepts others,
        `PartlyPublished` carries what was not published, for the caller to publish
        (only that) again, whatever the refusal; when it refuses everything, the refusal
        is raised as usual.

        A reply lost to a dropped connection leaves unknown what passed. The client
        resends after a connection error (a cluster's after any, also one caused by
        another command's failure, which closes the connections in use), and the caller
        retries: each stream's part is added once per ``token``, so a publish sent again
        with the same token adds nothing to a stream that has it already. Give the same
        token to the retries of one publish (the relay does, per batch); by default each
        call has its own, which covers the client's resends."""
        plan: dict[str, list[tuple[XaddFields, int | None]]] = {}
        for event in events:
            plan.setdefault(self._event_stream(event), []).append(
                (event_fields(event), self._events_maxlen)
            )
        for execution_id, message in triggers:
            plan.setdefault(self._trigger_stream(execution_id), []).append(
                (trigger_fields(execution_id, message), self._work_maxlen)
            )
        for task in tasks:
            plan.setdefault(self.keys.tasks(task.queue), []).append(
                (task_fields(task), self._work_maxlen)
            )
        if not plan:
            return
        token = token or secrets.token_hex(8)
        if self.cluster:
            refused = await self._add_per_stream(plan, token)
        else:
            refused = await self._add_pipelined(plan, token)
        if not refused:
            return
        errors = list(refused.values())
        translated = [translate(e) for e in errors]
        for error in translated:
            REDIS_ERRORS.labels(_ERROR_KINDS.get(type(error), "refused")).inc()
        if len(refused) < len(plan):
            # Whatever the refusal (an outage, or not: a bug, a key of another type), what
            # passed must not be published again: the caller retries only the rest.
            raise PartlyPublished(
                f"Redis accepted {len(plan) - len(refused)} of {len(plan)} streams: "
                f"{translated[0]}",
                [e for e in events if self._event_stream(e) in refused],
                [t for t in triggers if self._trigger_stream(t[0]) in refused],
                [t for t in tasks if self.keys.tasks(t.queue) in refused],
            ) from errors[0]
        for error, cause in zip(translated, errors, strict=True):
            if not isinstance(error, Unavailable):
                raise error from cause
        raise translated[0] from errors[0]

    async def _add_pipelined(
        self, plan: dict[str, list[tuple[XaddFields, int | None]]], token: str
    ) -> dict[str, Exception]:
        """Each stream's XADDs in one run of ADD_LUA of its own (all or none, once per
        ``token``), all the streams in one pipelined round trip; the refusal of each
        stream refused. One command and one reply per stream: with a MULTI/EXEC per
        stream (before), the client's cost per command (arguments, packing, reply
        parsing) was most of what the relay spent publishing, and a reply lost after
        the EXEC ran left the relay's retry to add the stream's part again."""
        refused: dict[str, Exception] = {}
        for attempt in range(2):
            pipe = self.redis.pipeline(transaction=False)
            for stream, entries in plan.items():
                pipe.execute_command(
                    "EVALSHA",
                    self._add.sha,
                    2,
                    stream,
                    self.keys.publish_token(stream, self._publisher),
                    *_add_arguments(token, entries),
                )
            with _redis_errors():
                replies = await pipe.execute(raise_on_error=False)
            unloaded: dict[str, list[tuple[XaddFields, int | None]]] = {}
            for (stream, entries), reply in zip(plan.items(), replies, strict=True):
                if isinstance(reply, redis.exceptions.NoScriptError) and not attempt:
                    unloaded[stream] = entries
                elif isinstance(reply, Exception):
                    refused[stream] = reply
            if not unloaded:
                break
            # Redis lost its scripts (a restart, SCRIPT FLUSH): nothing ran for those
            # streams; load the script and add them (only them) again.
            with _redis_errors():
                await self.redis.script_load(ADD_LUA)
            plan = unloaded
        return refused

    async def _add_per_stream(
        self, plan: dict[str, list[tuple[XaddFields, int | None]]], token: str
    ) -> dict[str, Exception]:
        """On a cluster: each stream's XADDs in one script of its own (atomic like a
        MULTI: a script is refused at its first write or not at all; once per ``token``,
        ADD_LUA), the streams concurrently (one round trip per stream, in parallel); the
        refusal of each stream refused, whatever its kind (a stream that failed is the
        caller's to publish again, one that passed is not). A cluster pipeline takes no
        MULTI across slots, and redis-py's transactional cluster pipeline queues each
        command on a thread of its own."""

        async def add(stream: str, entries: list[tuple[XaddFields, int | None]]) -> None:
            await self._add(
                keys=[stream, self.keys.publish_token(stream, self._publisher)],
                args=_add_arguments(token, entries),
            )

        outcomes = await asyncio.gather(
            *(add(stream, entries) for stream, entries in plan.items()), return_exceptions=True
        )
        refused: dict[str, Exception] = {}
        for stream, outcome in zip(plan, outcomes, strict=True):
            if isinstance(outcome, Exception):
                refused[stream] = outcome
            elif isinstance(outcome, BaseException):
                raise outcome
        return refused

    def _event_stream(self, event: CommittedEvent) -> str:
        return self.keys.events(self.partition_of(event.execution_id))

    def _trigger_stream(self, execution_id: UUID) -> str:
        return self.keys.triggers(self.partition_of(execution_id))

    async def publish_events(self, events: Sequence[CommittedEvent]) -> None:
        """XADD each event to its partition's events stream, pipelined."""
        await self.publish(events=events)

    def _xadd_trigger(self, pipe: Any, execution_id: UUID, message: TriggerMessage) -> None:
        pipe.xadd(
            self.keys.triggers(self.partition_of(execution_id)),
            trigger_fields(execution_id, message),
            maxlen=self._work_maxlen,
            approximate=True,
        )

    def _xadd_task(self, pipe: Any, task: TaskMessage) -> None:
        pipe.xadd(
            self.keys.tasks(task.queue),
            task_fields(task),
            maxlen=self._work_maxlen,
            approximate=True,
        )

    async def add_trigger(self, execution_id: UUID, message: TriggerMessage) -> str:
        """Add one trigger to its execution's partition stream; returns the entry id."""
        pipe = self.redis.pipeline(transaction=False)
        self._xadd_trigger(pipe, execution_id, message)
        with _redis_errors():
            (entry_id,) = await pipe.execute()
        return _str(entry_id)

    async def report(
        self,
        execution_id: UUID,
        message: TriggerMessage,
        stream: str,
        group: str,
        entry_id: str,
    ) -> str:
        """Add ``message`` (a task's result) to its execution's triggers, then
        acknowledge ``entry_id`` (the task's entry) of ``group`` on ``stream``; returns
        the trigger's entry id. One script run (REPORT_LUA), so one round trip, on a
        single Redis; two commands on a cluster, where the two streams are in slots of
        their own. The acknowledgement is made only once the result is added. A call
        that fails may have added the result (a reply lost; on a cluster, an
        acknowledgement that failed after it): its retry adds it again, and the engine
        records nothing for a result of an attempt already completed."""
        if self.cluster:
            added = await self.add_trigger(execution_id, message)
            await self.ack(stream, group, [entry_id])
            return added
        # The reports asked for in one turn of the event loop (the results of tasks
        # that ended together) go in one script run: one command for all of them.
        fields = trigger_fields(execution_id, message)
        report: list[EncodableT] = [group, entry_id, 2 * len(fields)]
        for field, value in fields.items():
            report.extend((field, value))
        reported: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        if self._reports_asked is None:
            self._reports_asked = []
            asyncio.get_running_loop().call_soon(self._reports_soon)
        self._reports_asked.append(((self._trigger_stream(execution_id), stream), report, reported))
        return await reported

    def _reports_soon(self) -> None:
        asked, self._reports_asked = self._reports_asked or [], None
        run = asyncio.ensure_future(self._run_reports(asked))
        self._runs.add(run)
        run.add_done_callback(self._runs.discard)

    async def _run_reports(self, asked: list[_AskedReport]) -> None:
        keys: list[str] = []
        args: list[EncodableT] = [self._work_maxlen or ""]
        for report_keys, report, _ in asked:
            keys.extend(report_keys)
            args.extend(report)
        try:
            with _redis_errors():
                replies = await self._report(keys=keys, args=args)
        except Exception as exc:
            for _, _, added in asked:
                if not added.done():
                    added.set_exception(exc)
            return
        except BaseException:  # (cancelled: the loop is closing) so are the reports
            for _, _, added in asked:
                added.cancel()
            raise
        for (_, _, added), (ok, value) in zip(asked, replies, strict=True):
            if added.done():  # (a caller that stopped waiting)
                continue
            if int(ok):
                added.set_result(_str(value))
            else:
                error = translate(redis.exceptions.ResponseError(_str(value)))
                REDIS_ERRORS.labels(_ERROR_KINDS.get(type(error), "refused")).inc()
                added.set_exception(error)

    async def add_task(self, task: TaskMessage) -> str:
        """Add one task to the stream of its queue; returns the entry id."""
        pipe = self.redis.pipeline(transaction=False)
        self._xadd_task(pipe, task)
        with _redis_errors():
            (entry_id,) = await pipe.execute()
        return _str(entry_id)

    # -- consuming ------------------------------------------------------------------------

    async def ensure_group(self, stream: str, group: str, start_id: str = "0") -> bool:
        """Create consumer group ``group`` on ``stream`` (and the stream) unless it exists.
        Returns True when created. Only BUSYGROUP (already exists) is ignored."""
        with _redis_errors():
            try:
                await self.redis.xgroup_create(stream, group, id=start_id, mkstream=True)
            except redis.exceptions.ResponseError as exc:
                if _reply_code(exc) == "BUSYGROUP":
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
        *,
        noack: bool = False,
    ) -> list[StreamEntry]:
        """XREADGROUP: new entries (id ">") of ``streams``, or from the given ids when
        ``streams`` maps stream -> id (e.g. "0" re-reads this consumer's pending entries).
        Blocks up to ``block_ms`` when given; returns [] on timeout. Raises MissingGroup
        when a group or stream does not exist (Redis was flushed). ``noack``: the entries
        read are not kept pending (nothing to acknowledge; a reader that dies with them
        loses them)."""
        ids = dict(streams) if isinstance(streams, Mapping) else dict.fromkeys(streams, ">")
        if not ids:
            return []
        if isinstance(self.redis, RedisCluster):
            by_slot: dict[int, dict[str, str]] = {}
            for stream, entry_id in ids.items():
                by_slot.setdefault(self.redis.keyslot(stream), {})[stream] = entry_id
            if len(by_slot) > 1:
                return await self._read_slots(
                    group, consumer, list(by_slot.values()), count, block_ms, noack
                )
        return await self._read_one_slot(group, consumer, ids, count, block_ms, noack)

    async def wait_for_entries(
        self, group: str, consumer: str, streams: Sequence[str], block_ms: int
    ) -> bool:
        """A doorbell: waits up to ``block_ms`` for an entry of ``streams`` that ``group``
        has not been given yet; when one comes, moves the group past every entry of
        ``streams`` added so far (XGROUP SETID ... $: none of them is delivered or kept
        pending) and returns True. For a reader that keeps what the entries announce
        elsewhere (the projectors: PostgreSQL): what it reads there after this returned
        covers every entry skipped, and an entry added later rings again. False on
        timeout. Reads one entry per stream, not the entries' data, which such a reader
        never needs: reading and parsing each event twice (a group per projection) was
        a tenth of a busy process's CPU. Raises MissingGroup as `read_group`."""
        if not await self.read_group(group, consumer, streams, 1, block_ms, noack=True):
            return False
        pipe = self.redis.pipeline(transaction=False)
        for stream in streams:
            pipe.xgroup_setid(stream, group, "$")
        with _redis_errors():
            await pipe.execute()
        return True

    async def _read_slots(
        self,
        group: str,
        consumer: str,
        slots: list[dict[str, str]],
        count: int,
        block_ms: int | None,
        noack: bool = False,
    ) -> list[StreamEntry]:
        """`read_group` over streams of several cluster slots: one XREADGROUP per slot,
        concurrently. First without blocking (what is there already, the busy case);
        when nothing is, every slot blocks (`_BlockedRead`) and the first answer ends
        the wait: the other reads are woken (CLIENT UNBLOCK), and what they got, if
        they got something meanwhile, is returned too. Nothing is cancelled, so no
        entry Redis delivered is dropped on the way."""
        reads = [self._read_one_slot(group, consumer, ids, count, None, noack) for ids in slots]
        # Every read ends before this returns or raises (a failed one, e.g. MissingGroup,
        # would otherwise leave the others running on, unawaited); the first error is
        # raised, as from one read.
        done = await asyncio.gather(*reads, return_exceptions=True)
        for part in done:
            if isinstance(part, BaseException):
                raise part
        entries = [e for part in done if not isinstance(part, BaseException) for e in part]
        if entries or block_ms is None:
            return entries
        assert isinstance(self.redis, RedisCluster)
        blocked = [_BlockedRead(self.redis, ids) for ids in slots]
        tasks = [
            asyncio.ensure_future(read.run(group, consumer, count, block_ms, noack))
            for read in blocked
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            await asyncio.gather(
                *(read.wake(task) for read, task in zip(blocked, tasks, strict=True))
            )
            results = await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for task in tasks:  # only when this read itself is cancelled
                task.cancel()
        errors: list[BaseException] = []
        for result in results:
            if isinstance(result, BaseException):
                errors.append(result)
            else:
                entries.extend(result)
        if errors and not entries:
            raise errors[0]
        return entries

    async def _read_one_slot(
        self,
        group: str,
        consumer: str,
        ids: dict[str, str],
        count: int,
        block_ms: int | None,
        noack: bool = False,
    ) -> list[StreamEntry]:
        with _redis_errors():
            reply = await self.redis.xreadgroup(
                group, consumer, dict[Any, Any](ids), count=count, block=block_ms, noack=noack
            )
        return _entries(reply)

    async def read_triggers(
        self,
        group: str,
        consumer: str,
        streams: Sequence[str] | Mapping[str, str],
        count: int = 100,
        block_ms: int | None = None,
    ) -> list[TriggerDelivery | Malformed]:
        """`read_group` on trigger streams, each entry with its decoded message."""
        return [
            read_trigger(e)
            for e in await self.read_group(group, consumer, streams, count, block_ms)
        ]

    async def read_tasks(
        self,
        group: str,
        consumer: str,
        streams: Sequence[str] | Mapping[str, str],
        count: int = 100,
        block_ms: int | None = None,
    ) -> list[TaskDelivery | Malformed]:
        """`read_group` on task streams, each entry with its decoded task."""
        return [
            read_task(e) for e in await self.read_group(group, consumer, streams, count, block_ms)
        ]

    async def ack(self, stream: str, group: str, ids: Sequence[str]) -> int:
        """XACK; returns how many were pending."""
        if not ids:
            return 0
        with _redis_errors():
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
            with _redis_errors():
                reply = await self.redis.xautoclaim(
                    stream,
                    group,
                    consumer,
                    min_idle_ms,
                    start_id=cursor,
                    count=count - len(claimed),
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

    async def claim_triggers(
        self, stream: str, group: str, consumer: str, min_idle_ms: int, count: int = 100
    ) -> list[TriggerDelivery | Malformed]:
        """`autoclaim` on a trigger stream, each entry with its decoded message."""
        entries = await self.autoclaim(stream, group, consumer, min_idle_ms, count)
        return [read_trigger(e) for e in entries]

    async def claim_tasks(
        self, stream: str, group: str, consumer: str, min_idle_ms: int, count: int = 100
    ) -> list[TaskDelivery | Malformed]:
        """`autoclaim` on a task stream, each entry with its decoded task."""
        return [
            read_task(e) for e in await self.autoclaim(stream, group, consumer, min_idle_ms, count)
        ]

    async def delivery_counts(
        self, stream: str, group: str, ids: Sequence[str], consumer: str | None = None
    ) -> dict[str, int]:
        """Times delivered of the given pending entries (absent when not pending)."""
        if not ids:
            return {}
        ordered = sorted(ids, key=_id_key)
        with _redis_errors():
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
        (one script; both keys share a slot). Returns the dead letter's id."""
        fields: XaddFields = {k: v for k, v in entry.fields.items()}
        fields.update(
            {
                "dead_id": entry.id,
                "dead_group": group,
                "dead_reason": reason,
                "dead_deliveries": entry.deliveries,
            }
        )
        args: list[EncodableT] = [group, entry.id]
        for name, value in fields.items():
            args.extend((name, value))
        with _redis_errors():
            dead_id = await self._dead_letter(
                keys=[Keys.dead_letters(entry.stream), entry.stream], args=args
            )
        return _str(dead_id)

    async def touch(self, stream: str, group: str, consumer: str, ids: Sequence[str]) -> None:
        """Reset the idle time of entries ``consumer`` is still working on (XCLAIM JUSTID,
        which does not count a delivery), so `autoclaim` leaves them alone."""
        if ids:
            with _redis_errors():
                await self.redis.xclaim(stream, group, consumer, 0, list(ids), justid=True)

    async def renew(self, stream: str, group: str, consumer: str, ids: Sequence[str]) -> set[str]:
        """Reset the idle time of those of ``ids`` still pending for ``consumer`` and
        return them; an entry another consumer has claimed meanwhile (after an outage
        longer than the visibility timeout) is left to it, where `touch` would take it
        back. One script, so no claim can come between the check and the reset."""
        if not ids:
            return set()
        with _redis_errors():
            kept = await self._renew(keys=[stream], args=[group, consumer, *ids])
        return {_str(entry_id) for entry_id in kept}

    async def reclaim_tasks(
        self, stream: str, group: str, consumer: str, ids: Sequence[str]
    ) -> list[TaskDelivery | Malformed]:
        """Claim again, as a new delivery (counted), those of ``ids`` still pending for
        ``consumer``, whatever their idle time, each with its decoded task; an entry
        another consumer has claimed meanwhile is left to it (one script, as `renew`).
        For entries whose claim ``consumer`` gave up without knowing whether anyone else
        took them (Redis did not confirm it in time)."""
        if not ids:
            return []
        with _redis_errors():
            rows = await self._reclaim(keys=[stream], args=[group, consumer, *ids])
        return [
            read_task(_entry(stream, entry_id, fields, int(count)))
            for entry_id, fields, count in rows
        ]

    # -- activity leases (engine.tasks) -----------------------------------------------------

    async def lease(self, queue: str, task_id: str, entry_id: str) -> None:
        """Remember which entry of ``queue``'s stream carries task ``task_id``."""
        with _redis_errors():
            await self.redis.hset(self.keys.leases(queue), task_id, entry_id)

    async def leased_entry(self, queue: str, task_id: str) -> str | None:
        with _redis_errors():
            entry_id = await self.redis.hget(self.keys.leases(queue), task_id)
        return None if entry_id is None else _str(entry_id)

    async def release(self, queue: str, group: str, task_id: str) -> bool:
        """Acknowledge the entry leased for ``task_id`` and forget the lease (one script:
        both keys share a slot). False when there was no lease."""
        entry_id = await self.leased_entry(queue, task_id)
        if entry_id is None:
            return False
        with _redis_errors():
            await self._release(
                keys=[self.keys.tasks(queue), self.keys.leases(queue)],
                args=[group, entry_id, task_id],
            )
        return True

    async def forget_lease(self, queue: str, task_id: str) -> None:
        with _redis_errors():
            await self.redis.hdel(self.keys.leases(queue), task_id)

    async def group_stats(self, stream: str, group: str) -> GroupStats:
        """``group``'s backlog on ``stream`` (zeros when the stream or group does not
        exist). ``lag`` needs Redis 7 (XINFO GROUPS); older servers report 0."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.xinfo_groups(stream)
        pipe.xpending(stream, group)
        pipe.xlen(Keys.dead_letters(stream))
        if isinstance(self.redis, RedisCluster):
            # A cluster pipeline takes no keyless command: TIME of the stream's node.
            with _redis_errors():
                groups, pending, dead = await pipe.execute(raise_on_error=False)
                now = await self.redis.time(target_nodes=self.redis.get_node_from_key(stream))
        else:
            pipe.time()
            with _redis_errors():
                groups, pending, dead, now = await pipe.execute(raise_on_error=False)
        for reply in (dead, now):
            if isinstance(reply, Exception):
                with _redis_errors():
                    raise reply
        info = (
            next(
                (g for g in groups if _str(g.get("name")) == group),
                None,
            )
            if isinstance(groups, list)
            else None
        )
        if info is None or isinstance(pending, Exception):
            return GroupStats(dead_letters=int(dead))
        count = int(pending.get("pending") or 0)
        age = 0.0
        if count and pending.get("min"):
            oldest_ms, _ = _id_key(_str(pending["min"]))
            now_ms = int(now[0]) * 1000 + int(now[1]) // 1000
            age = max(0.0, (now_ms - oldest_ms) / 1000)
        return GroupStats(
            pending=count,
            lag=int(info.get("lag") or 0),
            oldest_pending_age_s=age,
            dead_letters=int(dead),
        )

    async def engine_members(
        self, consumer: str, ttl_s: float, *, leave: bool = False
    ) -> list[str]:
        """Keep ``consumer`` a live engine for ``ttl_s`` from now (or, with ``leave``, take
        it out at once); the live engines' names, sorted."""
        with _redis_errors():
            names = await self._members(
                keys=[self.keys.engines()],
                args=[consumer, max(int(ttl_s * 1000), 1), "0" if leave else "1"],
            )
        return sorted(_str(name) for name in names)

    async def is_intact(self) -> bool:
        """True while the sentinel key is present (see `Keys.sentinel`)."""
        with _redis_errors():
            return bool(await self.redis.exists(self.keys.sentinel()))

    async def mark_intact(self, value: str) -> None:
        """Set the sentinel (``value`` says who rebuilt Redis and when, for operators)."""
        with _redis_errors():
            await self.redis.set(self.keys.sentinel(), value)

    async def ping(self) -> bool:
        """True when Redis answers; Unavailable when it does not."""
        with _redis_errors():
            return bool(await self.redis.ping())

    async def ready_probe(self) -> None:
        """Return when Redis accepts writes now: one tiny SET with a 10 s expiry (PING
        answers while Redis refuses writes: maxmemory reached with noeviction, a
        read-only replica, writes paused). `Unavailable` when it does not."""
        with _redis_errors():
            await self.redis.set(self.keys.ready_probe(), b"1", px=10_000)


class _BlockedRead:
    """One blocking XREADGROUP on the streams of one cluster slot, on a connection of
    its own taken from the slot's node, that another task can wake (CLIENT UNBLOCK, by
    the connection's id) without losing what it read: the reply is always read."""

    _WAKE_EVERY_S = 0.05

    def __init__(self, cluster: RedisCluster, ids: dict[str, str]) -> None:
        self.cluster = cluster
        self.ids = ids
        node = cluster.get_node_from_key(next(iter(ids)))
        if node is None:  # no node owns the slot: the cluster is down or reconfiguring
            raise Unavailable(f"Redis Cluster: no node serves {next(iter(ids))}")
        self.node = node
        self.client_id: int | None = None

    async def run(
        self, group: str, consumer: str, count: int, block_ms: int, noack: bool = False
    ) -> list[StreamEntry]:
        command: list[EncodableT] = ["XREADGROUP", "GROUP", group, consumer, "COUNT", count]
        command += ["BLOCK", block_ms, *(["NOACK"] if noack else [])]
        command += ["STREAMS", *self.ids, *self.ids.values()]
        with _redis_errors():  # MaxConnectionsError: an outage as well
            connection = self.node.acquire_connection()
        try:
            with _redis_errors():
                await connection.send_packed_command(
                    connection.pack_commands([("CLIENT", "ID"), command])
                )
                self.client_id = int(await connection.read_response())
                reply = await connection.read_response()
        except BaseException:
            # A reply may still be on its way: this connection cannot serve another.
            await connection.disconnect()
            raise
        finally:
            self.node.release(connection)
        # Raw: RESP3 {stream: [[id, [field, value, ...]], ...]}, RESP2 [[stream, [...]]].
        by_stream = reply.items() if isinstance(reply, dict) else (reply or [])
        return [
            _entry(_str(stream), entry_id, fields)
            for stream, items in by_stream
            for entry_id, fields in items
            if fields is not None
        ]

    async def wake(self, task: asyncio.Future[list[StreamEntry]]) -> None:
        """Until ``task`` (this read's `run`) ends: unblock its read. Repeated, as the
        read may not have reached Redis yet; an error here only leaves the read to end
        at its block timeout."""
        while not task.done():
            if self.client_id is not None:
                try:
                    await self.cluster.execute_command(
                        "CLIENT", "UNBLOCK", self.client_id, target_nodes=self.node
                    )
                except (redis.exceptions.RedisError, OSError):
                    await asyncio.wait([task])
                    return
            await asyncio.wait([task], timeout=self._WAKE_EVERY_S)


def _entries(reply: Any) -> list[StreamEntry]:
    """The entries of an XREADGROUP reply (parsed by the client or raw)."""
    entries: list[StreamEntry] = []
    for stream, items in _stream_items(reply):
        for entry_id, fields in items:
            if fields is None:  # a pending entry that was trimmed away
                continue
            entries.append(_entry(stream, entry_id, fields))
    return entries


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


# --- token buckets (api rate limits) -------------------------------------------------------

# Refill and take one token from every bucket in KEYS, all or nothing, in one round trip.
# ARGV: rate_per_s_1, burst_1, rate_per_s_2, burst_2, ... (one pair per key). Time is
# Redis's own (TIME), so API processes whose clocks disagree share one notion of refill.
# A bucket never seen is full. The take happens only when every bucket holds a token; a
# refusal writes nothing. Returns {allowed (0/1), remaining (whole tokens left in the
# tightest bucket), limit (burst of that bucket), reset_s (until it is full again),
# retry_after_s (until every bucket holds a token; 0 when allowed)}; the floats as strings
# (Lua numbers are truncated to integers in replies). TIME in a script needs Redis >= 5
# (effects replication).
# Bus.renew: XCLAIM JUSTID (idle time reset, no delivery counted) of each entry still
# pending for the consumer (XPENDING with a consumer filters by owner).
RENEW_LUA = """
local kept = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  if #redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1, ARGV[2]) > 0 then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'JUSTID')
    kept[#kept + 1] = id
  end
end
return kept
"""

# Bus.reclaim_tasks: XCLAIM (a delivery counted) of each entry still pending for the
# consumer, as RENEW_LUA checks it; per entry claimed {id, fields, times delivered}. An
# entry trimmed from the stream meanwhile is left out (XCLAIM answers nothing for it; the
# next XAUTOCLAIM takes it off the pending list).
RECLAIM_LUA = """
local claimed = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1, ARGV[2])
  if #pending > 0 then
    local entry = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id)[1]
    if entry and entry[2] then
      claimed[#claimed + 1] = {entry[1], entry[2], pending[1][4] + 1}
    end
  end
end
return claimed
"""

# Bus.engine_members: KEYS[1] the engines' sorted set; ARGV[1] the consumer, ARGV[2] its
# time to live (ms), ARGV[3] "1" to stay a member, "0" to leave. Members past their time
# are dropped first; the set itself lapses with its last member. By Redis's clock, so the
# engines' own clocks do not matter.
MEMBERS_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if ARGV[3] == '1' then
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
else
  redis.call('ZREM', KEYS[1], ARGV[1])
end
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if #last > 0 then redis.call('PEXPIREAT', KEYS[1], tonumber(last[2]) + 1) end
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""

# How long a publisher's last publish token is kept per stream (it need only outlast the
# retries of that publish; a publisher that stopped leaves its key to expire).
PUBLISH_TOKEN_TTL_MS = 600_000

# Bus.publish: XADD every entry to KEYS[1] (a stream), all or none (a script is refused
# at its first write, e.g. OOM, or runs to its end), once per publish token: KEYS[2]
# holds the token of the publisher's last publish to the stream, ARGV[1], and a run that
# finds its own token there adds nothing (a publish sent again, by the client's retry
# after a reply lost or by the caller's retry, returns 0). ARGV[2]: MAXLEN ~ ('' for
# none); then per entry the count of its field and value items, then those items.
ADD_LUA = """
if redis.call('GET', KEYS[2]) == ARGV[1] then return 0 end
local args = {}
if ARGV[2] ~= '' then args = {'MAXLEN', '~', ARGV[2]} end
args[#args + 1] = '*'
local fixed = #args
local i = 3
local added = 0
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  for j = 1, n do args[fixed + j] = ARGV[i + j] end
  for j = fixed + n + 1, #args do args[j] = nil end
  redis.call('XADD', KEYS[1], unpack(args))
  added = added + 1
  i = i + n + 1
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', TOKEN_TTL_MS)
return added
""".replace("TOKEN_TTL_MS", str(PUBLISH_TOKEN_TTL_MS))

# Bus.dead_letter: XADD the entry's fields (ARGV[3..]) to KEYS[1] (the dead-letter stream)
# and XACK ARGV[2] of group ARGV[1] on KEYS[2] (the stream); the dead letter's id.
DEAD_LETTER_LUA = """
local fields = {}
for i = 3, #ARGV do fields[#fields + 1] = ARGV[i] end
local id = redis.call('XADD', KEYS[1], '*', unpack(fields))
redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
return id
"""

# Bus.report: XADD a task's result to KEYS[1] (its execution's triggers stream; ARGV[3]:
# MAXLEN ~, '' for none; ARGV[4..]: the entry's fields and values), then XACK ARGV[2] of
# group ARGV[1] on KEYS[2] (the task stream). Returns the trigger's id.
REPORT_LUA = """
-- Reports, each its result's XADD to a trigger stream, then (only once it is added)
-- the XACK of its task's entry. ARGV[1]: MAXLEN of the trigger streams ('' none);
-- then per report: its group, its entry id, its number of field/value items, those
-- items; KEYS per report: the trigger stream, the task stream. Returns per report
-- {1, the trigger's entry id} or {0, the error} (each report fails alone).
local out = {}
local a = 2
for k = 1, #KEYS, 2 do
  local group, entry, n = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2])
  local args = {}
  if ARGV[1] ~= '' then args = {'MAXLEN', '~', ARGV[1]} end
  args[#args + 1] = '*'
  for i = a + 3, a + 2 + n do args[#args + 1] = ARGV[i] end
  a = a + 3 + n
  local id = redis.pcall('XADD', KEYS[k], unpack(args))
  if type(id) == 'table' and id.err then
    out[#out + 1] = {0, id.err}
  else
    local acked = redis.pcall('XACK', KEYS[k + 1], group, entry)
    if type(acked) == 'table' and acked.err then
      out[#out + 1] = {0, acked.err}
    else
      out[#out + 1] = {1, id}
    end
  end
end
return out
"""

# Bus.release: XACK ARGV[2] of group ARGV[1] on KEYS[1] (a task stream), HDEL ARGV[3]
# from KEYS[2] (its leases).
RELEASE_LUA = """
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('HDEL', KEYS[2], ARGV[3])
return 1
"""

TAKE_TOKENS_LUA = """
-- Takes, in the order given, each of one token from each of its buckets, all or none.
-- ARGV, per take: its number of buckets, then per bucket the index of its key in KEYS,
-- its rate and its size. A take sees what the takes before it in the same run took.
-- Returns five values per take.
local now_t = redis.call('TIME')
local now = tonumber(now_t[1]) + tonumber(now_t[2]) / 1000000
local out = {}
local a = 1
while a <= #ARGV do
  local n = tonumber(ARGV[a])
  a = a + 1
  local keys, rates, bursts, tokens = {}, {}, {}, {}
  local allowed = 1
  local retry = 0
  for i = 1, n do
    keys[i] = KEYS[tonumber(ARGV[a])]
    rates[i] = tonumber(ARGV[a + 1])
    bursts[i] = tonumber(ARGV[a + 2])
    a = a + 3
    local v = redis.call('HMGET', keys[i], 't', 'ts')
    local t = tonumber(v[1])
    local ts = tonumber(v[2])
    if t == nil or ts == nil then
      t = bursts[i]
      ts = now
    end
    local elapsed = now - ts
    if elapsed < 0 then elapsed = 0 end
    t = math.min(bursts[i], t + elapsed * rates[i])
    tokens[i] = t
    if t < 1 then
      allowed = 0
      local wait = (1 - t) / rates[i]
      if wait > retry then retry = wait end
    end
  end
  local remaining = nil
  local limit = 0
  local reset = 0
  for i = 1, n do
    local t = tokens[i]
    if allowed == 1 then
      t = t - 1
      redis.call('HSET', keys[i], 't', string.format('%.17g', t), 'ts', string.format('%.6f', now))
      redis.call('PEXPIRE', keys[i], math.ceil((bursts[i] - t) / rates[i] * 1000) + 1000)
    end
    if remaining == nil or t < remaining then
      remaining = t
      limit = bursts[i]
      reset = (bursts[i] - t) / rates[i]
    end
  end
  out[#out + 1] = allowed
  out[#out + 1] = math.floor(remaining)
  out[#out + 1] = limit
  out[#out + 1] = string.format('%.6f', reset)
  out[#out + 1] = string.format('%.6f', retry)
end
return out
"""


class BucketLimit(msgspec.Struct, frozen=True):
    """A token bucket's refill rate (tokens per second, > 0) and size (>= 1)."""

    rate_per_s: float
    burst: int


class TakeResult(msgspec.Struct, frozen=True):
    """What `TokenBuckets.take` found: whether a token was taken from every bucket, and
    of the tightest bucket its whole tokens left, its size and the seconds until it is
    full; ``retry_after_s``: when a refused take could succeed (0 when allowed)."""

    allowed: bool
    remaining: int
    limit: int
    reset_s: float
    retry_after_s: float


class TokenBuckets:
    """Token buckets in Redis shared by every process on it, over a client it does not
    own. The script is sent by EVALSHA, loaded again when Redis answers NOSCRIPT (after
    a restart or SCRIPT FLUSH).

    The takes of one namespace (one hash slot) asked for in the same turn of the event
    loop go to Redis together, in one run of the script that takes them one after the
    other: under load, many requests share one round trip (and one command's client
    overhead), each still all or nothing over its own buckets, in the order asked."""

    def __init__(self, redis: RedisClient, prefix: str = "steplog") -> None:
        self.redis = redis
        self.keys = Keys(prefix)
        self._script = redis.register_script(TAKE_TOKENS_LUA)
        # Per hash slot, the takes asked for since its run was scheduled.
        self._asked: dict[
            str, list[tuple[Sequence[tuple[str, BucketLimit]], asyncio.Future[TakeResult]]]
        ] = {}
        self._runs: set[asyncio.Task[None]] = set()

    async def take(self, buckets: Sequence[tuple[str, BucketLimit]]) -> TakeResult:
        """Take one token from each of ``buckets`` (key, limit), atomically: all or none.
        The keys must share a hash slot (`Keys.rate_bucket` of one namespace do).
        Unavailable when Redis does not answer."""
        loop = asyncio.get_running_loop()
        taken: asyncio.Future[TakeResult] = loop.create_future()
        slot = _hash_tag(buckets[0][0])
        asked = self._asked.get(slot)
        if asked is None:
            self._asked[slot] = asked = []
            loop.call_soon(self._run_soon, slot)
        asked.append((buckets, taken))
        return await taken

    def _run_soon(self, slot: str) -> None:
        run = asyncio.ensure_future(self._run(self._asked.pop(slot)))
        self._runs.add(run)
        run.add_done_callback(self._runs.discard)

    async def _run(
        self, asked: list[tuple[Sequence[tuple[str, BucketLimit]], asyncio.Future[TakeResult]]]
    ) -> None:
        index: dict[str, int] = {}
        args: list[EncodableT] = []
        for buckets, _ in asked:
            args.append(len(buckets))
            for key, limit in buckets:
                args.extend(
                    (
                        index.setdefault(key, len(index) + 1),
                        repr(float(limit.rate_per_s)),
                        limit.burst,
                    )
                )
        try:
            with _redis_errors():
                reply = await self._script(keys=list(index), args=args)
        except Exception as exc:
            for _, taken in asked:
                if not taken.done():
                    taken.set_exception(exc)
            return
        except BaseException:  # (cancelled: the loop is closing) so are the takes
            for _, taken in asked:
                taken.cancel()
            raise
        for i, (_, taken) in enumerate(asked):
            allowed, remaining, limit_, reset_s, retry_s = reply[5 * i : 5 * i + 5]
            if not taken.done():  # (a caller that stopped waiting)
                taken.set_result(
                    TakeResult(
                        allowed=bool(int(allowed)),
                        remaining=max(0, int(remaining)),
                        limit=int(limit_),
                        reset_s=float(reset_s),
                        retry_after_s=float(retry_s),
                    )
                )

    async def ping(self) -> None:
        """One PING round trip (the ceiling bench/limiter.py measures against)."""
        with _redis_errors():
            await self.redis.ping()
