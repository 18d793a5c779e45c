"""The compiled JSONPath and its evaluation (Jayway's semantics and messages).

``JsonPath.evaluate`` selects from the root the path names (``$`` data, ``$$``
context, ``$name`` a variable); a definite path runs through a tight loop and
raises ``PathNotFound`` with Jayway's message, an indefinite one returns the
list of matches. ``apply_path`` is InputPath / OutputPath on top of it.
"""

from __future__ import annotations

from typing import Any, Final

from engine.core.asl.errors import RUNTIME, StatesError
from engine.core.asl.jsonpath.rendering import java_str, java_type_name
from engine.core.asl.jsonpath.segments import MISSING, Field, Segment


class PathNotFound(ValueError):
    """A definite path selected nothing; ``str(exc)`` is Jayway's message."""


_JSON_PROVIDER: Final = "com.jayway.jsonpath.spi.json.JsonSmartJsonProvider"

ROOT_DATA: Final = 0
ROOT_CONTEXT: Final = 1
ROOT_VARIABLE: Final = 2


class JsonPath:
    """A compiled JSONPath. Build with ``compile_path``."""

    __slots__ = (
        "_definite_steps",
        "_root",
        "is_definite",
        "is_reference",
        "segments",
        "text",
        "variable",
    )

    def __init__(
        self, text: str, root: int, variable: str | None, segments: tuple[Segment, ...]
    ) -> None:
        self.text = text
        self._root = root
        self.variable = variable
        self.segments = segments
        self.is_definite = all(s.definite for s in segments)
        self.is_reference = root == ROOT_DATA and self.is_definite
        # Definite paths run through a tight loop over (is_field, key) pairs.
        self._definite_steps: tuple[tuple[bool, Any], ...] = (
            tuple(
                (True, s.name) if isinstance(s, Field) else (False, s.index)  # type: ignore[attr-defined]
                for s in segments
            )
            if self.is_definite
            else ()
        )

    @property
    def is_context(self) -> bool:
        return self._root == ROOT_CONTEXT

    def __repr__(self) -> str:
        return f"JsonPath({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JsonPath) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    def canonical(self) -> str:
        """Jayway's rendering, e.g. ``$['a'][0]``, used in its messages."""
        return "$" + "".join(s.render() for s in self.segments)

    def _root_value(self, data: Any, context: Any, variables: dict[str, Any] | None) -> Any:
        if self._root == ROOT_DATA:
            return data
        if self._root == ROOT_CONTEXT:
            return context
        assert self.variable is not None
        if variables is None or self.variable not in variables:
            raise PathNotFound(f"Variable '{self.variable}' is not defined")
        return variables[self.variable]

    def evaluate(
        self, data: Any, context: Any = None, variables: dict[str, Any] | None = None
    ) -> Any:
        """Select from ``data`` / ``context`` / ``variables`` (see the package doc)."""
        root = self._root_value(data, context, variables)
        if self.is_definite:
            return self._evaluate_definite(root)
        nodes = [root]
        for seg in self.segments:
            nodes = [child for node in nodes for child in seg.children(node, root)]
        return nodes

    def find(self, data: Any, context: Any = None, variables: dict[str, Any] | None = None) -> Any:
        """Like ``evaluate`` but returns ``MISSING`` instead of raising."""
        try:
            return self.evaluate(data, context, variables)
        except PathNotFound:
            return MISSING

    def _evaluate_definite(self, root: Any) -> Any:
        node = root
        last = len(self._definite_steps) - 1
        for pos, (is_field, key) in enumerate(self._definite_steps):
            if is_field:
                if isinstance(node, dict):
                    if key in node:
                        node = node[key]
                        continue
                    if pos == last:
                        raise PathNotFound("No results for path: " + self.canonical())
                    raise PathNotFound("Missing property in path " + self._prefix(pos + 1))
                raise PathNotFound(
                    f"Expected to find an object with property ['{key}'] in path "
                    f"{self._prefix(pos)} but found '{java_type_name(node)}'. This is not a json "
                    f"object according to the JsonProvider: '{_JSON_PROVIDER}'."
                )
            if node is None:
                raise PathNotFound(f"The path {self._prefix(pos)} is null")
            if not isinstance(node, list):
                raise PathNotFound(
                    f"Filter: [{key}] can only be applied to arrays. Current context is: "
                    f"{java_str(node)}"
                )
            i = key + len(node) if key < 0 else key
            if not 0 <= i < len(node):
                raise PathNotFound("No results for path: " + self.canonical())
            node = node[i]
        return node

    def _prefix(self, n: int) -> str:
        return "$" + "".join(s.render() for s in self.segments[:n])


def apply_path(
    path: JsonPath | None, data: Any, context: Any = None, variables: dict[str, Any] | None = None
) -> Any:
    """InputPath / OutputPath: ``None`` gives ``{}``; no match is States.Runtime."""
    if path is None:
        return {}
    try:
        return path.evaluate(data, context, variables)
    except PathNotFound as exc:
        raise StatesError(RUNTIME, f"Invalid path '{path.text}' : {exc}") from None
