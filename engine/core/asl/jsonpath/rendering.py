"""How AWS and Jayway write JSON values into messages.

``dump_json`` is compact JSON, as AWS quotes documents inside error causes;
``java_str`` is the ``toString()`` of the Java object Jackson/JsonSmart would
build (States.Format and some Jayway messages use it); ``java_type_name`` is
the Java class Jayway names in its messages.
"""

from __future__ import annotations

import json
import math
from typing import Any


def dump_json(value: Any) -> str:
    """Compact JSON, as AWS quotes documents inside error causes."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def java_type_name(value: Any) -> str:
    """The Java class Jayway would name for ``value`` in its messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "java.lang.Boolean"
    if isinstance(value, int):
        return "java.lang.Integer"
    if isinstance(value, float):
        return "java.lang.Double"
    if isinstance(value, str):
        return "java.lang.String"
    if isinstance(value, list):
        return "net.minidev.json.JSONArray"
    return "java.util.LinkedHashMap"


def java_str(value: Any) -> str:
    """``value.toString()`` of the Java object Jackson/JsonSmart would build:
    maps as ``{a=1, b=[x, y]}``, strings unquoted. AWS uses this rendering in
    States.Format and in some Jayway messages."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return _java_double(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(java_str(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={java_str(v)}" for k, v in value.items()) + "}"
    return str(value)


def _java_double(x: float) -> str:
    """``Double.toString``: plain in [1e-3, 1e7), else ``d.ddE<n>``."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    if x == 0 or 1e-3 <= abs(x) < 1e7:
        return repr(x)  # Python's repr is plain notation in this range
    # Shortest mantissa that round-trips, like Java's digit generation.
    for digits in range(17):
        text = f"{x:.{digits}e}"
        if float(text) == x:
            break
    mantissa, exp = text.split("e")
    if "." not in mantissa:
        mantissa += ".0"
    return f"{mantissa}E{int(exp)}"
