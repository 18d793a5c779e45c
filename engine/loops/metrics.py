"""The engine's Prometheus metrics (docs/observability.md lists them all). They live in
the process-wide default registry, which /metrics renders with the API's own
(api/metrics.py) and the metrics-only listener serves in a process without the API.
Labels never carry an execution id (unbounded cardinality): the logs and the
dead-letter streams name the executions. Each process serves its own values
(per-process metrics, no multiprocess mode): Prometheus sums them across instances.

`StreamSampler` measures what no loop sees by itself (consumer groups' pending
entries and lag, dead letters, timers pending) every few seconds, for the gauges and
for the readiness check of the roles (steplog.app.RoleHealth).
"""

from __future__ import annotations

import asyncio
import bisect
import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence

from prometheus_client import Counter, Gauge, Histogram

from engine.adapters.bus import Bus, GroupStats
from engine.adapters.store import EventStore, StoredEvent
from engine.core import events as ev
from engine.messages import DEFAULT_QUEUE, ENGINE_GROUP, WORKER_GROUP, TaskResult
from engine.stopping import sleep_or_stop

log = logging.getLogger("steplog.metrics")

# Latencies of work inside one process: 1 ms .. 10 s.
_FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Delays and durations that may be long: 1 ms .. 10 min.
_SLOW = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0)

TRIGGERS_DEAD_LETTERED = Counter(
    "steplog_triggers_dead_lettered",
    "Engine triggers moved to their dead-letter stream, by reason: malformed (no "
    "message), too_many_deliveries (claimed from dead consumers too often), "
    "repeated_failure (failed max_deliveries times in one engine).",
    ("reason",),
)

EXECUTIONS_FAILED_BY_ENGINE = Counter(
    "steplog_executions_failed_by_engine",
    "Executions the engine failed with States.Runtime because a trigger could not be "
    "recorded, by reason: invalid_data (the database refused the events), "
    "invalid_definition (the workflow no longer compiles), dead_lettered (the trigger "
    "kept failing and was dead-lettered).",
    ("reason",),
)

for _reason in ("malformed", "too_many_deliveries", "repeated_failure"):
    TRIGGERS_DEAD_LETTERED.labels(_reason)  # every reason shown from the start, at 0
for _reason in ("invalid_data", "invalid_definition", "dead_lettered"):
    EXECUTIONS_FAILED_BY_ENGINE.labels(_reason)

# -- executions (counted by the executions projection: once per execution) --------------
EXECUTIONS_STARTED = Counter(
    "steplog_executions_started",
    "Executions started, by workflow (counted by the projector as it records them).",
    ("workflow",),
)
EXECUTIONS_ENDED = Counter(
    "steplog_executions_ended",
    "Executions ended, by workflow and status (SUCCEEDED, FAILED, TIMED_OUT, ABORTED).",
    ("workflow", "status"),
)

# -- the engine loop -------------------------------------------------------------------
STATE_TRANSITIONS = Counter(
    "steplog_state_transitions",
    "States entered, by state type (Task, Pass, Choice, Wait, Succeed, Fail, Parallel, Map).",
    ("state_type",),
)
DECISION_SECONDS = Histogram(
    "steplog_decision_duration_seconds",
    "Time to handle one trigger: load the state, decide, append (conflicts retried).",
    buckets=_FAST,
)
DECISION_EVENTS = Histogram(
    "steplog_decision_events",
    "Events appended per decision (0: the trigger was ignored or changed nothing).",
    buckets=(0, 1, 2, 3, 5, 8, 13, 21, 50, 100),
)
APPEND_SECONDS = Histogram(
    "steplog_append_duration_seconds",
    "Time of one decide-and-append transaction of the engine (decide is pure and fast; "
    "this is the append's commit).",
    buckets=_FAST,
)
APPEND_CONFLICTS = Counter(
    "steplog_append_conflicts",
    "Appends refused because another writer appended first at the same seq (reloaded "
    "and decided again).",
)
HEARTBEATS_MISSED = Counter(
    "steplog_task_heartbeats_missed",
    "Task attempts timed out for want of a heartbeat (States.HeartbeatTimeout).",
)

# -- the relay -------------------------------------------------------------------------
RELAY_LAG_SECONDS = Histogram(
    "steplog_relay_lag_seconds",
    "From an event's timestamp (its commit) to its publication on Redis by the relay.",
    buckets=_SLOW,
)
RELAY_EVENTS = Counter("steplog_relay_published_events", "Events the relay published to Redis.")

# -- the clock ---------------------------------------------------------------------------
CLOCK_OFFSET_SECONDS = Gauge(
    "steplog_clock_offset_seconds",
    "PostgreSQL's clock minus this process's wall clock, at the last sample (durable time "
    "is PostgreSQL's: engine.adapters.clock).",
)

