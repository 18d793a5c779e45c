"""The engine's application service: what the API and the CLI call.

It owns the compiled-definition cache and the path "load state, decide,
append with the expected seq" for triggers that arrive through the API
(stop). Triggers from the bus go through engine.loops.engine_loop, which uses the same
``load_state`` and ``apply`` helpers.
"""

from __future__ import annotations

import datetime as dt
import secrets
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple
from uuid import UUID

import msgspec
from opentelemetry.trace import Span, Tracer

from engine.adapters.group_commit import GroupCommit, StartCommit
from engine.adapters.store import (
    EventStore,
    ExecutionRecord,
    NewEvent,
    NotLatestVersion,
    StartRequest,
    StoredEvent,
    WorkflowVersion,
    json_as_sent,
)
from engine.core import events as ev
from engine.core.arns import ArnScope, execution_arns
from engine.core.asl import errors as E
from engine.core.asl.compile import compile_definition
from engine.core.asl.model import Definition, Machine
from engine.core.decide import Decision, decide
from engine.core.decide.decider import printable
from engine.core.state import (
    ExecutionState,
    evolve,
    evolve_all,
    initial_state,
)
from engine.core.timestamps import iso_millis, parse_iso
from engine.core.triggers import Begin, FailRequested, StopRequested, TimerFired, Trigger
from engine.errors import (
    ConcurrencyError,
    ExecutionNotFound,
    InvalidDefinition,
    InvalidRequest,
    PayloadTooLarge,
    RunningQuotaExceeded,
    WorkflowNotFound,
)
from engine.limits import Limits
from engine.tracecontext import add_own_event, current_span, set_own_attributes

_json = msgspec.json.Encoder()


class Started(NamedTuple):
    """What `EngineService.start` did: the execution's record, whether this call created
    it (False: the name existed with the same input), the status its first decision
    left it in when that was made with the start (RUNNING otherwise), and then the
    events this call committed (seq 1, 2, ...: the execution's whole history when
    that status is an end; none when it created nothing)."""

    record: ExecutionRecord
    created: bool
    status: str = "RUNNING"
    events: tuple[NewEvent, ...] = ()


# Tries of a start whose workflow gets a new version meanwhile (each one reads it again).
START_ATTEMPTS = 5
# A first decision with more events is left to the engine (see EngineService._first_decision).
FIRST_DECISION_MAX_EVENTS = 64
# The longest cause the engine records when it fails an execution itself.
MAX_CAUSE_CHARS = 4096
# Stands in for a definition that no longer compiles when failing its execution.
_NO_DEFINITION = Definition(machine=Machine(start_at="", states={}), timeout_seconds=1)
# From this many events on, `fold` leaves payloads undecoded until the end.
LAZY_FOLD_MIN = 32


def fold(
    execution_id: UUID, events: list[StoredEvent], state: ExecutionState | None = None
) -> ExecutionState:
    """Replay stored events onto ``state`` (or from the beginning)."""
    return fold_data(
        execution_id,
        [stored.data for stored in events],
        [stored.timestamp for stored in events],
        state,
    )


def fold_data(
    execution_id: UUID,
    data: Sequence[bytes | str],
    times: Sequence[dt.datetime],
    state: ExecutionState | None = None,
) -> ExecutionState:
    """Replay events given as their encoded data and recorded times (in seq order) onto
    ``state`` (or from the beginning)."""
    s = state if state is not None else initial_state(execution_id)
    if len(data) == 1:  # the usual case after a decision: no private copy to make
        return evolve(s, ev.decode_event(data[0]), iso_millis(times[0]))
    if len(data) < LAZY_FOLD_MIN:
        return evolve_all(s, zip(map(ev.decode_event, data), times, strict=True))
    # A long replay: payloads stay JSON text and entered times datetimes until the end,
    # where only those the state keeps are decoded (one pass over every frame: worth it
    # past a few dozen events).
    return evolve_all(s, zip(map(ev.decode_event_lazy, data), times, strict=True), lazy=True)


