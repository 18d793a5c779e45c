"""Step Functions error names and the exception that carries them.

Contract: every failure that ASL semantics turn into a state error (catchable
by Retry/Catch or ending the execution) is raised as ``StatesError(error,
cause)``, where ``error`` is the AWS error name (one of the constants below
or a user-defined name) and ``cause`` is the human-readable text exactly as
AWS words it. The pure modules raise bare causes; the engine prefixes
"An error occurred while executing the state 'X' (entered at the event id
#N). " where AWS does so, because only the engine knows the state and event.
"""

from __future__ import annotations

ALL = "States.ALL"
TASK_FAILED = "States.TaskFailed"
TIMEOUT = "States.Timeout"
HEARTBEAT_TIMEOUT = "States.HeartbeatTimeout"
RUNTIME = "States.Runtime"
DATA_LIMIT_EXCEEDED = "States.DataLimitExceeded"
RESULT_PATH_MATCH_FAILURE = "States.ResultPathMatchFailure"
PARAMETER_PATH_FAILURE = "States.ParameterPathFailure"
INTRINSIC_FAILURE = "States.IntrinsicFailure"
BRANCH_FAILED = "States.BranchFailed"
NO_CHOICE_MATCHED = "States.NoChoiceMatched"
EXCEED_TOLERATED_FAILURE_THRESHOLD = "States.ExceedToleratedFailureThreshold"
QUERY_EVALUATION_ERROR = "States.QueryEvaluationError"
ITEM_READER_FAILED = "States.ItemReaderFailed"
RESULT_WRITER_FAILED = "States.ResultWriterFailed"
PERMISSIONS = "States.Permissions"

# States.ALL does not match States.Runtime in a Catch or Retry: AWS treats it
# as terminal. Exposed here so choice/decide code need not hard-code it.
NOT_MATCHED_BY_ALL = frozenset({RUNTIME})


class StatesError(Exception):
    """An ASL-level error: ``error`` is the AWS error name, ``cause`` its text."""

    def __init__(self, error: str, cause: str) -> None:
        super().__init__(f"{error}: {cause}")
        self.error = error
        self.cause = cause

    def __repr__(self) -> str:
        return f"StatesError({self.error!r}, {self.cause!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StatesError):
            return NotImplemented
        return (self.error, self.cause) == (other.error, other.cause)

    def __hash__(self) -> int:
        return hash((self.error, self.cause))
