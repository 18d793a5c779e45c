"""The one error tree of steplog. Adapters translate what they catch into these,
once, at their boundary; the API turns `code` and `status` into problem+json."""

from __future__ import annotations


class SteplogError(Exception):
    code = "internal"
    status = 500

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.code)
        self.message = message or self.code


class NotFound(SteplogError):
    code = "not_found"
    status = 404


class WorkflowNotFound(NotFound):
    code = "workflow_not_found"


class ExecutionNotFound(NotFound):
    code = "execution_not_found"


class KeyNotFound(NotFound):
    code = "key_not_found"


class NamespaceNotFound(NotFound):
    code = "namespace_not_found"


class Unauthenticated(SteplogError):
    """No API key, or one that is malformed, unknown, revoked or expired."""

    code = "unauthenticated"
    status = 401


class Forbidden(SteplogError):
    """A valid key whose role (or namespace) does not allow the route."""

    code = "forbidden"
    status = 403


class ConcurrencyError(SteplogError):
    """Another writer appended at the seq this append expected to take."""

    code = "concurrency_conflict"
    status = 409


class ExecutionNameConflict(SteplogError):
    code = "execution_name_conflict"
    status = 409


class ExecutionNotRunning(SteplogError):
    code = "execution_not_running"
    status = 409


class RunningQuotaExceeded(SteplogError):
    """A start in a namespace that already runs as many executions as its quota allows."""

    code = "running_quota_exceeded"
    status = 429


class InvalidRequest(SteplogError):
    code = "invalid_request"
    status = 400


class PayloadTooLarge(SteplogError):
    code = "payload_too_large"
    status = 413


class InvalidDefinition(SteplogError):
    """An ASL document that does not validate; `errors` lists (json path, message)."""

    code = "invalid_definition"
    status = 422

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{p}: {m}" for p, m in errors) or "invalid definition")
        self.errors = errors


class Unavailable(SteplogError):
    code = "service_unavailable"
    status = 503


class BusError(SteplogError):
    """Redis refused a command for a reason of its own (e.g. WRONGTYPE): not an outage."""

    code = "bus_error"
    status = 500


class MissingGroup(BusError):
    """A consumer group, or its stream, does not exist (NOGROUP), e.g. after Redis was
    flushed: the consumer creates its group again."""

    code = "bus_group_missing"
    status = 503


class InvalidData(InvalidRequest):
    """PostgreSQL refused a value for what it is (SQLSTATE class 22, "data exception":
    out of range, a character it cannot store, ...), or the driver could not encode it.
    Deterministic: the same value is refused again, so it is never retried."""


class InvalidToken(InvalidRequest):
    """A task token that is malformed, not issued by steplog, or of another namespace
    (Step Functions' InvalidToken)."""

    code = "invalid_token"


class TaskDoesNotExist(NotFound):
    """A task token whose MAC verifies but that names no task attempt of its execution
    (Step Functions' TaskDoesNotExist)."""

    code = "task_does_not_exist"


class TaskTimedOut(SteplogError):
    """A task token whose attempt is no longer waiting: it timed out, was reported
    already, was retried, or its execution ended (Step Functions' TaskTimedOut)."""

    code = "task_timed_out"
    status = 409


class ActivityNotFound(NotFound):
    code = "activity_not_found"
