"""A JSON diff as RFC 6902 (JSON Patch) operations: ``diff(a, b)`` returns ops
that turn ``a`` into ``b``. Pure; values are JSON builtins (dict, list, str,
numbers, bool, None).

Objects are compared key by key (removals and replacements in key order of
``a``, additions in key order of ``b``); arrays element by element over their
common length, then the tail is added (ascending indices) or removed (highest
index first, so each index is valid when its op is applied). Paths are JSON
Pointers (RFC 6901: "~" -> "~0", "/" -> "~1").
"""

from __future__ import annotations

import copy
from typing import Any

Op = dict[str, Any]


def pointer_token(key: str | int) -> str:
    return str(key).replace("~", "~0").replace("/", "~1")


def _same(a: Any, b: Any) -> bool:
    # 1 == True and 1 == 1.0 in Python; in JSON they are different values.
    return type(a) is type(b) and a == b


def diff(a: Any, b: Any, path: str = "") -> list[Op]:
    """Operations turning ``a`` into ``b`` (empty when equal)."""
    if isinstance(a, dict) and isinstance(b, dict):
        ops: list[Op] = []
        for key, value in a.items():
            sub = f"{path}/{pointer_token(key)}"
            if key not in b:
                ops.append({"op": "remove", "path": sub})
            else:
                ops.extend(diff(value, b[key], sub))
        for key, value in b.items():
            if key not in a:
                ops.append({"op": "add", "path": f"{path}/{pointer_token(key)}", "value": value})
        return ops
    if isinstance(a, list) and isinstance(b, list):
        ops = []
        common = min(len(a), len(b))
        for i in range(common):
            ops.extend(diff(a[i], b[i], f"{path}/{i}"))
        for i in range(common, len(b)):
            ops.append({"op": "add", "path": f"{path}/{i}", "value": b[i]})
        for i in range(len(a) - 1, common - 1, -1):
            ops.append({"op": "remove", "path": f"{path}/{i}"})
        return ops
    if _same(a, b):
        return []
    return [{"op": "replace", "path": path, "value": b}]


def apply(doc: Any, ops: list[Op]) -> Any:
    """Apply the ops ``diff`` makes (add, remove, replace) to a copy of ``doc``."""
    root = {"": copy.deepcopy(doc)}
    for op in ops:
        tokens = [""] + [t.replace("~1", "/").replace("~0", "~") for t in op["path"].split("/")[1:]]
        parent: Any = root
        for token in tokens[:-1]:
            parent = parent[int(token)] if isinstance(parent, list) else parent[token]
        last: Any = tokens[-1]
        if isinstance(parent, list):
            last = int(last)
        if op["op"] == "remove":
            del parent[last]
        elif op["op"] == "add" and isinstance(parent, list):
            parent.insert(last, copy.deepcopy(op["value"]))
        else:
            parent[last] = copy.deepcopy(op["value"])
    return root[""]
