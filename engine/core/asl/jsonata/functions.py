"""AWS's additional JSONata functions: ``$partition``, ``$range``, ``$hash``,
``$parse`` (the same for every evaluation) and ``$random``, ``$uuid``, ``$now``,
``$millis`` (bound per evaluation, drawing only on its ``EvalEnv`` and the
state's entered time, never on the clock)."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final

from jsonata import Jsonata
from jsonata.jexception import JException
from jsonata.utils import Utils

from engine.core.asl.context import EvalEnv
from engine.core.asl.intrinsics import range_too_long

_HASH_ALGORITHMS: Final = {
    "MD5": "md5",
    "SHA-1": "sha1",
    "SHA-256": "sha256",
    "SHA-384": "sha384",
    "SHA-512": "sha512",
}


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


STATIC_FUNCTIONS: Final[dict[str, Callable[..., Any]]] = {
    "partition": _partition,
    "range": _range,
    "hash": _hash,
    "parse": _parse,
}


def env_functions(env: EvalEnv | None, states: dict[str, Any]) -> dict[str, Any]:
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
