"""JSONPath as AWS Step Functions evaluates it (the Jayway flavour).

Contract
--------
``compile_path(text) -> JsonPath`` parses once and raises ``PathSyntaxError``
(a ``ValueError``) on bad syntax. A ``JsonPath`` is immutable and cheap to
evaluate many times:

``JsonPath.evaluate(data, context=None, variables=None) -> Any``
    Roots: ``$`` reads ``data`` (the state input), ``$$`` reads ``context``
    (the context object), ``$name`` reads ``variables["name"]`` (workflow
    variables set by ``Assign``). A *definite* path (only fields and single
    indexes) returns the one value it selects or raises ``PathNotFound`` with
    Jayway's message (``No results for path: $['a']``, ``Missing property in
    path $['a']``, ...). An *indefinite* path (wildcard, slice, union, filter,
    deep scan) returns a list of every match, possibly empty, and never
    raises for missing members. Values are returned by reference, never
    copied: callers must not mutate them.

``JsonPath.is_context`` (``$$``), ``.variable`` (the variable name or None),
``.is_definite``, ``.is_reference`` (root ``$`` then only ``.field`` /
``['field']`` / ``[n]``: what ResultPath accepts).

``set_result(data, path, value)`` implements ResultPath: ``None`` keeps
``data``; ``$`` gives ``value``; otherwise a copy of ``data`` with ``value``
written at the path, creating missing objects. Only the containers along the
path are copied (shallowly). A non-object on the way raises
``StatesError(States.ResultPathMatchFailure, ...)``.

``apply_path(path, data, context, variables)`` implements InputPath and
OutputPath: ``None`` gives ``{}``; a path that finds nothing raises
``StatesError(States.Runtime, "Invalid path '<text>' : <jayway message>")``
(the engine adds its "An error occurred while executing the state ..."
prefix).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

from engine.core.asl.errors import RESULT_PATH_MATCH_FAILURE, RUNTIME, StatesError
from engine.core.asl.jsonvalue import json_equal, json_type

__all__ = [
    "JsonPath",
    "PathNotFound",
    "PathSyntaxError",
    "apply_path",
    "compile_path",
    "dump_json",
    "java_str",
    "java_type_name",
    "set_result",
]


class PathSyntaxError(ValueError):
    """The text is not a JSONPath AWS would accept."""


class PathNotFound(ValueError):
    """A definite path selected nothing; ``str(exc)`` is Jayway's message."""


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


_JSON_PROVIDER: Final = "com.jayway.jsonpath.spi.json.JsonSmartJsonProvider"


class _Missing:
    """Sentinel for "no value here" (distinct from JSON null)."""

    __slots__ = ()


MISSING: Final = _Missing()


# --------------------------------------------------------------------------
# Segments. Each knows how to step from one node to its children (indefinite
# mode, missing members skipped) and how to render itself as Jayway does in
# messages.
# --------------------------------------------------------------------------


