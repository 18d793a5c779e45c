"""The steps of a compiled JSONPath.

Each segment knows how to step from one node to its children (indefinite
mode: missing members are skipped, never an error) and how to render itself
as Jayway does in messages (``['a']``, ``[0]``, ``[*]`` ...). ``MISSING`` is
"no value here", distinct from JSON null.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final


class _Missing:
    """Sentinel for "no value here" (distinct from JSON null)."""

    __slots__ = ()


MISSING: Final = _Missing()


class Segment:
    definite: bool = False

    def children(self, node: Any, root: Any) -> Iterator[Any]:
        raise NotImplementedError

    def render(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Field(Segment):
    name: str
    definite = True

    def children(self, node: Any, root: Any) -> Iterator[Any]:
        if isinstance(node, dict) and self.name in node:
            yield node[self.name]

    def render(self) -> str:
        return "['" + self.name + "']"


@dataclass(frozen=True, slots=True)
class Index(Segment):
    index: int
    definite = True

    def children(self, node: Any, root: Any) -> Iterator[Any]:
        if isinstance(node, list):
            i = self.index + len(node) if self.index < 0 else self.index
            if 0 <= i < len(node):
                yield node[i]

    def render(self) -> str:
        return f"[{self.index}]"


@dataclass(frozen=True, slots=True)
class Wildcard(Segment):
    def children(self, node: Any, root: Any) -> Iterator[Any]:
        if isinstance(node, dict):
            yield from node.values()
        elif isinstance(node, list):
            yield from node

    def render(self) -> str:
        return "[*]"


@dataclass(frozen=True, slots=True)
class Union(Segment):
    """``['a','b']`` or ``[0,2]``: several fields or indexes at once."""

    members: tuple[Field | Index, ...]

    def children(self, node: Any, root: Any) -> Iterator[Any]:
        for m in self.members:
            yield from m.children(node, root)

    def render(self) -> str:
        if isinstance(self.members[0], Field):
            return (
                "["
                + ",".join("'" + m.name + "'" for m in self.members if isinstance(m, Field))
                + "]"
            )
        return "[" + ",".join(str(m.index) for m in self.members if isinstance(m, Index)) + "]"


@dataclass(frozen=True, slots=True)
class Slice(Segment):
    start: int | None
    stop: int | None
    step: int | None

    def children(self, node: Any, root: Any) -> Iterator[Any]:
        if isinstance(node, list):
            # Python's slice clamping matches Jayway's for the forms AWS accepts.
            yield from node[self.start : self.stop : self.step]

    def render(self) -> str:
        s = "" if self.start is None else str(self.start)
        e = "" if self.stop is None else str(self.stop)
        return f"[{s}:{e}]" if self.step is None else f"[{s}:{e}:{self.step}]"


@dataclass(frozen=True, slots=True)
class Filter(Segment):
    """``[?(expr)]``: on an array keeps matching elements; on an object keeps
    the object itself when it matches (Jayway applies filters to both)."""

    predicate: Callable[[Any, Any], bool]
    source: str

    def children(self, node: Any, root: Any) -> Iterator[Any]:
        if isinstance(node, list):
            for item in node:
                if self.predicate(item, root):
                    yield item
        elif isinstance(node, dict) and self.predicate(node, root):
            yield node

    def render(self) -> str:
        return "[?]"


@dataclass(frozen=True, slots=True)
class Script(Segment):
    """``[(@.length-1)]``: an index computed from the current array."""

    offset: int

    def children(self, node: Any, root: Any) -> Iterator[Any]:
        if isinstance(node, list):
            i = len(node) + self.offset
            if 0 <= i < len(node):
                yield node[i]

    def render(self) -> str:
        return f"[(@.length{self.offset:+d})]"


@dataclass(frozen=True, slots=True)
class DeepScan(Segment):
    """``..x``: apply ``inner`` to the node and to every descendant."""

    inner: Segment

    def children(self, node: Any, root: Any) -> Iterator[Any]:
        # Document order: the node's own matches, then each child's subtree.
        yield from self.inner.children(node, root)
        if isinstance(node, dict):
            for child in node.values():
                yield from self.children(child, root)
        elif isinstance(node, list):
            for child in node:
                yield from self.children(child, root)

    def render(self) -> str:
        return ".." + self.inner.render()
