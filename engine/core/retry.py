"""Which Retrier or Catcher matches an error, how long a retry waits, and when a
Map has failed too often: the error-handling rules of ASL, as pure functions."""

from __future__ import annotations

from engine.core.asl import errors as E
from engine.core.asl.context import EvalEnv
from engine.core.asl.model import Retrier
from engine.core.state import Frame

# Errors States.ALL does not match (a retrier or catcher must name them).
_NOT_MATCHED_BY_ALL = E.NOT_MATCHED_BY_ALL | {E.DATA_LIMIT_EXCEEDED}


def matches(error_equals: tuple[str, ...], error: str) -> bool:
    """Whether a Retrier's or Catcher's ErrorEquals matches ``error``: by name;
    States.ALL matches all but States.Runtime and States.DataLimitExceeded;
    States.TaskFailed matches itself and every error a task raised (names outside
    "States."), not the timeouts."""
    for name in error_equals:
        if name == error:
            return True
        if name == E.ALL and error not in _NOT_MATCHED_BY_ALL:
            return True
        if name == E.TASK_FAILED and error not in (E.TIMEOUT, E.RUNTIME, E.HEARTBEAT_TIMEOUT):
            if not error.startswith("States.") or error == E.TASK_FAILED:
                return True
    return False


def retry_delay(retrier: Retrier, attempts: int, seed: str) -> float:
    """Seconds before retry number ``attempts + 1``: IntervalSeconds * BackoffRate^attempts,
    capped by MaxDelaySeconds; FULL jitter draws uniformly below that from an rng seeded
    with ``seed`` (recorded positions), so replay draws the same delay."""
    delay = retrier.interval_seconds * (retrier.backoff_rate**attempts)
    if retrier.max_delay_seconds is not None:
        delay = min(delay, float(retrier.max_delay_seconds))
    if retrier.jitter == "FULL":
        delay = EvalEnv.seeded(seed).rng.uniform(0, delay)
    return delay


def tolerated(f: Frame) -> bool:
    """Whether a Map frame's failed iterations are still within ToleratedFailureCount
    and ToleratedFailurePercentage (a Map with neither tolerates none)."""
    if f.tolerated_failure_count is None and f.tolerated_failure_percentage is None:
        return False
    if f.tolerated_failure_count is not None and f.failed > f.tolerated_failure_count:
        return False
    if f.tolerated_failure_percentage is not None and f.items:
        if f.failed * 100.0 / len(f.items) > f.tolerated_failure_percentage:
            return False
    return True
