"""The States.* functions: argument checks, implementations and the table.

Each implementation takes the evaluated arguments, the format text of a
literal first argument (only States.Format reads it, to tell ``'\\{}'`` from
a placeholder) and the ``EvalEnv``; it raises ``StatesError(
States.IntrinsicFailure, cause)`` worded as AWS words it. ``FUNCTIONS`` maps
each name to its implementation and argument count, which the parser checks.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from engine.core.asl.context import EvalEnv
from engine.core.asl.errors import INTRINSIC_FAILURE, StatesError
from engine.core.asl.jsonpath import dump_json, java_str
from engine.core.asl.jsonvalue import json_equal, json_type

_MAX_ARRAY_RANGE = 1000
_MAX_BASE64_INPUT = 10000
_HASH_ALGORITHMS: Final = {
    "MD5": "md5",
    "SHA-1": "sha1",
    "SHA-256": "sha256",
    "SHA-384": "sha384",
    "SHA-512": "sha512",
}


def _fail(message: str) -> StatesError:
    return StatesError(INTRINSIC_FAILURE, message)


def _need(fn: str, position: int, value: Any, *kinds: str) -> None:
    if json_type(value) not in kinds:
        raise _fail(
            f"Invalid arguments in {fn}: argument {position} must be of type "
            f"{' or '.join(kinds)} but was {json_type(value)} ({dump_json(value)})"
        )


def _need_int(fn: str, position: int, value: Any) -> int:
    _need(fn, position, value, "number")
    if isinstance(value, float):
        if not value.is_integer():
            raise _fail(
                f"Invalid arguments in {fn}: argument {position} must be an integer "
                f"but was {dump_json(value)}"
            )
        return int(value)
    return int(value)


def _java_round(x: float) -> int:
    """``Math.round``: halves round towards positive infinity (-1.5 -> -1)."""
    return math.floor(x + 0.5)


def _format(args: list[Any], format_text: str | None, env: EvalEnv) -> Any:
    template = args[0]
    _need("States.Format", 1, template, "string")
    text = format_text if format_text is not None else template
    values = args[1:]
    out: list[str] = []
    used = 0
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
            continue
        if c == "{" and text.startswith("{}", i):
            if used >= len(values):
                raise _fail(
                    "Number of arguments in States.Format does not match the "
                    "number of placeholders in the format string"
                )
            out.append(java_str(values[used]))
            used += 1
            i += 2
            continue
        out.append(c)
        i += 1
    if used != len(values):
        raise _fail(
            "Number of arguments in States.Format does not match the number of "
            "placeholders in the format string"
        )
    return "".join(out)


def _string_to_json(args: list[Any], _f: str | None, env: EvalEnv) -> Any:
    s = args[0]
    _need("States.StringToJson", 1, s, "string")
    if not s.strip():
        return None  # recorded: '' and ' ' give null
    try:
        return json.loads(s)
    except (json.JSONDecodeError, RecursionError):
        raise _fail(
            f"Invalid arguments in States.StringToJson: the string {dump_json(s)} is not valid JSON"
        ) from None


def _json_to_string(args: list[Any], _f: str | None, env: EvalEnv) -> Any:
    return dump_json(args[0])


def _array(args: list[Any], _f: str | None, env: EvalEnv) -> Any:
    return list(args)


def _array_partition(args: list[Any], _f: str | None, env: EvalEnv) -> Any:
    arr, size = args
    _need("States.ArrayPartition", 1, arr, "array")
    n = _need_int("States.ArrayPartition", 2, size)
    if n <= 0:
        raise _fail(
            "Invalid arguments in States.ArrayPartition: the chunk size must be "
            f"greater than 0 but was {n}"
        )
    return [arr[i : i + n] for i in range(0, len(arr), n)]


def _array_contains(args: list[Any], _f: str | None, env: EvalEnv) -> Any:
    arr, item = args
    _need("States.ArrayContains", 1, arr, "array")
    return any(json_equal(x, item) for x in arr)


def _array_range(args: list[Any], _f: str | None, env: EvalEnv) -> Any:
    start = _need_int("States.ArrayRange", 1, args[0])
    end = _need_int("States.ArrayRange", 2, args[1])
    step = _need_int("States.ArrayRange", 3, args[2])
    if step == 0:
        raise _fail("Invalid arguments in States.ArrayRange: the step cannot be 0")
    # The end is inclusive when the steps land on it.
    steps = range(start, end + (1 if step > 0 else -1), step)
    # Counted before it is built: a range of 10**20 items must fail, not fill memory.
    if range_too_long(steps, _MAX_ARRAY_RANGE):
        raise _fail(
            "Invalid arguments in States.ArrayRange: the result may not contain more "
            f"than {_MAX_ARRAY_RANGE} items"
        )
    return list(steps)


def _array_get_item(args: list[Any], _f: str | None, env: EvalEnv) -> Any:
    arr, index = args
    _need("States.ArrayGetItem", 1, arr, "array")
    i = _need_int("States.ArrayGetItem", 2, index)
    if not 0 <= i < len(arr):
        raise _fail(
            f"Invalid arguments in States.ArrayGetItem: index {i} is out of bounds "
            f"for an array of length {len(arr)}"
        )
    return arr[i]


def _array_length(args: list[Any], _f: str | None, env: EvalEnv) -> Any:
    _need("States.ArrayLength", 1, args[0], "array")
    return len(args[0])


def _array_unique(args: list[Any], _f: str | None, env: EvalEnv) -> Any:
    arr = args[0]
    _need("States.ArrayUnique", 1, arr, "array")
    out: list[Any] = []
    for x in arr:
        if not any(json_equal(x, y) for y in out):
            out.append(x)
    return out


def _base64_encode(args: list[Any], _f: str | None, env: EvalEnv) -> Any:
    s = args[0]
    _need("States.Base64Encode", 1, s, "string")
    if len(s) > _MAX_BASE64_INPUT:
        raise _fail(
            "Invalid arguments in States.Base64Encode: the input may not be longer "
            f"than {_MAX_BASE64_INPUT} characters"
        )
    return base64.b64encode(s.encode("utf-8")).decode("ascii")


def _base64_decode(args: list[Any], _f: str | None, env: EvalEnv) -> Any:
    s = args[0]
    _need("States.Base64Decode", 1, s, "string")
    if len(s) > _MAX_BASE64_INPUT:
        raise _fail(
            "Invalid arguments in States.Base64Decode: the input may not be longer "
            f"than {_MAX_BASE64_INPUT} characters"
        )
    try:
        return base64.b64decode(s, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise _fail(
            "Invalid arguments in States.Base64Decode: the input is not a valid "
            "base64 encoded string"
        ) from None


def _hash(args: list[Any], _f: str | None, env: EvalEnv) -> Any:
    data, algorithm = args
    _need("States.Hash", 1, data, "string")
    _need("States.Hash", 2, algorithm, "string")
    name = _HASH_ALGORITHMS.get(algorithm)
    if name is None:
        raise _fail(
            f"Invalid arguments in States.Hash: unsupported algorithm '{algorithm}', "
            f"expected one of {', '.join(_HASH_ALGORITHMS)}"
        )
    return hashlib.new(name, data.encode("utf-8")).hexdigest()


def _json_merge(args: list[Any], _f: str | None, env: EvalEnv) -> Any:
    left, right, deep = args
    _need("States.JsonMerge", 1, left, "object")
    _need("States.JsonMerge", 2, right, "object")
    _need("States.JsonMerge", 3, deep, "boolean")
    if deep:
        # AWS only offers the shallow merge.
        raise _fail(
            "Invalid arguments in States.JsonMerge: deep merging is not supported, "
            "the third argument must be false"
        )
    return {**left, **right}


def _math_random(args: list[Any], _f: str | None, env: EvalEnv) -> Any:
    start = args[0]
    end = args[1]
    _need("States.MathRandom", 1, start, "number")
    _need("States.MathRandom", 2, end, "number")
    lo, hi = int(start), int(end)
    if lo >= hi:
        raise _fail("Invalid arguments in States.MathRandom: the start must be less than the end")
    if len(args) == 3:
        seed = _need_int("States.MathRandom", 3, args[2])
        # A seeded call is reproducible by definition; it never touches env.
        return random.Random(seed).randrange(lo, hi)
    return env.rng.randrange(lo, hi)


def _math_add(args: list[Any], _f: str | None, env: EvalEnv) -> Any:
    a, b = args
    _need("States.MathAdd", 1, a, "number")
    _need("States.MathAdd", 2, b, "number")
    # Recorded: AWS rounds each operand (Java Math.round) and adds integers:
    # MathAdd(1.49, 1.5) == 3, MathAdd(-1.5, 0) == -1.
    return _java_round(a) + _java_round(b)


def _string_split(args: list[Any], _f: str | None, env: EvalEnv) -> Any:
    s, delimiters = args
    _need("States.StringSplit", 1, s, "string")
    _need("States.StringSplit", 2, delimiters, "string")
    if not delimiters:
        return [s] if s else []
    # Every character of the delimiter string splits; empty pieces are dropped.
    pieces = re.split("[" + re.escape(delimiters) + "]", s)
    return [p for p in pieces if p]


def _uuid(args: list[Any], _f: str | None, env: EvalEnv) -> Any:
    return env.uuid()


Impl = Callable[[list[Any], "str | None", EvalEnv], Any]


@dataclass(frozen=True, slots=True)
class Spec:
    impl: Impl
    min_args: int
    max_args: int | None


FUNCTIONS: Final[dict[str, Spec]] = {
    "States.Format": Spec(_format, 1, None),
    "States.StringToJson": Spec(_string_to_json, 1, 1),
    "States.JsonToString": Spec(_json_to_string, 1, 1),
    "States.Array": Spec(_array, 0, None),
    "States.ArrayPartition": Spec(_array_partition, 2, 2),
    "States.ArrayContains": Spec(_array_contains, 2, 2),
    "States.ArrayRange": Spec(_array_range, 3, 3),
    "States.ArrayGetItem": Spec(_array_get_item, 2, 2),
    "States.ArrayLength": Spec(_array_length, 1, 1),
    "States.ArrayUnique": Spec(_array_unique, 1, 1),
    "States.Base64Encode": Spec(_base64_encode, 1, 1),
    "States.Base64Decode": Spec(_base64_decode, 1, 1),
    "States.Hash": Spec(_hash, 2, 2),
    "States.JsonMerge": Spec(_json_merge, 3, 3),
    "States.MathRandom": Spec(_math_random, 2, 3),
    "States.MathAdd": Spec(_math_add, 2, 2),
    "States.StringSplit": Spec(_string_split, 2, 2),
    "States.UUID": Spec(_uuid, 0, 0),
}


def range_too_long(steps: range, limit: int) -> bool:
    """Whether ``steps`` has more than ``limit`` items, without building it (len()
    of a range of more than sys.maxsize items overflows)."""
    try:
        return len(steps) > limit
    except OverflowError:
        return True
