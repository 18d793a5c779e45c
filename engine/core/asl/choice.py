"""Compiled Choice rules of the Amazon States Language (JSONPath flavour).

Contract
--------
- `compile_rule(obj, path)` turns one Boolean expression (a comparison, an
  `Is*` test, or `And`/`Or`/`Not` nesting) into a `Rule`, once, at
  registration. A malformed expression raises `InvalidChoiceRule`, which
  carries every problem found as `(json path, message)` pairs; `check_rule`
  returns the same list without raising (the validator uses it).
- `compile_choice(obj, path)` compiles one entry of a Choice state's
  `Choices` into `CompiledChoice(rule, next, condition, assign, output)`.
  A JSONPath entry has a `rule`; a JSONata entry (`Condition`) has `rule=None`
  and its raw `condition` (a `{% ... %}` string or a boolean) for the JSONata
  module to evaluate. `Assign` and `Output` are carried through raw.
- `Rule.matches(data, context, variables) -> bool` is pure. As on AWS:
  a comparison whose value (or, for `...Path` operators, whose other operand)
  has the wrong type is false, not an error; a `Variable` (or `...Path`
  operand) that selects nothing raises `StatesError("States.Runtime",
  "Invalid path '<path>': The choice state's condition path references an
  invalid value.")`, except under `IsPresent`, which tests exactly that.
- Strings compare by UTF-16 code units (Java `String.compareTo`), numbers by
  value (booleans are not numbers), timestamps as instants with nanosecond
  precision. Timestamps follow the ASL profile of RFC 3339: upper-case `T`,
  seconds required, 1-9 fraction digits, `Z` or a `+hh:mm`/`-hh:mm` offset.
- `StringMatches` patterns: `*` matches any run of characters (also none),
  `\\*` a literal `*`, `\\\\` a literal backslash.
"""

from __future__ import annotations

import datetime as dt
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from engine.core.asl.errors import StatesError
from engine.core.asl.jsonpath import JsonPath, PathNotFound, PathSyntaxError, compile_path

__all__ = [
    "CHOICE_RULE_OPERATORS",
    "CompiledChoice",
    "InvalidChoiceRule",
    "Rule",
    "check_choice",
    "check_rule",
    "compile_choice",
    "compile_rule",
    "parse_timestamp",
]

_MISSING: Final = object()

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
    return value if isinstance(value, str) else _MISSING


def _as_utf16(value: Any) -> Any:
    return _utf16(value) if isinstance(value, str) else _MISSING


def _as_number(value: Any) -> Any:
    return value if _is_number(value) else _MISSING


def _as_boolean(value: Any) -> Any:
    return value if isinstance(value, bool) else _MISSING


def _as_timestamp(value: Any) -> Any:
    if isinstance(value, str):
        parsed = parse_timestamp(value)
        if parsed is not None:
            return parsed
    return _MISSING


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
    return _compile_pattern(value) if isinstance(value, str) else _MISSING


def _matches(value: Any, pattern: Any) -> bool:
    assert isinstance(pattern, re.Pattern)
    return pattern.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class _Kind:
    """How one family of operators reads its two operands and compares them."""

    literal: Callable[[Any], bool]  # is this literal operand acceptable?
    literal_type: str  # for messages
    coerce: Callable[[Any], Any]  # value -> comparable, or _MISSING (wrong type)
    coerce_operand: Callable[[Any], Any]  # operand -> comparable, or _MISSING


_STRING = _Kind(lambda v: isinstance(v, str), "a string", _as_string, _as_string)
_ORDERED_STRING = _Kind(lambda v: isinstance(v, str), "a string", _as_utf16, _as_utf16)
_NUMBER = _Kind(_is_number, "a number", _as_number, _as_number)
_BOOLEAN = _Kind(lambda v: isinstance(v, bool), "a boolean", _as_boolean, _as_boolean)
_TIMESTAMP_KIND = _Kind(
    lambda v: isinstance(v, str) and parse_timestamp(v) is not None,
    "a timestamp (RFC 3339, e.g. 2016-03-14T01:59:00Z)",
    _as_timestamp,
    _as_timestamp,
)
_PATTERN = _Kind(lambda v: isinstance(v, str), "a string", _as_string, _as_pattern)

