"""Compiled Choice rules and their evaluation against a state input."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.core.asl.choice.operators import MISSING, Compare, Kind
from engine.core.asl.errors import StatesError
from engine.core.asl.jsonpath import JsonPath, PathNotFound


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
        return MISSING


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
        present = _select(self.variable, data, context, variables) is not MISSING
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
        if value is MISSING:
            raise _invalid_path(self.variable)
        return self.test(value) == self.expected


@dataclass(frozen=True, slots=True)
class ComparisonRule(Rule):
    """`Variable <operator> operand`; the operand is a literal or a path."""

    variable: JsonPath
    operator: str
    kind: Kind
    compare: Compare
    operand: Any  # coerced literal, when operand_path is None
    operand_path: JsonPath | None

    def _eval(self, data: Any, context: Any, variables: dict[str, Any]) -> bool:
        raw = _select(self.variable, data, context, variables)
        if raw is MISSING:
            raise _invalid_path(self.variable)
        if self.operand_path is None:
            operand = self.operand
        else:
            other = _select(self.operand_path, data, context, variables)
            if other is MISSING:
                raise _invalid_path(self.operand_path)
            operand = self.kind.coerce_operand(other)
            if operand is MISSING:
                return False
        value = self.kind.coerce(raw)
        if value is MISSING:
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
