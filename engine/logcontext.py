"""What every log line of the current task is about: the request and the execution.

The API's middleware sets the request id; the engine and the workers set the
execution id while they handle one execution. steplog.logs copies both onto each
record. They live here, in the engine, so that engine code can set them without
importing the composition root.
"""

from __future__ import annotations

import contextvars

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "steplog_request_id", default=None
)
execution_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "steplog_execution_id", default=None
)
