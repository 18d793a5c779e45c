"""Request and response types, decoding helpers and opaque cursors.

Decoding contract: a body that is not JSON (syntax, invalid UTF-8, a lone
surrogate, a number out of range such as 1e400, nesting too deep) ->
MalformedJson (400); JSON of the wrong shape, or a body string with a NUL
character -> InvalidBody (422) with the msgspec path ("$.definition");
bad query parameters or cursors (out of their bounds, a NUL or other control
character in a string, a timestamp that has no UTC equivalent) ->
InvalidQuery (400, code invalid_request).

These types are the API contract: api/openapi.py generates the OpenAPI
document from them, so their bounds are the ones published.
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
from projections.executions import ExecutionSummary
from projections.stats import StateStats

T = TypeVar("T")

# The largest seq and version PostgreSQL holds: both are `integer` columns
# (migrations/0001_init.sql). The one place to change when they widen to bigint.
DB_INT_MAX = 2**31 - 1

# Workflow names travel in URL paths; execution names follow Step Functions'
# rules (1-80 characters, no whitespace, brackets, wildcards or specials).
WORKFLOW_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,80}")
ExecutionName = Annotated[
    str, Meta(min_length=1, max_length=80, pattern=r"^[^\s<>{}\[\]?*\"#%\\^|~`$&,;:/\x00-\x1f]+$")
]
WorkflowName = Annotated[str, Meta(min_length=1, max_length=80, pattern=r"^[A-Za-z0-9_.\-]+$")]
# Free text (a stop's error and cause) may hold anything but NUL, which PostgreSQL's
# text and jsonb refuse.
_NO_NUL = r"^[^\x00]*$"
ErrorName = Annotated[str, Meta(max_length=256, pattern=_NO_NUL)]
Cause = Annotated[str, Meta(max_length=32768, pattern=_NO_NUL)]
Status = Literal["RUNNING", "SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED"]
Limit = Annotated[int, Meta(ge=1, le=1000)]
Seq = Annotated[int, Meta(ge=1, le=DB_INT_MAX)]
SeqOrZero = Annotated[int, Meta(ge=0, le=DB_INT_MAX)]
Version = Annotated[int, Meta(ge=1, le=DB_INT_MAX)]
# A prefix of an execution name: the same characters, so no NUL or control character.
NamePrefix = Annotated[
    str, Meta(min_length=1, max_length=80, pattern=r"^[^\s<>{}\[\]?*\"#%\\^|~`$&,;:/\x00-\x1f]+$")
]
# Cursors are opaque, short base64url strings.
Cursor = Annotated[str, Meta(min_length=1, max_length=512, pattern=r"^[A-Za-z0-9_\-]+$")]


# --- requests -----------------------------------------------------------------


class RegisterWorkflow(msgspec.Struct, forbid_unknown_fields=True):
    definition: dict[str, Any]
    # As Step Functions' state machine type; EXPRESS changes the context object of its
    # executions ($$.Execution.Id is an express: ARN, no RedriveCount).
    type: Literal["STANDARD", "EXPRESS"] = "STANDARD"


def _single_line(field: str, value: str | None) -> None:
    """Python's ``$`` also matches before a final newline: refuse what the published
    (ECMA) pattern refuses."""
    if value is not None and value.endswith("\n"):
        raise ValueError(f"{field} must not end with a newline")


class StartExecution(msgspec.Struct, forbid_unknown_fields=True):
    # Kept raw: its size is checked against max_payload_bytes before decoding
    # (decode_input), and the JSON text goes on as sent.
    input: msgspec.Raw = msgspec.field(default_factory=lambda: msgspec.Raw(b"{}"))
    name: ExecutionName | None = None

    def __post_init__(self) -> None:
        _single_line("name", self.name)


class StopExecution(msgspec.Struct, forbid_unknown_fields=True):
    error: ErrorName | None = None
    cause: Cause | None = None


Timestamp = Annotated[dt.datetime, Meta(tz=True)]  # RFC 3339 with an offset


class ListExecutionsQuery(msgspec.Struct, forbid_unknown_fields=True):
    """Time ranges are [after, before); ``order`` sorts by start time."""

    workflow: WorkflowName | None = None
    version: Version | None = None
    status: Status | None = None
    name_prefix: NamePrefix | None = None
    started_after: Timestamp | None = None
    started_before: Timestamp | None = None
    stopped_after: Timestamp | None = None
    stopped_before: Timestamp | None = None
    order: Literal["desc", "asc"] = "desc"
    limit: Limit = 100
    cursor: Cursor | None = None

    def __post_init__(self) -> None:
        _single_line("workflow", self.workflow)
        _single_line("name_prefix", self.name_prefix)


class HistoryQuery(msgspec.Struct, forbid_unknown_fields=True):
    """``reverse``: newest first. ``include_data=false`` leaves out the input and
    output payloads of the events (as AWS's includeExecutionData)."""

    limit: Limit = 100
    cursor: Cursor | None = None
    reverse: bool = False
    include_data: bool = True


class ExportQuery(msgspec.Struct, forbid_unknown_fields=True):
    include_data: bool = True


class EventsFeedQuery(msgspec.Struct, forbid_unknown_fields=True):
    """Resume after this seq (the Last-Event-ID header wins when both are given)."""

    after: SeqOrZero | None = None


class DiffQuery(
    msgspec.Struct, forbid_unknown_fields=True, rename={"from_seq": "from", "to_seq": "to"}
):
    from_seq: Seq
    to_seq: Seq


class StatsQuery(msgspec.Struct, forbid_unknown_fields=True, rename={"start": "from", "end": "to"}):
    """The window [from, to): by default the 24 hours before now."""

    start: Timestamp | None = None
    end: Timestamp | None = None
    version: Version | None = None


class StateQuery(msgspec.Struct, forbid_unknown_fields=True):
    seq: Seq | None = None


class WorkflowQuery(msgspec.Struct, forbid_unknown_fields=True):
    version: Version | None = None


# --- responses ----------------------------------------------------------------


class WorkflowOut(msgspec.Struct):
    name: str
    version: int
    definition: dict[str, Any]
    created_at: str
    type: Literal["STANDARD", "EXPRESS"] = "STANDARD"


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
    executions: ExecutionSummary | None = None
    states: list[StateStats] = []


class Health(msgspec.Struct, omit_defaults=True):
    """``checks``: each dependency's result ("ok" or the error), on /health/ready."""

    status: Literal["ok"]
    checks: dict[str, str] | None = None


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


def decode_input(raw: bytes) -> Any:
    """The execution input (kept raw by `StartExecution`) as a JSON value; anything a
    JSON parser refuses (invalid UTF-8, a lone surrogate, a number out of range such
    as 1e400, nesting too deep) -> MalformedJson naming ``$.input``."""
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:  # ValidationError ("Number out of range") included
        raise MalformedJson(f"request body is not valid JSON at $.input: {exc}") from None
    except RecursionError:
        raise MalformedJson("request body is JSON nested too deeply at $.input") from None


def nul_path(value: Any, path: str = "$") -> str | None:
    """The JSON path of the first string (value or key) in ``value`` holding a NUL
    character, which PostgreSQL's text and jsonb cannot store; None when there is none."""
    stack = [(value, path)]
    while stack:
        node, at = stack.pop()
        if isinstance(node, str):
            if "\x00" in node:
                return at
        elif isinstance(node, dict):
            for key, item in node.items():
                if "\x00" in key:
                    return at
                stack.append((item, f"{at}.{key}"))
        elif isinstance(node, list):
            stack.extend((item, f"{at}[{i}]") for i, item in enumerate(node))
    return None


def refuse_nul(value: Any, path: str) -> None:
    """InvalidBody (422) at the path of a NUL character inside ``value``."""
    at = nul_path(value, path)
    if at is not None:
        message = "strings must not contain the NUL character (\\u0000)"
        raise InvalidBody(f"{message} at {at}", [(at, message)])


_FIELDS: dict[type, tuple[msgspec.structs.FieldInfo, ...]] = {}


def _fields(kind: type) -> tuple[msgspec.structs.FieldInfo, ...]:
    """A query struct's fields, once per struct: `msgspec.structs.fields` evaluates the
    class's annotations again at every call."""
    known = _FIELDS.get(kind)
    if known is None:
        known = _FIELDS[kind] = msgspec.structs.fields(kind)
    return known


def decode_query(query: Any, kind: type[T]) -> T:
    """Convert query parameters (strings) into `kind`; paths name the parameter.
    Timestamps come back in UTC (one that has none, e.g. year 1 at +01:00, is refused)."""
    params = dict(query)
    for name in params:
        if len(query.getall(name)) > 1:
            message = "given more than once"
            raise InvalidQuery(f"query parameter {name}: {message}", [(name, message)])
    try:
        decoded = msgspec.convert(params, kind, strict=False)
    except msgspec.ValidationError as exc:
        path, message = _path_of(str(exc))
        name = path.removeprefix("$.") if path != "$" else "query"
        raise InvalidQuery(f"query parameter {name}: {message}", [(name, message)]) from None
    changes = {}
    for field in _fields(kind):
        value = getattr(decoded, field.name)
        if value is None and field.encode_name in params:
            # Lax conversion reads "null" as None: a parameter is absent or a value.
            message = "must be a value (leave the parameter out for none)"
            raise InvalidQuery(
                f"query parameter {field.encode_name}: {message}", [(field.encode_name, message)]
            )
        if isinstance(value, dt.datetime):
            changes[field.name] = _utc(params[field.encode_name], field.encode_name)
    return msgspec.structs.replace(decoded, **changes) if changes else decoded  # type: ignore[type-var]


def _utc(text: str, name: str) -> dt.datetime:
    """An RFC 3339 timestamp (lax conversion would also take a number of seconds) in UTC."""
    try:
        return msgspec.convert(text, Timestamp).astimezone(dt.UTC)
    except msgspec.ValidationError:
        message = "must be an RFC 3339 timestamp with an offset"
    except OverflowError:
        message = "timestamp out of range once converted to UTC"
    raise InvalidQuery(f"query parameter {name}: {message}", [(name, message)])


def encode_cursor(value: Any) -> str:
    """An opaque cursor: base64url of JSON, unpadded."""
    return base64.urlsafe_b64encode(msgspec.json.encode(value)).rstrip(b"=").decode()


def decode_cursor(cursor: str, kind: Any) -> Any:
    """Decode a cursor of `encode_cursor` as `kind` (whose bounds it must meet);
    anything else -> InvalidQuery."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value = msgspec.json.decode(raw, type=kind)
        if isinstance(value, tuple):
            value = tuple(v.astimezone(dt.UTC) if isinstance(v, dt.datetime) else v for v in value)
        return value
    except (binascii.Error, ValueError, OverflowError, msgspec.DecodeError, RecursionError):
        raise InvalidQuery("cursor is not one this API returned", [("cursor", "invalid")]) from None


def parse_execution_id(text: str) -> UUID | None:
    """The UUID in a path, or None when malformed (routes answer 404 then)."""
    try:
        return UUID(text)
    except ValueError:
        return None
