"""The engine loops' Prometheus metrics. They live in the process-wide default
registry, which /metrics renders with the API's own (api/metrics.py). Labels
never carry an execution id (unbounded cardinality): the logs and the dead-letter
streams name the executions."""

from __future__ import annotations

from prometheus_client import Counter

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
