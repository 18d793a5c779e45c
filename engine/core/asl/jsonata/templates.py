"""Arguments / Output / Assign values: JSON in which any ``{% %}`` string is an
expression; constant subtrees are built once and shared."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from engine.core.asl.context import EvalEnv
from engine.core.asl.jsonata.expression import compile_expression, is_jsonata


class JsonataTemplate:
    """JSON with embedded expressions. Build with ``compile_jsonata_template``."""

    __slots__ = ("_render", "field", "source")

    def __init__(self, source: Any, field: str) -> None:
        self.source = source
        self.field = field
        self._render = _compile_node(source, field)

    @property
    def is_constant(self) -> bool:
        return isinstance(self._render, _ConstRender)

    def render(
        self,
        states: dict[str, Any],
        variables: dict[str, Any] | None = None,
        env: EvalEnv | None = None,
    ) -> Any:
        return self._render(states, variables, env)


_Render = Callable[[dict[str, Any], "dict[str, Any] | None", "EvalEnv | None"], Any]


class _ConstRender:
    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __call__(
        self, states: dict[str, Any], variables: dict[str, Any] | None, env: EvalEnv | None
    ) -> Any:
        return self.value


def _compile_node(obj: Any, field: str) -> _Render:
    if is_jsonata(obj):
        expr = compile_expression(obj, field)
        return lambda states, variables, env: expr.evaluate(states, variables, env)
    if isinstance(obj, dict):
        parts = [(k, _compile_node(v, f"{field}/{k}" if field else k)) for k, v in obj.items()]
        if all(isinstance(r, _ConstRender) for _, r in parts):
            return _ConstRender(obj)

        def render_obj(
            states: dict[str, Any], variables: dict[str, Any] | None, env: EvalEnv | None
        ) -> Any:
            return {k: r(states, variables, env) for k, r in parts}

        return render_obj
    if isinstance(obj, list):
        items = [_compile_node(v, f"{field}/{i}" if field else str(i)) for i, v in enumerate(obj)]
        if all(isinstance(r, _ConstRender) for r in items):
            return _ConstRender(obj)

        def render_list(
            states: dict[str, Any], variables: dict[str, Any] | None, env: EvalEnv | None
        ) -> Any:
            return [r(states, variables, env) for r in items]

        return render_list
    return _ConstRender(obj)


def compile_jsonata_template(obj: Any, field: str = "") -> JsonataTemplate:
    """Compile an Arguments / Output / Assign value once."""
    return JsonataTemplate(obj, field)
