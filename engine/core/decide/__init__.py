"""``decide(definition, state, trigger) -> Decision``: the pure heart of the engine.

Given an execution's state and one trigger (begin, a task result, a timer, a
stop request), decide returns the events that follow, running through every
non-blocking state in one step until each thread of the execution waits on a
task or a timer, or the execution ends. Each event is folded into the working
state with ``evolve`` as soon as it is emitted, so the state decide acts on is
always exactly the fold of the events (invariant 3).

Pure: no I/O, no clock, no global randomness. ``now`` comes with the trigger;
random numbers and UUIDs come from an rng seeded with (execution id, seq).
A duplicate or late trigger is an outcome (``Decision.ignored``), not an error.

The package: ``decider`` (the working context and the agenda), ``triggers``
(what each trigger does), ``dispatch`` (the one ``match`` over state kinds),
one module per state kind, ``completion`` (leaving states, finishing frames)
and ``failures`` (Retry, Catch, propagation).
"""

from __future__ import annotations

from engine.core import events as ev
from engine.core.asl import errors as E
from engine.core.asl.model import Definition
from engine.core.decide.decider import (
    EXECUTION_TIMEOUT_TIMER,
    MAX_HISTORY_EVENTS,
    MAX_PAYLOAD_BYTES,
    Decider,
    Decision,
    TimerRequest,
    describe_exception,
    timer_key,
)
from engine.core.decide.dispatch import run
from engine.core.decide.failures import fail
from engine.core.decide.triggers import handle
from engine.core.state import ExecutionState
from engine.core.triggers import Trigger

__all__ = [
    "EXECUTION_TIMEOUT_TIMER",
    "MAX_HISTORY_EVENTS",
    "MAX_PAYLOAD_BYTES",
    "Decision",
    "TimerRequest",
    "decide",
    "timer_key",
]


def decide(definition: Definition, state: ExecutionState, trigger: Trigger) -> Decision:
    """The events that follow ``trigger``. Never raises: an error that escapes the
    states' own handling (Decider.guard) fails the execution with States.Runtime, as
    deterministically as any failure, so no trigger is retried forever."""
    d = Decider(definition, state, trigger.now, fail)
    try:
        handle(d, trigger)
        run(d)
    except Exception as exc:
        return _failed(definition, state, trigger, exc)
    return d.decision()


def _failed(
    definition: Definition, state: ExecutionState, trigger: Trigger, exc: Exception
) -> Decision:
    """The execution fails instead of the decision that raised ``exc`` (whose events
    are dropped: they were never recorded)."""
    d = Decider(definition, state, trigger.now, fail)
    kind = type(trigger).__name__
    d.emit(
        ev.ExecutionFailed(
            error=E.RUNTIME,
            cause=f"An error occurred while deciding the execution's next step on a {kind} "
            f"trigger: {describe_exception(exc)}",
        )
    )
    return d.decision()