_Compare = Callable[[Any, Any], bool]
_OPS: dict[str, tuple[_Kind, _Compare]] = {
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
_PATH_OPS = {f"{name}Path": name for name in _OPS if name != "StringMatches"}

_TESTS: dict[str, Callable[[Any], bool]] = {
    "IsNull": lambda v: v is None,
    "IsNumeric": _is_number,
    "IsString": lambda v: isinstance(v, str),
    "IsBoolean": lambda v: isinstance(v, bool),
    "IsTimestamp": lambda v: isinstance(v, str) and parse_timestamp(v) is not None,
}

CHOICE_RULE_OPERATORS: Final[frozenset[str]] = frozenset([*_OPS, *_PATH_OPS, *_TESTS, "IsPresent"])
_COMBINATORS: Final = frozenset({"And", "Or", "Not"})
_RULE_META: Final = frozenset({"Comment"})
_CHOICE_META: Final = frozenset({"Next", "Comment", "Assign", "Output"})


# -------------------------------------------------------------------- rules


def _invalid_path(path: JsonPath) -> StatesError:
    return StatesError(
        "States.Runtime",
        f"Invalid path '{path.text}': The choice state's condition path references an "
        "invalid value.",
    )


def _select(path: JsonPath, data: Any, context: Any, variables: dict[str, Any]) -> Any:
    try:
        return path.evaluate(data, context, variables=variables)
    except PathNotFound:
        return _MISSING


class Rule:
    """A compiled Boolean expression of a Choice rule."""

    __slots__ = ()

    def matches(
        self, data: Any, context: Any = None, variables: dict[str, Any] | None = None
    ) -> bool:
        """True when the expression holds for the state input `data`.

        Raises StatesError(States.Runtime) when a path selects nothing (see the
        module contract)."""
        return self._eval(data, context, variables if variables is not None else {})

    def _eval(self, data: Any, context: Any, variables: dict[str, Any]) -> bool:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class AndRule(Rule):
    rules: tuple[Rule, ...]

    def _eval(self, data: Any, context: Any, variables: dict[str, Any]) -> bool:
        return all(r._eval(data, context, variables) for r in self.rules)


@dataclass(frozen=True, slots=True)
class OrRule(Rule):
    rules: tuple[Rule, ...]

    def _eval(self, data: Any, context: Any, variables: dict[str, Any]) -> bool:
        return any(r._eval(data, context, variables) for r in self.rules)


@dataclass(frozen=True, slots=True)
class NotRule(Rule):
    rule: Rule

    def _eval(self, data: Any, context: Any, variables: dict[str, Any]) -> bool:
        return not self.rule._eval(data, context, variables)


@dataclass(frozen=True, slots=True)
class PresentRule(Rule):
    variable: JsonPath
    expected: bool

    def _eval(self, data: Any, context: Any, variables: dict[str, Any]) -> bool:
        present = _select(self.variable, data, context, variables) is not _MISSING
        return present == self.expected


@dataclass(frozen=True, slots=True)
class TypeTestRule(Rule):
    """IsNull / IsNumeric / IsString / IsBoolean / IsTimestamp."""

    variable: JsonPath
    operator: str
    test: Callable[[Any], bool]
    expected: bool

    def _eval(self, data: Any, context: Any, variables: dict[str, Any]) -> bool:
        value = _select(self.variable, data, context, variables)
        if value is _MISSING:
            raise _invalid_path(self.variable)
        return self.test(value) == self.expected


@dataclass(frozen=True, slots=True)
class ComparisonRule(Rule):
    """`Variable <operator> operand`; the operand is a literal or a path."""

    variable: JsonPath
    operator: str
    kind: _Kind
    compare: _Compare
    operand: Any  # coerced literal, when operand_path is None
    operand_path: JsonPath | None

    def _eval(self, data: Any, context: Any, variables: dict[str, Any]) -> bool:
        raw = _select(self.variable, data, context, variables)
        if raw is _MISSING:
            raise _invalid_path(self.variable)
        if self.operand_path is None:
            operand = self.operand
        else:
            other = _select(self.operand_path, data, context, variables)
            if other is _MISSING:
                raise _invalid_path(self.operand_path)
            operand = self.kind.coerce_operand(other)
            if operand is _MISSING:
                return False
        value = self.kind.coerce(raw)
        if value is _MISSING:
            return False
        return self.compare(value, operand)


@dataclass(frozen=True, slots=True)
class CompiledChoice:
    """One entry of a Choice state's `Choices`.

    `rule` is set for JSONPath entries, `condition` (raw `{% %}` string or
    boolean) for JSONata ones; exactly one of them is not None."""

    rule: Rule | None
    next: str
    condition: str | bool | None = None
    assign: Any = None
    output: Any = None
    has_output: bool = False


class InvalidChoiceRule(ValueError):
    """A Choice rule that does not compile; `errors` lists (json path, message)."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{p}: {m}" for p, m in errors))
        self.errors = errors


# ----------------------------------------------------------------- compiler


def _key_path(path: str, key: str) -> str:
    return f"{path}.{key}" if key.isidentifier() else f"{path}[{key!r}]"


class _Compiler:
    def __init__(self) -> None:
        self.errors: list[tuple[str, str]] = []

    def fail(self, path: str, message: str) -> None:
        self.errors.append((path, message))

    def path(self, text: Any, where: str) -> JsonPath | None:
        if not isinstance(text, str):
            self.fail(where, "must be a JSONPath string")
            return None
        try:
            compiled = compile_path(text)
        except PathSyntaxError as e:
            self.fail(where, f"invalid JSONPath {text!r}: {e}")
            return None
        if not compiled.is_definite:
            self.fail(
                where, f"must be a reference path (no filters, wildcards or slices): {text!r}"
            )
            return None
        return compiled

    def expression(self, obj: Any, path: str, allowed_meta: frozenset[str]) -> Rule | None:
        if not isinstance(obj, dict):
            self.fail(path, "a choice rule must be an object")
            return None
        combinators = [k for k in obj if k in _COMBINATORS]
        operators = [k for k in obj if k in CHOICE_RULE_OPERATORS]
        unknown = [
            k
            for k in obj
            if k not in _COMBINATORS
            and k not in CHOICE_RULE_OPERATORS
            and k not in allowed_meta
            and k != "Variable"
        ]
        for k in unknown:
            self.fail(_key_path(path, k), f"unknown field {k!r} in a choice rule")
        if combinators:
            if len(combinators) > 1 or operators or "Variable" in obj:
                self.fail(
                    path,
                    "a choice rule must have exactly one of And, Or, Not, or Variable "
                    "with one comparison operator",
                )
                return None
            return self.combinator(combinators[0], obj[combinators[0]], path)
        if "Variable" not in obj:
            self.fail(path, "a choice rule must have And, Or, Not, or Variable with an operator")
            return None
        if len(operators) != 1:
            self.fail(
                path,
                "a choice rule with Variable must have exactly one comparison operator"
                + (f", found {', '.join(operators)}" if operators else ""),
            )
            return None
        variable = self.path(obj["Variable"], _key_path(path, "Variable"))
        name = operators[0]
        return self.comparison(name, obj[name], variable, _key_path(path, name))

    def combinator(self, name: str, value: Any, path: str) -> Rule | None:
        where = _key_path(path, name)
        if name == "Not":
            inner = self.expression(value, where, _RULE_META)
            return NotRule(inner) if inner is not None else None
        if not isinstance(value, list) or not value:
            self.fail(where, f"{name} must be a non-empty array of choice rules")
            return None
        rules = [self.expression(r, f"{where}[{i}]", _RULE_META) for i, r in enumerate(value)]
        if any(r is None for r in rules):
            return None
        compiled = tuple(r for r in rules if r is not None)
        return AndRule(compiled) if name == "And" else OrRule(compiled)

    def comparison(
        self, name: str, value: Any, variable: JsonPath | None, where: str
    ) -> Rule | None:
        if name in _TESTS or name == "IsPresent":
            if not isinstance(value, bool):
                self.fail(where, f"{name} must be a boolean")
                return None
            if variable is None:
                return None
            if name == "IsPresent":
                return PresentRule(variable, value)
            return TypeTestRule(variable, name, _TESTS[name], value)
        if name in _PATH_OPS:
            base = _PATH_OPS[name]
            kind, compare = _OPS[base]
            operand_path = self.path(value, where)
            if variable is None or operand_path is None:
                return None
            return ComparisonRule(variable, name, kind, compare, None, operand_path)
        kind, compare = _OPS[name]
        if not kind.literal(value):
            self.fail(where, f"{name} must be {kind.literal_type}")
            return None
        if variable is None:
            return None
        return ComparisonRule(variable, name, kind, compare, kind.coerce_operand(value), None)

    def choice(self, obj: Any, path: str) -> CompiledChoice | None:
        if not isinstance(obj, dict):
            self.fail(path, "a choice rule must be an object")
            return None
        nxt = obj.get("Next")
        if not isinstance(nxt, str) or not nxt:
            self.fail(
                _key_path(path, "Next"), "a top-level choice rule must have a Next state name"
            )
        if "Condition" in obj:
            condition = obj["Condition"]
            for k in obj:
                if k not in _CHOICE_META and k != "Condition":
                    self.fail(_key_path(path, k), f"field {k!r} is not allowed with Condition")
            if not isinstance(condition, str | bool):
                self.fail(
                    _key_path(path, "Condition"), "Condition must be a JSONata string or a boolean"
                )
                return None
            if isinstance(condition, str) and not _is_jsonata(condition):
                self.fail(
                    _key_path(path, "Condition"),
                    "Condition must be a JSONata expression enclosed in {% %}",
                )
                return None
            if not isinstance(nxt, str):
                return None
            return CompiledChoice(
                None, nxt, condition, obj.get("Assign"), obj.get("Output"), "Output" in obj
            )
        rule = self.expression(obj, path, _CHOICE_META)
        if rule is None or not isinstance(nxt, str):
            return None
        return CompiledChoice(
            rule, nxt, None, obj.get("Assign"), obj.get("Output"), "Output" in obj
        )


def _is_jsonata(text: str) -> bool:
    return text.startswith("{%") and text.endswith("%}") and len(text) >= 4


def check_rule(obj: Any, path: str = "$") -> list[tuple[str, str]]:
    """Every problem of one nested Boolean expression (no Next), as (path, message)."""
    compiler = _Compiler()
    compiler.expression(obj, path, _RULE_META)
    return compiler.errors


def check_choice(obj: Any, path: str = "$") -> list[tuple[str, str]]:
    """Every problem of one top-level `Choices` entry, as (path, message)."""
    compiler = _Compiler()
    compiler.choice(obj, path)
    return compiler.errors


def compile_rule(obj: Any, path: str = "$") -> Rule:
    """Compile one Boolean expression; raises InvalidChoiceRule listing every problem."""
    compiler = _Compiler()
    rule = compiler.expression(obj, path, _RULE_META)
    if compiler.errors or rule is None:
        raise InvalidChoiceRule(compiler.errors or [(path, "invalid choice rule")])
    return rule


def compile_choice(obj: Any, path: str = "$") -> CompiledChoice:
    """Compile one `Choices` entry; raises InvalidChoiceRule listing every problem."""
    compiler = _Compiler()
    choice = compiler.choice(obj, path)
    if compiler.errors or choice is None:
        raise InvalidChoiceRule(compiler.errors or [(path, "invalid choice rule")])
    return choice
