"""Payload templates: Parameters, ResultSelector, ItemSelector, Assign (JSONPath).

Contract
--------
``compile_template(obj) -> Template`` compiles a JSON template once. In an
object, a key ending in ``.$`` takes a string that is either a JSONPath
(``$...``, ``$$...``, ``$var...``) or an intrinsic call (``States.X(...)``);
the output key drops the ``.$``. Other keys, arrays and scalars are copied
as they are, recursing into nested objects and arrays. Bad syntax raises
``TemplateSyntaxError`` (a ``ValueError``) with the offending key.

``Template.render(data, context, env) -> Any`` builds the value. Constant
subtrees are built once and shared between renders: treat results as
immutable (the engine never mutates JSON values in place).

Errors are the bare AWS causes, without the "An error occurred while
executing the state 'X' (entered at the event id #N). " prefix, which the
engine adds because only it knows the state name and event id:

* a path that selects nothing: ``StatesError(States.Runtime, "The JSONPath
  '$.x' specified for the field 'y.$' could not be found in the input
  '<compact JSON of data>'")``;
* an intrinsic that rejects its arguments: ``StatesError(
  States.IntrinsicFailure, ...)`` from ``engine.core.asl.intrinsics``.

``FieldExpression`` is the same machinery for one field whose value is a
path or an intrinsic (Fail ``ErrorPath``/``CausePath``, ``ItemsPath`` ...):
``compile_field(field, text).render(data, context, env)``; its not-found
cause names the field itself (``... for the field 'ErrorPath' ...``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.core.asl.context import EvalEnv
from engine.core.asl.errors import RUNTIME, StatesError
from engine.core.asl.intrinsics import (
    ArgumentPathNotFound,
    Intrinsic,
    IntrinsicSyntaxError,
    compile_intrinsic,
    is_intrinsic,
)
from engine.core.asl.jsonpath import (
    JsonPath,
    PathNotFound,
    PathSyntaxError,
    compile_path,
    dump_json,
)

__all__ = [
    "FieldExpression",
    "Template",
    "TemplateSyntaxError",
    "compile_field",
    "compile_template",
    "path_not_found_cause",
]


class TemplateSyntaxError(ValueError):
    """A ``.$`` value is neither a valid JSONPath nor a valid intrinsic call."""


def path_not_found_cause(path_text: str, field: str, data: Any) -> str:
    """AWS's wording when a template or field path selects nothing."""
    return (
        f"The JSONPath '{path_text}' specified for the field '{field}' "
        f"could not be found in the input '{dump_json(data)}'"
    )


@dataclass(frozen=True, slots=True)
class FieldExpression:
    """One dynamic value: a JSONPath or an intrinsic call, named by its field."""

    field: str
    expression: JsonPath | Intrinsic

    @property
    def text(self) -> str:
        return self.expression.text

    def render(self, data: Any, context: Any, env: EvalEnv) -> Any:
        expr = self.expression
        try:
            if isinstance(expr, JsonPath):
                return expr.evaluate(data, context, env.variables)
            return expr.evaluate(data, context, env)
        except ArgumentPathNotFound as exc:
            raise StatesError(
                RUNTIME, path_not_found_cause(exc.path_text, self.field, data)
            ) from None
        except PathNotFound:
            raise StatesError(RUNTIME, path_not_found_cause(expr.text, self.field, data)) from None


def compile_field(field: str, text: Any) -> FieldExpression:
    """Compile a path-or-intrinsic string for ``field`` (e.g. 'ErrorPath')."""
    if not isinstance(text, str):
        raise TemplateSyntaxError(f"The value of '{field}' must be a string, got {dump_json(text)}")
    try:
        if is_intrinsic(text):
            return FieldExpression(field, compile_intrinsic(text))
        if text.startswith("$"):
            return FieldExpression(field, compile_path(text))
    except (PathSyntaxError, IntrinsicSyntaxError) as exc:
        raise TemplateSyntaxError(f"Invalid value for '{field}': {exc}") from None
    raise TemplateSyntaxError(
        f"The value of '{field}' must be a JSONPath or an intrinsic function, got {text!r}"
    )


class Template:
    """A compiled payload template. Build with ``compile_template``."""

    __slots__ = ("_node", "source")

    def __init__(self, source: Any, node: _Node) -> None:
        self.source = source
        self._node = node

    @property
    def is_constant(self) -> bool:
        return isinstance(self._node, _Const)

    def render(self, data: Any, context: Any, env: EvalEnv) -> Any:
        return self._node.render(data, context, env)


class _Node:
    __slots__ = ()

    def render(self, data: Any, context: Any, env: EvalEnv) -> Any:
        raise NotImplementedError


class _Const(_Node):
    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def render(self, data: Any, context: Any, env: EvalEnv) -> Any:
        return self.value


class _Dynamic(_Node):
    __slots__ = ("expr",)

    def __init__(self, expr: FieldExpression) -> None:
        self.expr = expr

    def render(self, data: Any, context: Any, env: EvalEnv) -> Any:
        return self.expr.render(data, context, env)


class _Object(_Node):
    __slots__ = ("items",)

    def __init__(self, items: tuple[tuple[str, _Node], ...]) -> None:
        self.items = items

    def render(self, data: Any, context: Any, env: EvalEnv) -> Any:
        return {k: n.render(data, context, env) for k, n in self.items}


class _Array(_Node):
    __slots__ = ("items",)

    def __init__(self, items: tuple[_Node, ...]) -> None:
        self.items = items

    def render(self, data: Any, context: Any, env: EvalEnv) -> Any:
        return [n.render(data, context, env) for n in self.items]


def _compile(obj: Any) -> _Node:
    if isinstance(obj, dict):
        items: list[tuple[str, _Node]] = []
        for key, value in obj.items():
            if isinstance(key, str) and key.endswith(".$"):
                items.append((key[:-2], _Dynamic(compile_field(key, value))))
            else:
                items.append((key, _compile(value)))
        if all(isinstance(n, _Const) for _, n in items):
            return _Const({k: n.value for k, n in items})  # type: ignore[attr-defined]
        return _Object(tuple(items))
    if isinstance(obj, list):
        nodes = tuple(_compile(v) for v in obj)
        if all(isinstance(n, _Const) for n in nodes):
            return _Const([n.value for n in nodes])  # type: ignore[attr-defined]
        return _Array(nodes)
    return _Const(obj)


def compile_template(obj: Any) -> Template:
    """Compile a Parameters-style template once (raises ``TemplateSyntaxError``)."""
    return Template(obj, _compile(obj))
