"""Request and response types, decoding helpers and opaque cursors.

Decoding contract: a body that is not JSON -> MalformedJson (400); JSON of the
wrong shape -> InvalidBody (422) with the msgspec path ("$.definition");
bad query parameters or cursors -> InvalidQuery (400, code invalid_request).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
from typing import Annotated, Any, Literal, TypeVar
from uuid import UUID

import msgspec
from msgspec import Meta

from api.problems import InvalidBody, InvalidQuery, MalformedJson

T = TypeVar("T")

# Workflow names travel in URL paths; execution names follow Step Functions'
# rules (1-80 characters, no whitespace, brackets, wildcards or specials).
WORKFLOW_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,80}")
ExecutionName = Annotated[
    str, Meta(min_length=1, max_length=80, pattern=r"^[^\s<>{}\[\]?*\"#%\\^|~`$&,;:/\x00-\x1f]+$")
]
ErrorName = Annotated[str, Meta(max_length=256)]
Cause = Annotated[str, Meta(max_length=32768)]
Status = Literal["RUNNING", "SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED"]
Limit = Annotated[int, Meta(ge=1, le=1000)]


# --- requests -----------------------------------------------------------------


class RegisterWorkflow(msgspec.Struct, forbid_unknown_fields=True):
    definition: dict[str, Any]


class StartExecution(msgspec.Struct, forbid_unknown_fields=True):
    # Kept raw: its size is checked against max_payload_bytes before decoding.
    input: msgspec.Raw = msgspec.Raw(b"{}")
    name: ExecutionName | None = None


class StopExecution(msgspec.Struct, forbid_unknown_fields=True):
    error: ErrorName | None = None
    cause: Cause | None = None


Timestamp = Annotated[dt.datetime, Meta(tz=True)]  # RFC 3339 with an offset
Seq = Annotated[int, Meta(ge=1)]


class ListExecutionsQuery(msgspec.Struct, forbid_unknown_fields=True):
    """Time ranges are [after, before); ``order`` sorts by start time."""

    workflow: str | None = None
    version: Annotated[int, Meta(ge=1)] | None = None
    status: Status | None = None
    name_prefix: Annotated[str, Meta(min_length=1, max_length=80)] | None = None
    started_after: Timestamp | None = None
    started_before: Timestamp | None = None
    stopped_after: Timestamp | None = None
    stopped_before: Timestamp | None = None
    order: Literal["desc", "asc"] = "desc"
    limit: Limit = 100
    cursor: str | None = None


class HistoryQuery(msgspec.Struct, forbid_unknown_fields=True):
    """``reverse``: newest first. ``include_data=false`` leaves out the input and
    output payloads of the events (as AWS's includeExecutionData)."""

    limit: Limit = 100
    cursor: str | None = None
    reverse: bool = False
    include_data: bool = True


class ExportQuery(msgspec.Struct, forbid_unknown_fields=True):
    include_data: bool = True


class EventsFeedQuery(msgspec.Struct, forbid_unknown_fields=True):
    """Resume after this seq (the Last-Event-ID header wins when both are given)."""

    after: Annotated[int, Meta(ge=0)] | None = None


class DiffQuery(
    msgspec.Struct, forbid_unknown_fields=True, rename={"from_seq": "from", "to_seq": "to"}
):
    from_seq: Seq
    to_seq: Seq


class StatsQuery(msgspec.Struct, forbid_unknown_fields=True, rename={"start": "from", "end": "to"}):
    """The window [from, to): by default the 24 hours before now."""

    start: Timestamp | None = None
    end: Timestamp | None = None
    version: Annotated[int, Meta(ge=1)] | None = None


class StateQuery(msgspec.Struct, forbid_unknown_fields=True):
    seq: Annotated[int, Meta(ge=1)] | None = None


class WorkflowQuery(msgspec.Struct, forbid_unknown_fields=True):
    version: Annotated[int, Meta(ge=1)] | None = None


# --- responses ----------------------------------------------------------------


class WorkflowOut(msgspec.Struct):
    name: str
    version: int
    definition: dict[str, Any]
    created_at: str


class ValidationIssue(msgspec.Struct):
    path: str
    message: str


class ValidationResult(msgspec.Struct):
    valid: bool
    errors: list[ValidationIssue]


class WorkflowList(msgspec.Struct):
    workflows: list[WorkflowOut]


class ExecutionOut(msgspec.Struct):
    execution_id: str
    workflow: str
    version: int
    name: str
    status: str
    input: msgspec.Raw
    output: msgspec.Raw | None
    error: str | None
    cause: str | None
    started_at: str
    stopped_at: str | None


class ExecutionList(msgspec.Struct):
    executions: list[ExecutionOut]
    next_cursor: str | None


class EventOut(msgspec.Struct):
    seq: int
    type: str
    timestamp: str
    details: dict[str, Any]


class History(msgspec.Struct):
    events: list[EventOut]
    next_cursor: str | None


class StateDiff(msgspec.Struct):
    """The events after ``from`` up to ``to`` and the RFC 6902 ops from the
    state at ``from`` to the state at ``to``."""

    execution_id: str
    from_seq: int = msgspec.field(name="from")
    to_seq: int = msgspec.field(name="to")
    events: list[EventOut] = []
    patch: list[dict[str, Any]] = []


class WorkflowStats(msgspec.Struct):
    workflow: str
    version: int | None
    start: str = msgspec.field(name="from")
    end: str = msgspec.field(name="to")
    executions: Any = None
    states: list[Any] = []


# --- helpers ------------------------------------------------------------------


def _path_of(message: str) -> tuple[str, str]:
    head, sep, tail = message.rpartition(" - at `")
    if sep and tail.endswith("`"):
        return tail[:-1], head
    return "$", message


def decode_body(body: bytes, kind: type[T]) -> T:
    """Decode a JSON body into `kind`; an empty body counts as `{}`."""
    try:
        return msgspec.json.decode(body or b"{}", type=kind)
    except msgspec.ValidationError as exc:
        # msgspec validates while it parses: a type error may hide a syntax error.
        try:
            msgspec.json.decode(body)
        except msgspec.DecodeError:
            raise MalformedJson(f"request body is not valid JSON: {exc}") from None
        except RecursionError:
            raise MalformedJson("request body is JSON nested too deeply") from None
        path, message = _path_of(str(exc))
        raise InvalidBody(f"{message} at {path}", [(path, message)]) from None
    except msgspec.DecodeError as exc:
        raise MalformedJson(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise MalformedJson("request body is JSON nested too deeply") from None


def decode_query(query: Any, kind: type[T]) -> T:
    """Convert query parameters (strings) into `kind`; paths name the parameter."""
    try:
        return msgspec.convert(dict(query), kind, strict=False)
    except msgspec.ValidationError as exc:
        path, message = _path_of(str(exc))
        name = path.removeprefix("$.") if path != "$" else "query"
        raise InvalidQuery(f"query parameter {name}: {message}", [(name, message)]) from None


def encode_cursor(value: Any) -> str:
    """An opaque cursor: base64url of JSON, unpadded."""
    return base64.urlsafe_b64encode(msgspec.json.encode(value)).rstrip(b"=").decode()


def decode_cursor(cursor: str, kind: Any) -> Any:
    """Decode a cursor of `encode_cursor` as `kind`; anything else -> InvalidQuery."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        return msgspec.json.decode(raw, type=kind)
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise InvalidQuery("cursor is not one this API returned", [("cursor", "invalid")]) from None


def parse_execution_id(text: str) -> UUID | None:
    """The UUID in a path, or None when malformed (routes answer 404 then)."""
    try:
        return UUID(text)
    except ValueError:
        return None
