"""The comparison operators of Choice rules and how each reads its operands.

Every operator belongs to a ``Kind`` that accepts a literal operand, words the
expected type in messages, and coerces values to something comparable, or
to ``MISSING`` when the type is wrong (the comparison is then false). Strings
order by UTF-16 code units, timestamps as (seconds, nanoseconds) instants.
"""

from __future__ import annotations

import datetime as dt
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

# A value of the wrong type for a kind, or a path that selected nothing.
MISSING: Final = object()

# ---------------------------------------------------------------- timestamps

_TIMESTAMP = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})"
)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def parse_timestamp(text: str) -> tuple[int, int] | None:
    """(seconds since the epoch, nanoseconds) of an ASL timestamp, or None."""
    m = _TIMESTAMP.fullmatch(text)
    if m is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    offset = m.group(8)
    try:
        if offset == "Z":
            tz = dt.UTC
        else:
            oh, om = int(offset[1:3]), int(offset[4:6])
            if oh > 18 or om > 59:
                return None
            delta = dt.timedelta(hours=oh, minutes=om)
            tz = dt.timezone(delta if offset[0] == "+" else -delta)
        moment = dt.datetime(year, month, day, hour, minute, second, tzinfo=tz)
    except ValueError:
        return None
    nanos = int((m.group(7) or "").ljust(9, "0"))
    return (moment - _EPOCH) // dt.timedelta(seconds=1), nanos


# ----------------------------------------------------------------- operands


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _utf16(value: str) -> bytes:
    return value.encode("utf-16-be", "surrogatepass")


def _as_string(value: Any) -> Any:
    return value if isinstance(value, str) else MISSING


def _as_utf16(value: Any) -> Any:
    return _utf16(value) if isinstance(value, str) else MISSING


def _as_number(value: Any) -> Any:
    return value if _is_number(value) else MISSING


def _as_boolean(value: Any) -> Any:
    return value if isinstance(value, bool) else MISSING


def _as_timestamp(value: Any) -> Any:
    if isinstance(value, str):
        parsed = parse_timestamp(value)
        if parsed is not None:
            return parsed
    return MISSING


def _compile_pattern(pattern: str) -> re.Pattern[str]:
    parts: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern) and pattern[i + 1] in "*\\":
            parts.append(re.escape(pattern[i + 1]))
            i += 2
        elif ch == "*":
            parts.append(".*")
            i += 1
        else:
            parts.append(re.escape(ch))
            i += 1
    return re.compile("".join(parts), re.DOTALL)


def _as_pattern(value: Any) -> Any:
    return _compile_pattern(value) if isinstance(value, str) else MISSING


def _matches(value: Any, pattern: Any) -> bool:
    assert isinstance(pattern, re.Pattern)
    return pattern.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class Kind:
    """How one family of operators reads its two operands and compares them."""

    literal: Callable[[Any], bool]  # is this literal operand acceptable?
    literal_type: str  # for messages
    coerce: Callable[[Any], Any]  # value -> comparable, or MISSING (wrong type)
    coerce_operand: Callable[[Any], Any]  # operand -> comparable, or MISSING


_STRING = Kind(lambda v: isinstance(v, str), "a string", _as_string, _as_string)
_ORDERED_STRING = Kind(lambda v: isinstance(v, str), "a string", _as_utf16, _as_utf16)
_NUMBER = Kind(_is_number, "a number", _as_number, _as_number)
_BOOLEAN = Kind(lambda v: isinstance(v, bool), "a boolean", _as_boolean, _as_boolean)
_TIMESTAMP_KIND = Kind(
    lambda v: isinstance(v, str) and parse_timestamp(v) is not None,
    "a timestamp (RFC 3339, e.g. 2016-03-14T01:59:00Z)",
    _as_timestamp,
    _as_timestamp,
)
_PATTERN = Kind(lambda v: isinstance(v, str), "a string", _as_string, _as_pattern)

Compare = Callable[[Any, Any], bool]
OPS: dict[str, tuple[Kind, Compare]] = {
    "StringEquals": (_STRING, operator.eq),
    "StringLessThan": (_ORDERED_STRING, operator.lt),
    "StringGreaterThan": (_ORDERED_STRING, operator.gt),
    "StringLessThanEquals": (_ORDERED_STRING, operator.le),
    "StringGreaterThanEquals": (_ORDERED_STRING, operator.ge),
    "StringMatches": (_PATTERN, _matches),
    "NumericEquals": (_NUMBER, operator.eq),
    "NumericLessThan": (_NUMBER, operator.lt),
    "NumericGreaterThan": (_NUMBER, operator.gt),
    "NumericLessThanEquals": (_NUMBER, operator.le),
    "NumericGreaterThanEquals": (_NUMBER, operator.ge),
    "BooleanEquals": (_BOOLEAN, operator.eq),
    "TimestampEquals": (_TIMESTAMP_KIND, operator.eq),
    "TimestampLessThan": (_TIMESTAMP_KIND, operator.lt),
    "TimestampGreaterThan": (_TIMESTAMP_KIND, operator.gt),
    "TimestampLessThanEquals": (_TIMESTAMP_KIND, operator.le),
    "TimestampGreaterThanEquals": (_TIMESTAMP_KIND, operator.ge),
}
PATH_OPS = {f"{name}Path": name for name in OPS if name != "StringMatches"}

TESTS: dict[str, Callable[[Any], bool]] = {
    "IsNull": lambda v: v is None,
    "IsNumeric": _is_number,
    "IsString": lambda v: isinstance(v, str),
    "IsBoolean": lambda v: isinstance(v, bool),
    "IsTimestamp": lambda v: isinstance(v, str) and parse_timestamp(v) is not None,
}

CHOICE_RULE_OPERATORS: Final[frozenset[str]] = frozenset([*OPS, *PATH_OPS, *TESTS, "IsPresent"])
