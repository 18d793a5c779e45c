"""A compiled intrinsic call and its argument nodes, evaluated per call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.core.asl.context import EvalEnv
from engine.core.asl.intrinsics.functions import FUNCTIONS
from engine.core.asl.jsonpath import JsonPath, PathNotFound


class ArgumentPathNotFound(PathNotFound):
    """A JSONPath argument of an intrinsic selected nothing."""

    def __init__(self, path_text: str, message: str) -> None:
        super().__init__(message)
        self.path_text = path_text


class Arg:
    """One argument of a call: a literal, a path, or a nested call."""

    def value(self, data: Any, context: Any, env: EvalEnv) -> Any:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Literal(Arg):
    literal: Any
    # For string literals: the text with brace escapes kept, which is what
    # States.Format needs to tell '\{}' from a placeholder.
    format_text: str | None = None

    def value(self, data: Any, context: Any, env: EvalEnv) -> Any:
        return self.literal


@dataclass(frozen=True, slots=True)
class PathArg(Arg):
    path: JsonPath

    def value(self, data: Any, context: Any, env: EvalEnv) -> Any:
        try:
            return self.path.evaluate(data, context, env.variables)
        except PathNotFound as exc:
            raise ArgumentPathNotFound(self.path.text, str(exc)) from None


@dataclass(frozen=True, slots=True)
class CallArg(Arg):
    call: Intrinsic

    def value(self, data: Any, context: Any, env: EvalEnv) -> Any:
        return self.call.evaluate(data, context, env)


class Intrinsic:
    """A compiled intrinsic call. Build with ``compile_intrinsic``."""

    __slots__ = ("args", "name", "spec", "text")

    def __init__(self, text: str, name: str, args: tuple[Arg, ...]) -> None:
        self.text = text
        self.name = name
        self.args = args
        self.spec = FUNCTIONS[name]

    def __repr__(self) -> str:
        return f"Intrinsic({self.text!r})"

    def evaluate(self, data: Any, context: Any, env: EvalEnv) -> Any:
        values = [a.value(data, context, env) for a in self.args]
        first = self.args[0] if self.args else None
        format_text = first.format_text if isinstance(first, Literal) else None
        return self.spec.impl(values, format_text, env)