# -- workers ---------------------------------------------------------------------------
TASKS = Counter(
    "steplog_tasks",
    "Task attempts finished by this process's workers, by resource (a registered handler, "
    "else 'unregistered') and outcome (succeeded, failed, cancelled).",
    ("resource", "outcome"),
)
TASK_SECONDS = Histogram(
    "steplog_task_duration_seconds",
    "Run time of task handlers, by resource.",
    ("resource",),
    buckets=_SLOW,
)
TASK_RETRIES = Counter(
    "steplog_task_retries",
    "Task attempts started that are retries (by a Retry rule), by resource.",
    ("resource",),
)
TASK_HEARTBEATS = Counter(
    "steplog_task_heartbeats", "Heartbeats reported by running task handlers."
)
TASK_CLAIMS_LAPSED = Counter(
    "steplog_task_claims_lapsed",
    "Task handlers cancelled because their claim lapsed (Redis did not confirm it within "
    "the visibility timeout) or another worker claimed the entry.",
)

# -- timers ----------------------------------------------------------------------------
TIMERS_FIRED = Counter("steplog_timers_fired", "Timers fired (a TimerFired trigger added).")
TIMER_DELAY_SECONDS = Histogram(
    "steplog_timer_firing_delay_seconds",
    "From a timer's due time to its firing.",
    buckets=_SLOW,
)
PARTITIONS_OWNED = Gauge(
    "steplog_engine_partitions_owned",
    "Trigger partitions this engine reads (engine.loops.partition_owners).",
)
STATE_CACHE_STATES = Gauge(
    "steplog_engine_state_cache_states", "Execution states the engine holds in its cache."
)
STATE_CACHE_BYTES = Gauge(
    "steplog_engine_state_cache_bytes",
    "The engine's cached states' size, as their JSON length (STEPLOG_STATE_CACHE_MB bounds it).",
)
TIMERS_PENDING = Gauge("steplog_timers_pending", "Timers recorded and not yet consumed (sampled).")
TIMERS_OVERDUE = Gauge(
    "steplog_timers_overdue_seconds",
    "Age of the most overdue timer (0 when none is due; sampled).",
)

# -- streams (sampled) -----------------------------------------------------------------
STREAM_PENDING = Gauge(
    "steplog_stream_pending_entries",
    "Entries delivered to a consumer group and not yet acknowledged, by stream and group.",
    ("stream", "group"),
)
STREAM_LAG = Gauge(
    "steplog_stream_lag_entries",
    "Entries of a stream not yet delivered to the group, by stream and group.",
    ("stream", "group"),
)
STREAM_OLDEST_PENDING = Gauge(
    "steplog_stream_oldest_pending_age_seconds",
    "Age of the group's oldest pending entry (0 when none), by stream and group.",
    ("stream", "group"),
)
STREAM_DEAD_LETTERS = Gauge(
    "steplog_stream_dead_letters",
    "Entries in a stream's dead-letter stream, by stream.",
    ("stream",),
)

# -- roles (steplog.app) ---------------------------------------------------------------
ROLE_UP = Gauge(
    "steplog_role_up",
    "1 while a role loop of this process runs, 0 while it restarts after an error.",
    ("role",),
)
ROLE_RESTARTS = Counter(
    "steplog_role_restarts",
    "Role loops restarted after an error they did not handle, by role.",
    ("role",),
)


def state_type(event_type: str) -> str | None:
    """The state type of a ``<Type>StateEntered`` event type, else None."""
    if event_type.endswith("StateEntered"):
        return event_type[: -len("StateEntered")]
    return None


def count_decision(events: Sequence[ev.Event], seconds: float) -> None:
    """Observe one decision: its latency, its events, the states it entered and the
    heartbeats it found missing."""
    DECISION_SECONDS.observe(seconds)
    DECISION_EVENTS.observe(len(events))
    # One increment per state type, not per state (a decision enters many at once).
    entered: dict[str, int] = {}
    for event in events:
        if (state := state_type(ev.event_type(event))) is not None:
            entered[state] = entered.get(state, 0) + 1
        elif isinstance(event, ev.TaskTimedOut) and event.error == "States.HeartbeatTimeout":
            HEARTBEATS_MISSED.inc()
    for state, count in entered.items():
        child = _TRANSITIONS_OF.get(state)
        if child is None:  # (labels() takes a lock and builds its key each time)
            child = _TRANSITIONS_OF[state] = STATE_TRANSITIONS.labels(state)
        child.inc(count)


_TRANSITIONS_OF: dict[str, Counter] = {}


def observe_many(histogram: Histogram, amount: float, count: int) -> None:
    """``histogram.observe(amount)`` ``count`` times over, in one step: its sum moves by
    ``amount * count`` and the one bucket ``amount`` falls in by ``count`` (the
    histogram of a metric without labels, or a labelled one's child). Through the
    client's fields; a client without them observes ``count`` times."""
    buckets = getattr(histogram, "_buckets", None)
    bounds = getattr(histogram, "_upper_bounds", None)
    total = getattr(histogram, "_sum", None)
    if count == 1 or buckets is None or bounds is None or total is None:
        for _ in range(count):
            histogram.observe(amount)
        return
    total.inc(amount * count)
    # The first bucket whose bound holds it (the client's own rule; they are cumulated
    # when collected).
    buckets[bisect.bisect_left(bounds, amount)].inc(count)


