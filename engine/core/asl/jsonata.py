"""JSONata expressions (QueryLanguage "JSONata") over the jsonata-python package.

Contract
--------
A JSONata value in a definition is a string that starts with ``{%`` and ends
with ``%}`` exactly (``" {% x %} "`` with outer spaces is a plain string, as
AWS treats it). ``is_jsonata(value)`` tests for that.

``compile_expression(text, field="") -> JsonataExpr`` parses once and raises
``JsonataSyntaxError`` (a ``ValueError``). ``field`` names the definition
field (``Output``, ``Assign/result``, ``Items``...) for error causes.

``JsonataExpr.evaluate(states, variables, env=None, allow_undefined=False)``
binds ``$states`` to ``states`` (keys ``input``, ``context``, and where the
state has them ``result``, ``errorOutput``) and every workflow variable by
name, and returns a plain JSON value (no jsonata sequences, null as None).
AWS's extra functions are available: ``$partition``, ``$range``, ``$hash``,
``$parse``, and, drawing only on ``env``, ``$random`` and ``$uuid``.
``$now()``/``$millis()`` read ``$states.context.State.EnteredTime`` so that
evaluation never reads the clock. Failures raise ``StatesError(
States.QueryEvaluationError, cause)`` with the bare AWS cause (the engine
adds the "An error occurred while executing the state ..." prefix):

* ``The JSONata expression '<expr>' specified for the field '<field>'
  returned nothing (undefined).`` unless ``allow_undefined`` (then the
  result is ``UNDEFINED``);
* ``... returned an unsupported result type.`` for a function value;
* ``... threw an error during evaluation. <code>: <message>`` otherwise.

``compile_jsonata_template(obj, field) -> JsonataTemplate`` compiles
Arguments / Output / Assign values: JSON in which any ``{% %}`` string, at
any depth, is an expression (field names grow as ``Output/key``).
``JsonataTemplate.render(states, variables, env)`` builds the value.

``type_error_cause(expr_text, field, expected, value)`` words a result of
the wrong type, e.g. Map ``Items`` that is not an array.

Known gaps versus AWS: jsonata-python follows jsonata-js 2.x; AWS runs its
own Java port, so error messages other than the ones above, and numeric
corner cases of ``$string``/``$formatNumber``, may differ.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final

from jsonata import Jsonata
from jsonata.jexception import JException
from jsonata.utils import Utils

from engine.core.asl.context import EvalEnv
from engine.core.asl.errors import QUERY_EVALUATION_ERROR, StatesError
from engine.core.asl.intrinsics import range_too_long
from engine.core.asl.jsonpath import dump_json
from engine.core.asl.jsonvalue import json_type

__all__ = [
    "UNDEFINED",
    "JsonataExpr",
    "JsonataSyntaxError",
    "JsonataTemplate",
    "compile_expression",
    "compile_jsonata_template",
    "is_jsonata",
    "type_error_cause",
]


class JsonataSyntaxError(ValueError):
    """The text is not a valid ``{% %}`` JSONata expression."""


class _Undefined:
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNDEFINED"


UNDEFINED: Final = _Undefined()

_HASH_ALGORITHMS: Final = {
    "MD5": "md5",
    "SHA-1": "sha1",
    "SHA-256": "sha256",
    "SHA-384": "sha384",
    "SHA-512": "sha512",
}


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


# --------------------------------------------------------------------------
# AWS's additional functions
# --------------------------------------------------------------------------


def _fn_error(name: str, message: str) -> JException:
    err = JException("D3137", 0, message)
    err.args = (f"{name}: {message}",)
    return err


def _partition(array: Any, size: Any) -> Any:
    if not isinstance(array, list):
        raise _fn_error("$partition", "the first argument must be an array")
    if (
        isinstance(size, bool)
        or not isinstance(size, (int, float))
        or size <= 0
        or int(size) != size
    ):
        raise _fn_error("$partition", "the chunk size must be a positive integer")
    n = int(size)
    return [list(array[i : i + n]) for i in range(0, len(array), n)]


# AWS caps $range (like States.ArrayRange) at 1,000 items.
MAX_RANGE_ITEMS = 1000


def _range(start: Any, end: Any, step: Any) -> Any:
    for v in (start, end, step):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v:
            raise _fn_error("$range", "arguments must be integers")
    s, e, st = int(start), int(end), int(step)
    if st == 0:
        raise _fn_error("$range", "the step cannot be 0")
    steps = range(s, e + (1 if st > 0 else -1), st)
    if range_too_long(steps, MAX_RANGE_ITEMS):  # counted before it is built
        raise _fn_error("$range", f"the result may not contain more than {MAX_RANGE_ITEMS} items")
    # A JSONata sequence: a single value unwraps to a scalar, as AWS records
    # ($range(1, 9, 9) gives 1, not [1]).
    return Utils.create_sequence_from_iter(steps)


def _hash(data: Any, algorithm: Any) -> Any:
    if not isinstance(data, str):
        raise _fn_error("$hash", "the first argument must be a string")
    name = _HASH_ALGORITHMS.get(algorithm) if isinstance(algorithm, str) else None
    if name is None:
        raise _fn_error("$hash", f"unsupported algorithm {algorithm!r}")
    return hashlib.new(name, data.encode("utf-8")).hexdigest()


def _parse(text: Any) -> Any:
    if not isinstance(text, str):
        raise _fn_error("$parse", "the argument must be a string")
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise _fn_error("$parse", "the argument is not valid JSON") from None


_STATIC_FUNCTIONS: Final[dict[str, Callable[..., Any]]] = {
    "partition": _partition,
    "range": _range,
    "hash": _hash,
    "parse": _parse,
}


def _env_functions(env: EvalEnv | None, states: dict[str, Any]) -> dict[str, Any]:
    """Bindings that depend on this evaluation: randomness and 'now'."""

    def need_env() -> EvalEnv:
        if env is None:
            raise _fn_error("$random", "no random source in this evaluation")
        return env

    def random_fn(seed: Any = None) -> Any:
        if seed is not None:
            return random.Random(seed).random()
        return need_env().rng.random()

    def uuid_fn() -> Any:
        return need_env().uuid()

    entered = _entered_time(states)

    def now_fn(*_args: Any) -> Any:
        if entered is None:
            raise _fn_error("$now", "no state entered time in the context")
        return entered

    def millis_fn() -> Any:
        if entered is None:
            raise _fn_error("$millis", "no state entered time in the context")
        return int(datetime.fromisoformat(entered.replace("Z", "+00:00")).timestamp() * 1000)

    return {
        "random": Jsonata.JLambda(random_fn),
        "uuid": Jsonata.JLambda(uuid_fn),
        "now": Jsonata.JLambda(now_fn),
        "millis": Jsonata.JLambda(millis_fn),
    }


def _entered_time(states: dict[str, Any]) -> str | None:
    context = states.get("context")
    if isinstance(context, dict):
        state = context.get("State")
        if isinstance(state, dict) and isinstance(state.get("EnteredTime"), str):
            return str(state["EnteredTime"])
    return None


# --------------------------------------------------------------------------
# Expressions
# --------------------------------------------------------------------------


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
        for name, fn in _STATIC_FUNCTIONS.items():
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
        bindings.update(_env_functions(env, states))
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


# --------------------------------------------------------------------------
# Templates (Arguments / Output / Assign)
# --------------------------------------------------------------------------


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