class _Segment:
    definite: bool = False

    def children(self, node: Any, root: Any) -> Iterator[Any]:
        raise NotImplementedError

    def render(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class _Field(_Segment):
    name: str
    definite = True

    def children(self, node: Any, root: Any) -> Iterator[Any]:
        if isinstance(node, dict) and self.name in node:
            yield node[self.name]

    def render(self) -> str:
        return "['" + self.name + "']"


@dataclass(frozen=True, slots=True)
class _Index(_Segment):
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
class _Wildcard(_Segment):
    def children(self, node: Any, root: Any) -> Iterator[Any]:
        if isinstance(node, dict):
            yield from node.values()
        elif isinstance(node, list):
            yield from node

    def render(self) -> str:
        return "[*]"


@dataclass(frozen=True, slots=True)
class _Union(_Segment):
    """``['a','b']`` or ``[0,2]``: several fields or indexes at once."""

    members: tuple[_Field | _Index, ...]

    def children(self, node: Any, root: Any) -> Iterator[Any]:
        for m in self.members:
            yield from m.children(node, root)

    def render(self) -> str:
        if isinstance(self.members[0], _Field):
            return (
                "["
                + ",".join("'" + m.name + "'" for m in self.members if isinstance(m, _Field))
                + "]"
            )
        return "[" + ",".join(str(m.index) for m in self.members if isinstance(m, _Index)) + "]"


@dataclass(frozen=True, slots=True)
class _Slice(_Segment):
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
class _Filter(_Segment):
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
class _Script(_Segment):
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
class _DeepScan(_Segment):
    """``..x``: apply ``inner`` to the node and to every descendant."""

    inner: _Segment

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


# --------------------------------------------------------------------------
# The compiled path
# --------------------------------------------------------------------------

_ROOT_DATA: Final = 0
_ROOT_CONTEXT: Final = 1
_ROOT_VARIABLE: Final = 2


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
        self, text: str, root: int, variable: str | None, segments: tuple[_Segment, ...]
    ) -> None:
        self.text = text
        self._root = root
        self.variable = variable
        self.segments = segments
        self.is_definite = all(s.definite for s in segments)
        self.is_reference = root == _ROOT_DATA and self.is_definite
        # Definite paths run through a tight loop over (is_field, key) pairs.
        self._definite_steps: tuple[tuple[bool, Any], ...] = (
            tuple(
                (True, s.name) if isinstance(s, _Field) else (False, s.index)  # type: ignore[attr-defined]
                for s in segments
            )
            if self.is_definite
            else ()
        )

    @property
    def is_context(self) -> bool:
        return self._root == _ROOT_CONTEXT

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
        if self._root == _ROOT_DATA:
            return data
        if self._root == _ROOT_CONTEXT:
            return context
        assert self.variable is not None
        if variables is None or self.variable not in variables:
            raise PathNotFound(f"Variable '{self.variable}' is not defined")
        return variables[self.variable]

    def evaluate(
        self, data: Any, context: Any = None, variables: dict[str, Any] | None = None
    ) -> Any:
        """Select from ``data`` / ``context`` / ``variables`` (see module doc)."""
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


# --------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------

