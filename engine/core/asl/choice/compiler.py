"""Compiling and checking Choice rules: every problem as (json path, message)."""

from __future__ import annotations

from typing import Any, Final

from engine.core.asl.choice.operators import CHOICE_RULE_OPERATORS, OPS, PATH_OPS, TESTS
from engine.core.asl.choice.rules import (
    AndRule,
    ComparisonRule,
    CompiledChoice,
    NotRule,
    OrRule,
    PresentRule,
    Rule,
    TypeTestRule,
)
from engine.core.asl.jsonpath import JsonPath, PathSyntaxError, compile_path

_COMBINATORS: Final = frozenset({"And", "Or", "Not"})
_RULE_META: Final = frozenset({"Comment"})
_CHOICE_META: Final = frozenset({"Next", "Comment", "Assign", "Output"})


class InvalidChoiceRule(ValueError):
    """A Choice rule that does not compile; `errors` lists (json path, message)."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{p}: {m}" for p, m in errors))
        self.errors = errors


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
        if name in TESTS or name == "IsPresent":
            if not isinstance(value, bool):
                self.fail(where, f"{name} must be a boolean")
                return None
            if variable is None:
                return None
            if name == "IsPresent":
                return PresentRule(variable, value)
            return TypeTestRule(variable, name, TESTS[name], value)
        if name in PATH_OPS:
            base = PATH_OPS[name]
            kind, compare = OPS[base]
            operand_path = self.path(value, where)
            if variable is None or operand_path is None:
                return None
            return ComparisonRule(variable, name, kind, compare, None, operand_path)
        kind, compare = OPS[name]
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