def count_start_decision(events: Sequence[ev.Event], seconds: float) -> None:
    """Observe a first decision the API made and committed with its start
    (engine.service.EngineService.start): a decision, and its commit an append."""
    count_decision(events, seconds)
    APPEND_SECONDS.observe(seconds)


def observe_published(events: Sequence[StoredEvent], now: dt.datetime) -> None:
    """The relay published ``events`` at ``now``: count them, observe each one's lag."""
    RELAY_EVENTS.inc(len(events))
    # The events of one decision share its timestamp and come together: one lag for
    # each run of them.
    since: dt.datetime | None = None
    run = 0
    for event in events:
        if event.timestamp == since:
            run += 1
            continue
        if since is not None:
            observe_many(RELAY_LAG_SECONDS, max(0.0, (now - since).total_seconds()), run)
        since, run = event.timestamp, 1
    if since is not None:
        observe_many(RELAY_LAG_SECONDS, max(0.0, (now - since).total_seconds()), run)


def observe_fired(due: Sequence[dt.datetime], now: dt.datetime) -> None:
    """Timers due at ``due`` fired at ``now``."""
    TIMERS_FIRED.inc(len(due))
    for at in due:
        TIMER_DELAY_SECONDS.observe(max(0.0, (now - at).total_seconds()))


class TaskObservation:
    """Times one task attempt's handler and counts its outcome: set ``result`` (a
    TaskResult) before the block ends; an exception out of the block (a cancellation)
    counts as "cancelled". A resource without a handler is labelled "unregistered"."""

    def __init__(self, resource: str, attempt: int, *, registered: bool = True) -> None:
        self.resource = resource if registered else "unregistered"
        self.result: TaskResult | None = None
        if attempt > 0:
            TASK_RETRIES.labels(self.resource).inc()

    def __enter__(self) -> TaskObservation:
        self._began = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        TASK_SECONDS.labels(self.resource).observe(time.perf_counter() - self._began)
        if self.result is None:
            outcome = "cancelled"
        else:
            outcome = "succeeded" if self.result.ok else "failed"
        TASKS.labels(self.resource, outcome).inc()


class StreamSampler:
    """Measures the consumer groups of the engine and of the task queues, the dead
    letters and the timers every ``interval_s``; ``latest`` keeps the last figures (by
    (stream, group)) for readiness and the monitor's ``lag`` command."""

    def __init__(
        self,
        bus: Bus,
        store: EventStore,
        *,
        queues: tuple[str, ...] = (DEFAULT_QUEUE,),
        interval_s: float = 5.0,
        on_sample: Callable[[], None] | None = None,
    ) -> None:
        self.bus = bus
        self.store = store
        self.queues = queues
        self.interval_s = interval_s
        self.on_sample = on_sample
        self.latest: dict[tuple[str, str], GroupStats] = {}
        self.sampled_at = 0.0

    def groups(self) -> list[tuple[str, str]]:
        """Every (stream, group) measured."""
        pairs = [(s, ENGINE_GROUP) for s in self.bus.triggers_streams()]
        pairs += [(self.bus.tasks_stream(q), WORKER_GROUP) for q in self.queues]
        return pairs

    async def sample(self) -> dict[tuple[str, str], GroupStats]:
        """Measure now; set the gauges and ``latest``."""
        stats: dict[tuple[str, str], GroupStats] = {}
        for stream, group in self.groups():
            s = stats[(stream, group)] = await self.bus.group_stats(stream, group)
            STREAM_PENDING.labels(stream, group).set(s.pending)
            STREAM_LAG.labels(stream, group).set(s.lag)
            STREAM_OLDEST_PENDING.labels(stream, group).set(s.oldest_pending_age_s)
            STREAM_DEAD_LETTERS.labels(stream).set(s.dead_letters)
        pending, overdue = await self.store.timer_stats()
        TIMERS_PENDING.set(pending)
        TIMERS_OVERDUE.set(overdue)
        self.latest = stats
        self.sampled_at = time.monotonic()
        if self.on_sample is not None:
            self.on_sample()
        return stats

    def backlog(self, group: str) -> int:
        """Entries of ``group`` waiting (pending or not yet delivered), as last sampled."""
        return sum(s.pending + s.lag for (_, g), s in self.latest.items() if g == group)

    def undelivered(self, group: str) -> int:
        """Entries of ``group`` not yet delivered to any consumer, as last sampled."""
        return sum(s.lag for (_, g), s in self.latest.items() if g == group)

    async def run(self, stop: asyncio.Event) -> None:
        """Sample until ``stop`` is set; a failed sample is logged and tried again."""
        while not stop.is_set():
            try:
                await self.sample()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("metrics sample failed: %r", exc)
            await sleep_or_stop(stop, self.interval_s)