_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INT = re.compile(r"-?\d+")
# Dot-notation field names: anything up to the next '.', '[' or space. Jayway
# accepts "-" and other punctuation here (e.g. $.delivery-partner); operator
# characters end a name so filters like @.year<1998 parse.
_DOT_FIELD = re.compile(r"[^.\[\]\s()<>=!&|,]+")


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, message: str) -> PathSyntaxError:
        return PathSyntaxError(f"Invalid JSONPath '{self.text}': {message} at position {self.pos}")

    def peek(self, n: int = 0) -> str:
        i = self.pos + n
        return self.text[i] if i < len(self.text) else ""

    def skip_ws(self) -> None:
        while self.peek() in (" ", "\t"):
            self.pos += 1

    def expect(self, s: str) -> None:
        if not self.text.startswith(s, self.pos):
            raise self.error(f"expected {s!r}")
        self.pos += len(s)

    def parse_path(self, allow_at: bool = False) -> tuple[int, str | None, tuple[_Segment, ...]]:
        """Root then segments; stops at the first character that cannot continue."""
        variable: str | None = None
        if self.text.startswith("$$", self.pos):
            root = _ROOT_CONTEXT
            self.pos += 2
        elif self.peek() == "$":
            self.pos += 1
            m = _VAR_NAME.match(self.text, self.pos)
            if m:
                root, variable = _ROOT_VARIABLE, m.group()
                self.pos = m.end()
            else:
                root = _ROOT_DATA
        elif allow_at and self.peek() == "@":
            self.pos += 1
            root = _ROOT_DATA
        else:
            raise self.error("a path must start with '$'")
        segments: list[_Segment] = []
        while True:
            c = self.peek()
            if c == "." and self.peek(1) == ".":
                self.pos += 2
                if self.peek() == "[":
                    segments.append(_DeepScan(self.parse_bracket()))
                else:
                    segments.append(_DeepScan(self.parse_dot_member()))
            elif c == ".":
                self.pos += 1
                segments.append(self.parse_dot_member())
            elif c == "[":
                segments.append(self.parse_bracket())
            else:
                return root, variable, tuple(segments)

    def parse_dot_member(self) -> _Segment:
        if self.peek() == "*":
            self.pos += 1
            return _Wildcard()
        m = _DOT_FIELD.match(self.text, self.pos)
        if not m:
            raise self.error("expected a field name")
        self.pos = m.end()
        return _Field(m.group())

    def parse_quoted(self) -> str:
        quote = self.peek()
        self.pos += 1
        out: list[str] = []
        while True:
            c = self.peek()
            if c == "":
                raise self.error("unterminated string")
            if c == "\\" and self.peek(1) == quote:
                # Only an escaped quote is unescaped; AWS keeps other
                # backslashes literally (recorded: $['Test\""Name"']).
                out.append(quote)
                self.pos += 2
                continue
            self.pos += 1
            if c == quote:
                return "".join(out)
            out.append(c)

    def parse_bracket(self) -> _Segment:
        self.expect("[")
        self.skip_ws()
        c = self.peek()
        seg: _Segment
        if c == "?":
            self.pos += 1
            self.skip_ws()
            start = self.pos
            self.expect("(")
            pred = _FilterParser(self).parse_or()
            self.skip_ws()
            self.expect(")")
            seg = _Filter(pred, self.text[start : self.pos])
        elif c == "(":
            seg = self.parse_script()
        elif c == "*":
            self.pos += 1
            seg = _Wildcard()
        elif c in ("'", '"'):
            names = [self.parse_quoted()]
            self.skip_ws()
            while self.peek() == ",":
                self.pos += 1
                self.skip_ws()
                if self.peek() not in ("'", '"'):
                    raise self.error("expected a quoted field name")
                names.append(self.parse_quoted())
                self.skip_ws()
            seg = _Field(names[0]) if len(names) == 1 else _Union(tuple(_Field(n) for n in names))
        else:
            seg = self.parse_index_or_slice()
        self.skip_ws()
        self.expect("]")
        return seg

    def parse_int(self) -> int | None:
        self.skip_ws()
        m = _INT.match(self.text, self.pos)
        if not m:
            return None
        self.pos = m.end()
        self.skip_ws()
        return int(m.group())

    def parse_index_or_slice(self) -> _Segment:
        first = self.parse_int()
        if self.peek() == ":":
            self.pos += 1
            stop = self.parse_int()
            step = None
            if self.peek() == ":":
                self.pos += 1
                step = self.parse_int()
                if step == 0:
                    raise self.error("slice step cannot be zero")
            return _Slice(first, stop, step)
        if first is None:
            raise self.error("expected an index, slice, '*', filter or quoted name")
        indexes = [first]
        while self.peek() == ",":
            self.pos += 1
            nxt = self.parse_int()
            if nxt is None:
                raise self.error("expected an index")
            indexes.append(nxt)
        if len(indexes) == 1:
            return _Index(first)
        return _Union(tuple(_Index(i) for i in indexes))

    def parse_script(self) -> _Segment:
        m = re.compile(r"\(\s*@\.length(?:\(\))?\s*(?:([+-])\s*(\d+))?\s*\)").match(
            self.text, self.pos
        )
        if not m:
            raise self.error("only (@.length-N) scripts are supported")
        self.pos = m.end()
        offset = int(m.group(2) or 0) * (-1 if m.group(1) == "-" else 1)
        return _Script(offset)


# --------------------------------------------------------------------------
# Filter expressions: compiled to closures (node, root) -> value / bool.
# --------------------------------------------------------------------------

_Operand = Callable[[Any, Any], Any]

_COMPARISON_OPS = (
    "==",
    "!=",
    "<=",
    ">=",
    "<",
    ">",
    "=~",
    " in ",
    " nin ",
    " size ",
    " empty ",
    " anyof ",
    " noneof ",
    " subsetof ",
)


