"""The JSONPath grammar AWS accepts: text to root kind and segments, once.

``compile_path(text) -> JsonPath`` raises ``PathSyntaxError`` on bad syntax.
Filters (``[?(...)]``) are compiled here into closures over ``filters``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from engine.core.asl.jsonpath.filters import Operand, compare, path_operand
from engine.core.asl.jsonpath.path import ROOT_CONTEXT, ROOT_DATA, ROOT_VARIABLE, JsonPath
from engine.core.asl.jsonpath.segments import (
    MISSING,
    DeepScan,
    Field,
    Filter,
    Index,
    Script,
    Segment,
    Slice,
    Union,
    Wildcard,
)


class PathSyntaxError(ValueError):
    """The text is not a JSONPath AWS would accept."""


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

    def parse_path(self, allow_at: bool = False) -> tuple[int, str | None, tuple[Segment, ...]]:
        """Root then segments; stops at the first character that cannot continue."""
        variable: str | None = None
        if self.text.startswith("$$", self.pos):
            root = ROOT_CONTEXT
            self.pos += 2
        elif self.peek() == "$":
            self.pos += 1
            m = _VAR_NAME.match(self.text, self.pos)
            if m:
                root, variable = ROOT_VARIABLE, m.group()
                self.pos = m.end()
            else:
                root = ROOT_DATA
        elif allow_at and self.peek() == "@":
            self.pos += 1
            root = ROOT_DATA
        else:
            raise self.error("a path must start with '$'")
        segments: list[Segment] = []
        while True:
            c = self.peek()
            if c == "." and self.peek(1) == ".":
                self.pos += 2
                if self.peek() == "[":
                    segments.append(DeepScan(self.parse_bracket()))
                else:
                    segments.append(DeepScan(self.parse_dot_member()))
            elif c == ".":
                self.pos += 1
                segments.append(self.parse_dot_member())
            elif c == "[":
                segments.append(self.parse_bracket())
            else:
                return root, variable, tuple(segments)

    def parse_dot_member(self) -> Segment:
        if self.peek() == "*":
            self.pos += 1
            return Wildcard()
        m = _DOT_FIELD.match(self.text, self.pos)
        if not m:
            raise self.error("expected a field name")
        self.pos = m.end()
        return Field(m.group())

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

    def parse_bracket(self) -> Segment:
        self.expect("[")
        self.skip_ws()
        c = self.peek()
        seg: Segment
        if c == "?":
            self.pos += 1
            self.skip_ws()
            start = self.pos
            self.expect("(")
            pred = _FilterParser(self).parse_or()
            self.skip_ws()
            self.expect(")")
            seg = Filter(pred, self.text[start : self.pos])
        elif c == "(":
            seg = self.parse_script()
        elif c == "*":
            self.pos += 1
            seg = Wildcard()
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
            seg = Field(names[0]) if len(names) == 1 else Union(tuple(Field(n) for n in names))
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

    def parse_index_or_slice(self) -> Segment:
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
            return Slice(first, stop, step)
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
            return Index(first)
        return Union(tuple(Index(i) for i in indexes))

    def parse_script(self) -> Segment:
        m = re.compile(r"\(\s*@\.length(?:\(\))?\s*(?:([+-])\s*(\d+))?\s*\)").match(
            self.text, self.pos
        )
        if not m:
            raise self.error("only (@.length-N) scripts are supported")
        self.pos = m.end()
        offset = int(m.group(2) or 0) * (-1 if m.group(1) == "-" else 1)
        return Script(offset)


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
            return lambda node, root: compare(name, left(node, root), right(node, root))
        if not left_is_path:
            raise self.p.error("expected a comparison operator")
        # A bare path is an existence test: [?(@.isbn)].
        return lambda node, root: left(node, root) is not MISSING

    def parse_operand(self) -> tuple[Operand, bool]:
        p = self.p
        p.skip_ws()
        c = p.peek()
        if c in ("@", "$"):
            from_root = c == "$"
            root_kind, variable, segments = p.parse_path(allow_at=True)
            if root_kind != ROOT_DATA or variable is not None:
                raise p.error("filters may only use @ and $ paths")
            length_fn = False
            if (
                p.text.startswith("()", p.pos)
                and segments
                and isinstance(segments[-1], Field)
                and segments[-1].name == "length"
            ):
                p.pos += 2
                length_fn = True
            return path_operand(segments, from_root, length_fn), True
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


def compile_path(text: str) -> JsonPath:
    """Parse ``text`` once into a ``JsonPath`` (raises ``PathSyntaxError``)."""
    if not isinstance(text, str) or not text:
        raise PathSyntaxError(f"Invalid JSONPath {text!r}: empty")
    parser = _Parser(text)
    root, variable, segments = parser.parse_path()
    if parser.pos != len(text):
        raise parser.error("unexpected character")
    return JsonPath(text, root, variable, segments)
