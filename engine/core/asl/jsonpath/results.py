"""ResultPath: write a state's result into a copy of its input."""

from __future__ import annotations

from typing import Any

from engine.core.asl.errors import RESULT_PATH_MATCH_FAILURE, StatesError
from engine.core.asl.jsonpath.parser import PathSyntaxError
from engine.core.asl.jsonpath.path import JsonPath
from engine.core.asl.jsonpath.rendering import dump_json
from engine.core.asl.jsonpath.segments import Field, Index


def set_result(data: Any, path: JsonPath | None, value: Any) -> Any:
    """ResultPath semantics (see the package doc). Never mutates ``data``."""
    if path is None:
        return data
    if not path.is_reference:
        raise PathSyntaxError(f"ResultPath must be a reference path: {path.text!r}")
    steps = path.segments
    if not steps:
        return value

    def fail() -> StatesError:
        return StatesError(
            RESULT_PATH_MATCH_FAILURE,
            f"Unable to apply ReferencePath {path.text} to input {dump_json(data)}",
        )

    def write(node: Any, i: int) -> Any:
        seg = steps[i]
        last = i == len(steps) - 1
        if isinstance(seg, Field):
            if not isinstance(node, dict):
                raise fail()
            copy = dict(node)
            if last:
                copy[seg.name] = value
            else:
                # Missing intermediate objects are created, as AWS does.
                copy[seg.name] = write(node.get(seg.name, {}), i + 1)
            return copy
        assert isinstance(seg, Index)
        if not isinstance(node, list):
            raise fail()
        idx = seg.index + len(node) if seg.index < 0 else seg.index
        if not 0 <= idx < len(node):
            raise fail()
        items = list(node)
        items[idx] = value if last else write(node[idx], i + 1)
        return items

    return write(data, 0)