def no_earlier(state: ExecutionState, trigger: Trigger) -> Trigger:
    """``trigger`` with its time moved up, when needed, to the last event's and, for a
    pending timer, to its due time: a decision never records a time before an event it
    follows (engines' estimates of PostgreSQL's clock differ by a millisecond or so, and
    a trigger read before another engine appended carries an older time), and a timer's
    consequences are never stamped before it was due."""
    floor = _aware(state.last_event_time)
    if isinstance(trigger, TimerFired):
        info = state.timers.get(trigger.timer_id.removeprefix(state.execution_id + ":"))
        due = _aware(info.due) if info is not None else None
        if due is not None:
            floor = due if floor is None else max(floor, due)
    if floor is None or trigger.now.tzinfo is None or trigger.now >= floor:
        return trigger
    return msgspec.structs.replace(trigger, now=floor)


def _aware(text: str) -> dt.datetime | None:
    """The time ``text`` says, when it says one with an offset."""
    try:
        t = parse_iso(text) if text else None
    except ValueError:
        return None
    return t if t is not None and t.tzinfo is not None else None


class EngineService:
    def __init__(
        self,
        store: EventStore,
        *,
        max_payload_bytes: int = 262_144,
        cache_size: int = 256,
        arns: ArnScope | None = None,
        limits: Limits | None = None,
        tracer: Tracer | None = None,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        on_decision: Callable[[Sequence[ev.Event], float], None] | None = None,
        decide_at_start: bool = False,
    ) -> None:
        self.store = store
        # Make each start's first decision and commit it with the start (`start`): what a
        # running steplog does (steplog.app); off, a start records ExecutionStarted alone
        # and the engine makes the first decision on the Begin trigger.
        self.decide_at_start = decide_at_start
        # Told of each decision made here (its events, its seconds): the engine's metrics.
        self.on_decision = on_decision
        # Every decision's append goes through it: concurrent decisions (the engine's batch
        # of triggers, concurrent stops) share one statement and one commit.
        self.appends = GroupCommit(store)
        # Every start's statement too (StartCommit): concurrent starts share one.
        self.starts = StartCommit(store)
        # The clock of durable time: PostgreSQL's (engine.adapters.clock.DbClock.now),
        # read for the starts and stops that do not say their time.
        self.clock = clock
        # The RUNNING quota of each namespace (none when None).
        self.limits = limits
        # Records each append as an event of the caller's current span; None: tracing off.
        self.tracer = tracer
        # Partition, region and account of the ARNs recorded at each start.
        self.arns = arns if arns is not None else ArnScope()
        self.max_payload_bytes = max_payload_bytes
        self._definitions: OrderedDict[tuple[str, str, int], Definition] = OrderedDict()
        # The latest version of each workflow started lately, as last read: a start
        # commits only if it still is the latest (`start`), so a copy made old by a
        # newer version (registered by any process) costs one retry, never a start of
        # the old version.
        self._latest: OrderedDict[tuple[str, str], WorkflowVersion] = OrderedDict()
        self._cache_size = cache_size

    # -- workflows ------------------------------------------------------------------

    async def register(
        self, namespace: str, name: str, definition: Any, type: str = "STANDARD"
    ) -> tuple[WorkflowVersion, bool]:
        """Validate (InvalidDefinition lists every error with its path), then store.
        ``type``: STANDARD or EXPRESS (the context object of its executions differs)."""
        if not isinstance(definition, dict):
            raise InvalidRequest("definition must be a JSON object")
        if type not in ("STANDARD", "EXPRESS"):
            raise InvalidRequest("type must be STANDARD or EXPRESS")
        compiled = compile_definition(definition)
        version, created = await self.store.put_workflow(namespace, name, definition, type)
        self._remember((namespace, name, version.version), compiled)
        if created:
            self._remember_latest(version)
        return version, created

    def validate(self, definition: Any) -> list[tuple[str, str]]:
        """Every (json path, message) that keeps ``definition`` from registering; none
        when it is valid. Nothing is stored."""
        if not isinstance(definition, dict):
            return [("$", "definition must be a JSON object")]
        try:
            compile_definition(definition)
        except InvalidDefinition as exc:
            return exc.errors
        return []

    async def describe_workflow(
        self, namespace: str, name: str, version: int | None = None
    ) -> WorkflowVersion:
        """The given version, or the latest when ``version`` is None; `WorkflowNotFound`
        when there is none."""
        wf = await self.store.get_workflow(namespace, name, version)
        if wf is None:
            what = name if version is None else f"{name} version {version}"
            raise WorkflowNotFound(f"no workflow {what}")
        return wf

    async def list_workflows(self, namespace: str) -> list[WorkflowVersion]:
        """The latest version of every workflow of ``namespace``, by name."""
        return await self.store.list_workflows(namespace)

    async def definition(self, namespace: str, workflow: str, version: int) -> Definition:
        key = (namespace, workflow, version)
        cached = self._definitions.get(key)
        if cached is not None:
            self._definitions.move_to_end(key)
            return cached
        wf = await self.store.get_workflow(namespace, workflow, version)
        if wf is None:
            raise WorkflowNotFound(f"workflow {workflow!r} version {version} not found")
        return self._compiled(wf)

    def _remember(self, key: tuple[str, str, int], definition: Definition) -> None:
        self._definitions[key] = definition
        while len(self._definitions) > self._cache_size:
            self._definitions.popitem(last=False)

    async def _latest_workflow(self, namespace: str, name: str, fresh: bool) -> WorkflowVersion:
        """The latest version of the workflow as last read (``fresh``: read now);
        `WorkflowNotFound` when it has none."""
        key = (namespace, name)
        known = None if fresh else self._latest.get(key)
        if known is not None:
            self._latest.move_to_end(key)
            return known
        wf = await self.store.get_workflow(namespace, name)
        if wf is None:
            self._latest.pop(key, None)
            raise WorkflowNotFound(f"workflow {name!r} not found")
        self._remember_latest(wf)
        return wf

    def _remember_latest(self, wf: WorkflowVersion) -> None:
        key = (wf.namespace, wf.name)
        known = self._latest.get(key)
        if known is not None and known.version > wf.version:
            return  # (a read that began before a newer version was remembered)
        self._latest[key] = wf
        self._latest.move_to_end(key)
        while len(self._latest) > self._cache_size:
            self._latest.popitem(last=False)

    # -- executions -----------------------------------------------------------------

    async def start(
        self,
        namespace: str,
        workflow: str,
        input: Any,
        name: str | None,
        now: dt.datetime | None = None,
        trace_context: str = "",
    ) -> Started:
        """Start an execution of the latest version of ``workflow`` at ``now`` (None:
        the service's clock). The execution's first decision (on Begin) is made here and
        committed with the start when it can be (`_first_decision`): ``Started.status``
        is the status it left the execution in (RUNNING, or an end already).
        ``trace_context``: the W3C traceparent the execution's spans join (recorded in
        ExecutionStarted; "" with tracing off).

        ``input`` is the client's JSON as a ``msgspec.Raw`` (kept as sent: key order and
        number spelling, see `json_as_sent`) or a value. The size limit counts the
        bytes as stored; `InvalidRequest` for input that is not JSON.
        `RunningQuotaExceeded` when the namespace runs its quota of executions already
        (a repeated start of an existing name still answers as before).

        The version started is the latest when the start commits: one read of it
        remembered (`_latest_workflow`) serves the next starts, and the start's
        statement checks that it still is the latest (else it reads it again and
        starts over, up to START_ATTEMPTS times)."""
        for attempt in range(START_ATTEMPTS):
            wf = await self._latest_workflow(namespace, workflow, fresh=attempt > 0)
            try:
                return await self._start_version(wf, input, name, now, trace_context)
            except NotLatestVersion:
                continue
        raise ConcurrencyError(
            f"workflow {workflow!r} got a new version during each of {START_ATTEMPTS} tries to "
            "start it"
        )

    async def _start_version(
        self,
        wf: WorkflowVersion,
        input: Any,
        name: str | None,
        now: dt.datetime | None,
        trace_context: str,
    ) -> Started:
        """`start` of version ``wf``; `NotLatestVersion` (nothing written) when it is not
        the workflow's latest any more."""
        namespace, workflow = wf.namespace, wf.name
        if self.limits is not None:
            try:
                await self.limits.admit_start(namespace)
            except RunningQuotaExceeded:
                # Idempotency first: the same name again starts nothing new.
                if (
                    name is None
                    or await self.store.find_execution(namespace, workflow, name) is None
                ):
                    raise
        input_json = json_as_sent(input)
        if len(input_json) > self.max_payload_bytes:
            raise PayloadTooLarge(
                f"execution input is {len(input_json)} bytes; the limit is {self.max_payload_bytes}"
            )
        execution_id = uuid.uuid4()
        if name is None:
            name = str(execution_id)
        elif not name or len(name) > 80:
            raise InvalidRequest("name must be 1 to 80 characters")
        express = wf.type == "EXPRESS"
        arns = execution_arns(
            self.arns, namespace, workflow, name, str(execution_id), express=express
        )
        # The event carries the input as kept, byte for byte (a Raw is encoded verbatim).
        started = ev.ExecutionStarted(
            input=msgspec.Raw(input_json),
            workflow=workflow,
            version=wf.version,
            name=name,
            namespace=namespace,
            role_arn=arns.role,
            state_machine_arn=arns.state_machine,
            execution_arn=arns.execution,
            state_machine_type=wf.type,
            trace_context=trace_context,
            # Read once and recorded (invariant 4): decide makes the execution's task
            # tokens from it (engine.core.tasktokens).
            task_token_key=secrets.token_hex(16),
        )
        at = self.clock() if now is None else now
        stored = NewEvent("ExecutionStarted", ev.encode_event(started), at)
        first = (
            self._first_decision(wf, execution_id, stored.data, at)
            if self.decide_at_start
            else None
        )
        if first is None:
            record, created = await self.starts.start(
                StartRequest(
                    namespace, workflow, wf.version, execution_id, name, input_json, stored
                )
            )
            return Started(record, created, events=(stored,) if created else ())
        if self.tracer is None:
            return await self._start_decided(wf, execution_id, name, input_json, stored, first)
        # The first decision's span, as the engine makes one per decision: the child of
        # the request that started the execution.
        with self.tracer.start_as_current_span(
            "steplog.decide",
            attributes={"steplog.execution.id": str(execution_id), "steplog.trigger": "Begin"},
        ) as span:
            started_record = await self._start_decided(
                wf, execution_id, name, input_json, stored, first
            )
            if started_record.created:
                describe_decision(span, first.events, None, first.state.status)
            else:  # the name existed: this decision was not recorded
                span.set_attribute("steplog.decision.events", 0)
                span.set_attribute("steplog.decision.ignored", "the execution exists")
            return started_record

    def _first_decision(
        self, wf: WorkflowVersion, execution_id: UUID, started: bytes, at: dt.datetime
    ) -> Decision | None:
        """The execution's first decision (on Begin), made here so that it is recorded in
        the start's own commit (one commit instead of two, and no round through the relay
        and the engine before the first states run); None when it is not made here: the
        definition does not compile, deciding fails, or the decision is large (a Map
        over a long list: it is the engine's work, not the request's), in which case the
        engine makes it on the Begin trigger as for any start."""
        try:
            definition = self._compiled(wf)
            # On the state the log will give (the event as stored, decoded), as the
            # engine would decide it: the input a plain value, not the text kept.
            state = evolve(initial_state(execution_id), ev.decode_event(started), iso_millis(at))
            decision = decide(definition, state, Begin(now=at))
        except Exception:  # the engine decides it, and fails the execution if it must
            return None
        if not decision.events or len(decision.events) > FIRST_DECISION_MAX_EVENTS:
            return None
        if sum(len(data) for data in decision.encoded) > self.max_payload_bytes:
            return None
        return decision

    async def _start_decided(
        self,
        wf: WorkflowVersion,
        execution_id: UUID,
        name: str,
        input_json: bytes,
        started: NewEvent,
        first: Decision,
    ) -> Started:
        then = [
            NewEvent(ev.event_type(e), data, started.timestamp)
            for e, data in zip(first.events, first.encoded, strict=True)
        ]
        began = time.perf_counter()
        record = await self.starts.start(
            StartRequest(
                wf.namespace, wf.name, wf.version, execution_id, name, input_json, started,
                then=then, set_timers=first.timers_to_set,
            )
        )  # fmt: skip
        if not record[1]:  # the name existed: this decision was not recorded
            return Started(*record)
        seconds = time.perf_counter() - began
        if self.on_decision is not None:
            self.on_decision(first.events, seconds)
        if self.tracer is not None:  # the append, as `_record` shows one: at seq 1
            add_own_event(
                current_span(),
                "steplog.append",
                {
                    "steplog.append.expected_seq": 1,
                    "steplog.append.events": len(then),
                    "steplog.append.duration_ms": seconds * 1000,
                },
            )
        return Started(*record, first.state.status, (started, *then))

    def _compiled(self, wf: WorkflowVersion) -> Definition:
        key = (wf.namespace, wf.name, wf.version)
        cached = self._definitions.get(key)
        if cached is not None:
            self._definitions.move_to_end(key)
            return cached
        compiled = compile_definition(wf.definition)
        self._remember(key, compiled)
        return compiled

    async def load_state(
        self, execution_id: UUID, upto_seq: int | None = None, cached: ExecutionState | None = None
    ) -> ExecutionState:
        """The state rebuilt from events (continuing from ``cached`` when given)."""
        after = cached.seq if cached is not None else 0
        data, times = await self.store.load_for_fold(execution_id, after, upto_seq)
        if cached is None and not data:
            raise ExecutionNotFound(f"execution {execution_id} not found")
        return fold_data(execution_id, data, times, cached)

    async def load_states(
        self, cached: dict[UUID, ExecutionState | None]
    ) -> dict[UUID, ExecutionState]:
        """The states of many executions by one query, each continuing from its cached
        state when given. An execution without events, or whose events do not fold, is
        left out (`load_state` says what is wrong with it)."""
        loaded = await self.store.load_many(
            {eid: (0 if state is None else state.seq) for eid, state in cached.items()}
        )
        states: dict[UUID, ExecutionState] = {}
        for eid, events in loaded.items():
            base = cached[eid]
            if base is None and not events:
                continue
            try:
                states[eid] = fold(eid, events, base)
            except Exception:  # load_state raises it again, for this execution alone
                continue
        return states

    async def state_at(self, execution_id: UUID, seq: int | None = None) -> ExecutionState:
        """Replay with the cache off: the audit view of an execution at ``seq``."""
        return await self.load_state(execution_id, upto_seq=seq)

    async def apply(
        self, state: ExecutionState, trigger: Trigger
    ) -> tuple[Decision, list[StoredEvent]]:
        """Decide ``trigger`` on ``state`` and append the result with the expected seq.
        Raises ConcurrencyError when another writer appended first."""
        if state.ended:
            # Every trigger is ignored (decide would say the same), and an ended
            # execution needs no definition (which may no longer compile).
            return Decision([], state, ignored=f"execution is {state.status}"), []
        definition = await self.definition(state.namespace, state.workflow, state.version)
        return await self._record(definition, state, trigger)

    async def _record(
        self, definition: Definition, state: ExecutionState, trigger: Trigger
    ) -> tuple[Decision, list[StoredEvent]]:
        trigger = no_earlier(state, trigger)
        decision = decide(definition, state, trigger)
        if not decision.events and not decision.timers_to_set and not decision.timers_to_cancel:
            return decision, []
        new = [
            NewEvent(type=ev.event_type(e), data=data, timestamp=trigger.now)
            for e, data in zip(decision.events, decision.encoded, strict=True)
        ]
        append = self.appends.append(
            UUID(state.execution_id),
            state.seq,
            new,
            set_timers=decision.timers_to_set,
            cancel_timers=decision.timers_to_cancel,
        )
        if self.tracer is None:
            return decision, await append
        # The append is an event of the current span (the engine's decision, the API's
        # request to stop), at its commit, not a span of its own: a span costs several
        # times what an event does, and an append is one call inside its decision.
        span = current_span()
        began = time.perf_counter()
        try:
            stored = await append
        except ConcurrencyError:
            add_own_event(
                span,
                "steplog.append",
                {"steplog.append.expected_seq": state.seq, "steplog.append.conflict": True},
            )
            raise
        add_own_event(
            span,
            "steplog.append",
            {
                "steplog.append.expected_seq": state.seq,
                "steplog.append.events": len(new),
                "steplog.append.duration_ms": (time.perf_counter() - began) * 1000,
            },
        )
        return decision, stored

    async def fail_execution(
        self, execution_id: UUID, cause: str, now: dt.datetime | None = None
    ) -> tuple[ExecutionState, bool]:
        """Fail a running execution with States.Runtime and ``cause`` (recorded as an
        ExecutionFailed event, timers cancelled, like any failure). The engine's one
        path for a trigger it cannot decide or record for a reason of the execution's
        own (data the store refuses, a definition that no longer compiles), or that kept
        failing past the delivery limit: retrying would fail the same way. Returns the
        state and whether this call failed it (an ended execution is returned unchanged).
        Raises ExecutionNotFound, Unavailable."""
        trigger = FailRequested(
            error=E.RUNTIME,
            cause=printable(cause, MAX_CAUSE_CHARS),
            now=self.clock() if now is None else now,
        )
        for _ in range(20):
            state = await self.load_state(execution_id)
            if state.ended:
                return state, False
            try:
                definition = await self.definition(state.namespace, state.workflow, state.version)
            except (InvalidDefinition, WorkflowNotFound):
                # Failing needs nothing of the definition but whether the execution has a
                # timeout timer to cancel (cancelling one that does not exist is harmless).
                definition = _NO_DEFINITION
            try:
                decision, _ = await self._record(definition, state, trigger)
            except ConcurrencyError:
                continue
            return decision.state, True
        raise ConcurrencyError(f"execution {execution_id} kept changing while failing it")

    async def stop(
        self,
        execution_id: UUID,
        error: str | None,
        cause: str | None,
        now: dt.datetime | None = None,
        namespace: str | None = None,
    ) -> ExecutionState:
        """Abort a running execution; a 2xx from the API means ExecutionAborted is
        committed. Stopping an ended execution returns it unchanged. With ``namespace``,
        an execution of another namespace is `ExecutionNotFound` like an unknown one
        (the same one query)."""
        if (
            namespace is not None
            and await self.store.get_execution(execution_id, namespace) is None
        ):
            raise ExecutionNotFound(f"execution {execution_id} not found")
        stop = StopRequested(error=error, cause=cause, now=self.clock() if now is None else now)
        for _ in range(20):
            state = await self.load_state(execution_id)
            if state.ended:
                return state
            try:
                decision, _ = await self.apply(state, stop)
            except ConcurrencyError:
                continue
            return decision.state
        raise ConcurrencyError(f"execution {execution_id} kept changing while stopping")


def describe_decision(
    span: Span, events: Sequence[ev.Event], ignored: str | None, status: str
) -> None:
    """Set a decision's attributes on ``span`` (its events, the states they name, why
    it changed nothing) and, when it ended the execution, add the terminal event to it
    (a span event, as the append is: the decision span says all a span of its own
    would). A decision whose trace is not sampled describes nothing."""
    if not span.is_recording():
        return
    described: dict[str, str | int | tuple[str, ...]] = {
        "steplog.decision.events": len(events),
        "steplog.execution.status": status,
    }
    if ignored:
        described["steplog.decision.ignored"] = ignored
    terminal = None
    if events:
        states: dict[str, None] = {}
        for event in events:
            if isinstance(event, ev.StateEvent):
                states[event.name] = None
            elif isinstance(event, ev.TERMINAL):
                terminal = event
        if states:
            described["steplog.decision.states"] = tuple(states)
    set_own_attributes(span, described)
    if terminal is not None:
        attributes: dict[str, str] = {"steplog.execution.status": status}
        error = getattr(terminal, "error", None)
        if error:
            attributes["steplog.execution.error"] = error
        add_own_event(span, f"steplog.execution.{ev.event_type(terminal)}", attributes)
