"""Filter predicates (``[?(...)]``) as Jayway evaluates them.

The parser compiles a filter into closures ``(node, root) -> value / bool``;
this module holds what those closures do: the comparison operators and the
reading of ``@`` / ``$`` path operands (``MISSING`` when nothing is there).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from engine.core.asl.jsonpath.segments import MISSING, Field, Segment
from engine.core.asl.jsonvalue import json_equal, json_type

Operand = Callable[[Any, Any], Any]


def _ordered(a: Any, b: Any) -> bool:
    ka, kb = json_type(a), json_type(b)
    return ka == kb and ka in ("number", "string")


def compare(op: str, a: Any, b: Any) -> bool:
    """Whether ``a op b`` holds (``op`` stripped, e.g. ``==``, ``in``); a missing
    operand makes it false (except a missing right operand of ``empty``)."""
    if a is MISSING or (b is MISSING and op not in ("empty",)):
        return False
    if op == "==":
        return json_equal(a, b)
    if op == "!=":
        return not json_equal(a, b)
    if op in ("<", "<=", ">", ">="):
        if not _ordered(a, b):
            return False
        if op == "<":
            return bool(a < b)
        if op == "<=":
            return bool(a <= b)
        if op == ">":
            return bool(a > b)
        return bool(a >= b)
    if op == "=~":
        return isinstance(a, str) and isinstance(b, re.Pattern) and b.fullmatch(a) is not None
    if op == "in":
        return isinstance(b, list) and any(json_equal(a, x) for x in b)
    if op == "nin":
        return isinstance(b, list) and not any(json_equal(a, x) for x in b)
    if op == "size":
        return isinstance(a, (str, list, dict)) and json_type(b) == "number" and len(a) == b
    if op == "empty":
        empty = isinstance(a, (str, list, dict)) and len(a) == 0
        return empty == bool(b)
    if op == "anyof":
        return (
            isinstance(a, list)
            and isinstance(b, list)
            and any(json_equal(x, y) for x in a for y in b)
        )
    if op == "noneof":
        return (
            isinstance(a, list)
            and isinstance(b, list)
            and not any(json_equal(x, y) for x in a for y in b)
        )
    if op == "subsetof":
        return (
            isinstance(a, list)
            and isinstance(b, list)
            and all(any(json_equal(x, y) for y in b) for x in a)
        )
    raise AssertionError(op)


def path_operand(segments: tuple[Segment, ...], from_root: bool, length_fn: bool) -> Operand:
    """The value an ``@...`` (or ``$...`` when ``from_root``) operand reads;
    ``length_fn`` is a trailing ``.length()`` call."""
    if length_fn:
        segments = segments[:-1]
    definite = all(s.definite for s in segments)

    def operand(node: Any, root: Any) -> Any:
        values = [root if from_root else node]
        for i, seg in enumerate(segments):
            # "@.length" on an array (not a field) is its length, as in Jayway.
            if (
                isinstance(seg, Field)
                and seg.name == "length"
                and i == len(segments) - 1
                and len(values) == 1
                and isinstance(values[0], list)
            ):
                return len(values[0])
            values = [c for v in values for c in seg.children(v, root)]
        if length_fn:
            if len(values) == 1 and isinstance(values[0], (list, str, dict)):
                return len(values[0])
            return MISSING
        if definite:
            return values[0] if values else MISSING
        return values

    return operand
