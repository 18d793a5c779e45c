"""The intrinsic call grammar: text to a compiled ``Intrinsic``, once."""

from __future__ import annotations

import re

from engine.core.asl.intrinsics.call import Arg, CallArg, Intrinsic, Literal, PathArg
from engine.core.asl.intrinsics.functions import FUNCTIONS
from engine.core.asl.jsonpath import PathSyntaxError, compile_path


class IntrinsicSyntaxError(ValueError):
    """The text is not a well-formed intrinsic function call."""


_CALL_START = re.compile(r"\s*(States\.[A-Za-z0-9]+)\s*\(")
_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?")
_KEYWORD = re.compile(r"(true|false|null)(?=\s*[,)])")


def is_intrinsic(text: str) -> bool:
    """True if ``text`` looks like an intrinsic call rather than a path."""
    return _CALL_START.match(text) is not None


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, message: str) -> IntrinsicSyntaxError:
        return IntrinsicSyntaxError(
            f"Invalid intrinsic function '{self.text}': {message} at position {self.pos}"
        )

    def skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t\r\n":
            self.pos += 1

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def parse_call(self) -> Intrinsic:
        start = self.pos
        m = _CALL_START.match(self.text, self.pos)
        if not m:
            raise self.error("expected States.<Function>(")
        name = m.group(1)
        if name not in FUNCTIONS:
            raise self.error(f"unknown function {name}")
        self.pos = m.end()
        args: list[Arg] = []
        self.skip_ws()
        if self.peek() == ")":
            self.pos += 1
        else:
            while True:
                args.append(self.parse_arg())
                self.skip_ws()
                c = self.peek()
                self.pos += 1
                if c == ")":
                    break
                if c != ",":
                    self.pos -= 1
                    raise self.error("expected ',' or ')'")
        spec = FUNCTIONS[name]
        if len(args) < spec.min_args or (spec.max_args is not None and len(args) > spec.max_args):
            raise self.error(
                f"{name} takes "
                + (
                    f"{spec.min_args}"
                    if spec.min_args == spec.max_args
                    else f"{spec.min_args} to {spec.max_args or 'any number of'}"
                )
                + f" arguments, got {len(args)}"
            )
        return Intrinsic(self.text[start : self.pos].strip(), name, tuple(args))

    def parse_arg(self) -> Arg:
        self.skip_ws()
        c = self.peek()
        if c == "'":
            return self.parse_string()
        if c == "$":
            return self.parse_path()
        if self.text.startswith("States.", self.pos):
            return CallArg(self.parse_call())
        m = _NUMBER.match(self.text, self.pos)
        if m:
            self.pos = m.end()
            is_float = m.group(1) is not None or m.group(2) is not None
            return Literal(float(m.group()) if is_float else int(m.group()))
        m = _KEYWORD.match(self.text, self.pos)
        if m:
            self.pos = m.end()
            return Literal({"true": True, "false": False, "null": None}[m.group(1)])
        raise self.error("expected an argument")

    def parse_string(self) -> Literal:
        self.pos += 1  # opening quote
        value: list[str] = []
        fmt: list[str] = []
        while True:
            c = self.peek()
            if c == "":
                raise self.error("unterminated string literal")
            if c == "\\":
                nxt = self.text[self.pos + 1 : self.pos + 2]
                if nxt == "":
                    raise self.error("dangling escape")
                value.append(nxt)
                # Brace and backslash escapes matter to Format's placeholder
                # scan, so the format text keeps them.
                fmt.append("\\" + nxt if nxt in "{}\\" else nxt)
                self.pos += 2
                continue
            self.pos += 1
            if c == "'":
                return Literal("".join(value), "".join(fmt))
            value.append(c)
            fmt.append(c)

    def parse_path(self) -> PathArg:
        # A path runs to the next ',' or ')' outside brackets, parens, quotes.
        start = self.pos
        depth = 0
        quote = ""
        while self.pos < len(self.text):
            c = self.text[self.pos]
            if quote:
                if c == "\\":
                    self.pos += 1
                elif c == quote:
                    quote = ""
            elif c in "'\"":
                quote = c
            elif c in "[(":
                depth += 1
            elif c in "])":
                if depth == 0:
                    break
                depth -= 1
            elif c == "," and depth == 0:
                break
            self.pos += 1
        text = self.text[start : self.pos].strip()
        try:
            return PathArg(compile_path(text))
        except PathSyntaxError as exc:
            raise self.error(str(exc)) from None


def compile_intrinsic(text: str) -> Intrinsic:
    """Parse an intrinsic call once (raises ``IntrinsicSyntaxError``)."""
    parser = _Parser(text)
    call = parser.parse_call()
    parser.skip_ws()
    if parser.pos != len(text):
        raise parser.error("unexpected text after the call")
    return call
