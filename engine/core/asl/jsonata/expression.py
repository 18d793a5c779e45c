"""A compiled ``{% %}`` expression and its evaluation, with AWS's causes."""

from __future__ import annotations

import math
from typing import Any, Final

from jsonata import Jsonata
from jsonata.jexception import JException
from jsonata.utils import Utils

from engine.core.asl.context import EvalEnv
from engine.core.asl.errors import QUERY_EVALUATION_ERROR, StatesError
from engine.core.asl.jsonata.functions import STATIC_FUNCTIONS, env_functions
from engine.core.asl.jsonpath import dump_json
from engine.core.asl.jsonvalue import json_type


class JsonataSyntaxError(ValueError):
    """The text is not a valid ``{% %}`` JSONata expression."""


class _Undefined:
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNDEFINED"


UNDEFINED: Final = _Undefined()


def is_jsonata(value: Any) -> bool:
    return (
        isinstance(value, str)
        and value.startswith("{%")
        and value.endswith("%}")
        and len(value) >= 4
    )


def type_error_cause(expr_text: str, field: str, expected: str, value: Any) -> str:
    """AWS's cause for a JSONata result of the wrong JSON type."""
    return (
        f"The JSONata expression '{expr_text}' specified for the field '{field}' returned "
        f"an unexpected result type. Expected '{expected}', but was '{json_type(value)}' "
        f"for value: {dump_json(value)}"
    )


class _Unsupported(Exception):
    """A result that is not JSON (a function)."""


def _to_json(value: Any) -> Any:
    """jsonata-python result -> plain JSON (sequences to lists, NULL_VALUE to None)."""
    if value is Utils.NULL_VALUE or value is None:
        return None
    if isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        # JSONata numbers are doubles; integral results print as JSON ints.
        return int(value) if value.is_integer() and abs(value) < 2**53 else value
    if isinstance(value, list):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    raise _Unsupported


class JsonataExpr:
    """A compiled ``{% %}`` expression. Build with ``compile_expression``."""

    __slots__ = ("_jsonata", "field", "source", "text")

    def __init__(self, source: str, field: str) -> None:
        self.source = source
        self.text = source[2:-2].strip()
        self.field = field
        try:
            self._jsonata = Jsonata(self.text)
        except JException as exc:
            raise JsonataSyntaxError(f"Invalid JSONata expression '{self.text}': {exc}") from None
        if self._jsonata.errors:
            raise JsonataSyntaxError(f"Invalid JSONata expression '{self.text}'")
        # Inputs are JSON already; skip the library's per-call validation walk.
        self._jsonata.set_validate_input(False)
        # Keep null (NULL_VALUE) apart from undefined (None); _to_json converts.
        self._jsonata.set_output_convert_nulls(False)
        for name, fn in STATIC_FUNCTIONS.items():
            self._jsonata.register_lambda(name, fn)

    def __repr__(self) -> str:
        return f"JsonataExpr({self.source!r})"

    def _cause(self, tail: str) -> str:
        return f"The JSONata expression '{self.text}' specified for the field '{self.field}' {tail}"

    def evaluate(
        self,
        states: dict[str, Any],
        variables: dict[str, Any] | None = None,
        env: EvalEnv | None = None,
        allow_undefined: bool = False,
    ) -> Any:
        # A variable holding null is bound as JSONata null, not as undefined.
        bindings: dict[str, Any] = (
            {k: Utils.NULL_VALUE if v is None else v for k, v in variables.items()}
            if variables
            else {}
        )
        bindings.update(env_functions(env, states))
        bindings["states"] = states
        try:
            raw = self._jsonata.evaluate(None, bindings)
        except JException as exc:
            raise StatesError(
                QUERY_EVALUATION_ERROR, self._cause(f"threw an error during evaluation. {exc}")
            ) from None
        except RecursionError:
            raise StatesError(
                QUERY_EVALUATION_ERROR,
                self._cause("threw an error during evaluation. Stack overflow"),
            ) from None
        if raw is None:
            if allow_undefined:
                return UNDEFINED
            raise StatesError(QUERY_EVALUATION_ERROR, self._cause("returned nothing (undefined)."))
        try:
            value = _to_json(raw)
        except _Unsupported:
            raise StatesError(
                QUERY_EVALUATION_ERROR, self._cause("returned an unsupported result type.")
            ) from None
        if isinstance(value, float) and not math.isfinite(value):
            raise StatesError(
                QUERY_EVALUATION_ERROR, self._cause("returned an unsupported result type.")
            )
        return value


def compile_expression(text: str, field: str = "") -> JsonataExpr:
    """Compile a ``{% expr %}`` string once (raises ``JsonataSyntaxError``)."""
    if not is_jsonata(text):
        raise JsonataSyntaxError(f"Not a JSONata expression (must be '{{% ... %}}'): {text!r}")
    return JsonataExpr(text, field)