def _ordered(a: Any, b: Any) -> bool:
    ka, kb = json_type(a), json_type(b)
    return ka == kb and ka in ("number", "string")


def _compare(op: str, a: Any, b: Any) -> bool:
    if a is MISSING or (b is MISSING and op not in ("empty",)):
        return False
    if op == "==":
        return json_equal(a, b)
    if op == "!=":
        return not json_equal(a, b)
    if op in ("<", "<=", ">", ">="):
        if not _ordered(a, b):
            return False
        if op == "<":
            return bool(a < b)
        if op == "<=":
            return bool(a <= b)
        if op == ">":
            return bool(a > b)
        return bool(a >= b)
    if op == "=~":
        return isinstance(a, str) and isinstance(b, re.Pattern) and b.fullmatch(a) is not None
    if op == "in":
        return isinstance(b, list) and any(json_equal(a, x) for x in b)
    if op == "nin":
        return isinstance(b, list) and not any(json_equal(a, x) for x in b)
    if op == "size":
        return isinstance(a, (str, list, dict)) and json_type(b) == "number" and len(a) == b
    if op == "empty":
        empty = isinstance(a, (str, list, dict)) and len(a) == 0
        return empty == bool(b)
    if op == "anyof":
        return (
            isinstance(a, list)
            and isinstance(b, list)
            and any(json_equal(x, y) for x in a for y in b)
        )
    if op == "noneof":
        return (
            isinstance(a, list)
            and isinstance(b, list)
            and not any(json_equal(x, y) for x in a for y in b)
        )
    if op == "subsetof":
        return (
            isinstance(a, list)
            and isinstance(b, list)
            and all(any(json_equal(x, y) for y in b) for x in a)
        )
    raise AssertionError(op)


class _FilterParser:
    def __init__(self, p: _Parser) -> None:
        self.p = p

    def parse_or(self) -> Callable[[Any, Any], bool]:
        terms = [self.parse_and()]
        while self._accept("||"):
            terms.append(self.parse_and())
        if len(terms) == 1:
            return terms[0]
        return lambda node, root: any(t(node, root) for t in terms)

    def parse_and(self) -> Callable[[Any, Any], bool]:
        terms = [self.parse_unary()]
        while self._accept("&&"):
            terms.append(self.parse_unary())
        if len(terms) == 1:
            return terms[0]
        return lambda node, root: all(t(node, root) for t in terms)

    def parse_unary(self) -> Callable[[Any, Any], bool]:
        self.p.skip_ws()
        if self.p.peek() == "!" and self.p.peek(1) != "=":
            self.p.pos += 1
            inner = self.parse_unary()
            return lambda node, root: not inner(node, root)
        if self.p.peek() == "(":
            self.p.pos += 1
            inner = self.parse_or()
            self.p.skip_ws()
            self.p.expect(")")
            return inner
        return self.parse_comparison()

    def _accept(self, s: str) -> bool:
        self.p.skip_ws()
        if self.p.text.startswith(s, self.p.pos):
            self.p.pos += len(s)
            return True
        return False

    def parse_comparison(self) -> Callable[[Any, Any], bool]:
        left, left_is_path = self.parse_operand()
        self.p.skip_ws()
        # Word operators need a leading space, which skip_ws just consumed.
        text = self.p.text[self.p.pos :]
        for op in _COMPARISON_OPS:
            if op.startswith(" ") and (" " + text).startswith(op):
                self.p.pos += len(op) - 1
            elif not op.startswith(" ") and text.startswith(op):
                self.p.pos += len(op)
            else:
                continue
            right, _ = self.parse_operand()
            name = op.strip()
            return lambda node, root: _compare(name, left(node, root), right(node, root))
        if not left_is_path:
            raise self.p.error("expected a comparison operator")
        # A bare path is an existence test: [?(@.isbn)].
        return lambda node, root: left(node, root) is not MISSING

    def parse_operand(self) -> tuple[_Operand, bool]:
        p = self.p
        p.skip_ws()
        c = p.peek()
        if c in ("@", "$"):
            from_root = c == "$"
            root_kind, variable, segments = p.parse_path(allow_at=True)
            if root_kind != _ROOT_DATA or variable is not None:
                raise p.error("filters may only use @ and $ paths")
            length_fn = False
            if (
                p.text.startswith("()", p.pos)
                and segments
                and isinstance(segments[-1], _Field)
                and segments[-1].name == "length"
            ):
                p.pos += 2
                length_fn = True
            return _path_operand(segments, from_root, length_fn), True
        if c in ("'", '"'):
            s = p.parse_quoted()
            return (lambda node, root: s), False
        if c == "/":
            end = p.text.find("/", p.pos + 1)
            while end > 0 and p.text[end - 1] == "\\":
                end = p.text.find("/", end + 1)
            if end < 0:
                raise p.error("unterminated regex")
            body = p.text[p.pos + 1 : end]
            p.pos = end + 1
            flags = 0
            while p.peek() in ("i", "m", "s"):
                flags |= {"i": re.I, "m": re.M, "s": re.S}[p.peek()]
                p.pos += 1
            pattern = re.compile(body, flags)
            return (lambda node, root: pattern), False
        if c == "[":
            end = p.text.find("]", p.pos)
            if end < 0:
                raise p.error("unterminated array literal")
            raw = p.text[p.pos : end + 1]
            p.pos = end + 1
            try:
                arr = json.loads(raw.replace("'", '"'))
            except json.JSONDecodeError as exc:
                raise p.error("bad array literal") from exc
            return (lambda node, root: arr), False
        m = re.compile(r"-?\d+(\.\d+)?([eE][+-]?\d+)?|true|false|null").match(p.text, p.pos)
        if not m:
            raise p.error("expected an operand")
        p.pos = m.end()
        lit = json.loads(m.group())
        return (lambda node, root: lit), False


