"""What validation reports, and the value checks every part of it shares."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from engine.core.asl.validate.fields import JSONATA, JSONPATH


class ValidationError(msgspec.Struct, frozen=True):
    """One problem in a definition: where (`path`) and what (`message`)."""

    path: str
    message: str


def json_path_key(path: str, key: str) -> str:
    """`path.key`, or `path['key']` when the key is not a plain identifier."""
    if key.isidentifier():
        return f"{path}.{key}"
    return f"{path}[{key!r}]"


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_jsonata(value: Any) -> bool:
    return (
        isinstance(value, str)
        and value.startswith("{%")
        and value.endswith("%}")
        and len(value) >= 4
    )


class Report:
    """The problems found so far, and every state name seen (names are unique
    across the whole machine, nested ones included)."""

    def __init__(self) -> None:
        self.errors: list[ValidationError] = []
        self.names: dict[str, str] = {}  # state name -> path of first definition

    def fail(self, path: str, message: str) -> None:
        self.errors.append(ValidationError(path, message))

    def target(self, name: Any, path: str, scope: dict[str, Any]) -> None:
        if not isinstance(name, str):
            self.fail(path, "must be a state name (string)")
        elif name not in scope:
            self.fail(path, f"names no state in this scope: {name!r}")

    def positive_int(self, value: Any, path: str, language: str = JSONPATH) -> None:
        if language == JSONATA and is_jsonata(value):
            return
        if not is_int(value) or value < 1:
            self.fail(path, "must be a positive integer")

    def non_negative_int(self, value: Any, path: str, language: str = JSONPATH) -> None:
        if language == JSONATA and is_jsonata(value):
            return
        if not is_int(value) or value < 0:
            self.fail(path, "must be a non-negative integer")

    def exclusive(
        self, state: dict[str, Any], path: str, fields: Iterable[str], required: bool
    ) -> None:
        present = [f for f in fields if f in state]
        names = " / ".join(fields)
        if len(present) > 1:
            self.fail(path, f"only one of {names} may be given, found {', '.join(present)}")
        elif required and not present:
            self.fail(path, f"exactly one of {names} is required")