def _path_operand(segments: tuple[_Segment, ...], from_root: bool, length_fn: bool) -> _Operand:
    if length_fn:
        segments = segments[:-1]
    definite = all(s.definite for s in segments)

    def operand(node: Any, root: Any) -> Any:
        values = [root if from_root else node]
        for i, seg in enumerate(segments):
            # "@.length" on an array (not a field) is its length, as in Jayway.
            if (
                isinstance(seg, _Field)
                and seg.name == "length"
                and i == len(segments) - 1
                and len(values) == 1
                and isinstance(values[0], list)
            ):
                return len(values[0])
            values = [c for v in values for c in seg.children(v, root)]
        if length_fn:
            if len(values) == 1 and isinstance(values[0], (list, str, dict)):
                return len(values[0])
            return MISSING
        if definite:
            return values[0] if values else MISSING
        return values

    return operand


# --------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------


def compile_path(text: str) -> JsonPath:
    """Parse ``text`` once into a ``JsonPath`` (raises ``PathSyntaxError``)."""
    if not isinstance(text, str) or not text:
        raise PathSyntaxError(f"Invalid JSONPath {text!r}: empty")
    parser = _Parser(text)
    root, variable, segments = parser.parse_path()
    if parser.pos != len(text):
        raise parser.error("unexpected character")
    return JsonPath(text, root, variable, segments)


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


def set_result(data: Any, path: JsonPath | None, value: Any) -> Any:
    """ResultPath semantics (see module doc). Never mutates ``data``."""
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
        if isinstance(seg, _Field):
            if not isinstance(node, dict):
                raise fail()
            copy = dict(node)
            if last:
                copy[seg.name] = value
            else:
                # Missing intermediate objects are created, as AWS does.
                copy[seg.name] = write(node.get(seg.name, {}), i + 1)
            return copy
        assert isinstance(seg, _Index)
        if not isinstance(node, list):
            raise fail()
        idx = seg.index + len(node) if seg.index < 0 else seg.index
        if not 0 <= idx < len(node):
            raise fail()
        items = list(node)
        items[idx] = value if last else write(node[idx], i + 1)
        return items

    return write(data, 0)
