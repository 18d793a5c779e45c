"""Structured logging: one setup function and the context that every line carries.

`configure_logging(fmt, level)` installs one handler on the root logger. With
`fmt == "json"` each record is one JSON object per line; otherwise a readable
line. Both include the request id and the execution id from the contextvars
below when they are set (the API's request-id middleware sets the first; code
that works on one execution sets the second), and, with tracing on, the trace id
and span id of the current span (the request's, a decision's, a task attempt's:
see docs/observability.md), so a log line leads to its trace and back.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
from typing import Any

import msgspec

# Defined in the engine so that engine code can set them; re-exported here.
from engine.logcontext import execution_id_var, request_id_var
from engine.tracecontext import current_span

# What a line says of its context, in this order, when known.
_CONTEXT = ("request_id", "execution_id", "trace_id", "span_id")
# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime", *_CONTEXT}
)
# Values msgspec cannot encode (exceptions, custom objects in `extra=`) become their repr.
_encoder = msgspec.json.Encoder(enc_hook=repr)


class ContextFilter(logging.Filter):
    """Copies the contextvars onto the record at emit time (before any queueing)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        if not hasattr(record, "execution_id"):
            record.execution_id = execution_id_var.get()
        if not hasattr(record, "trace_id"):
            span = current_span().get_span_context()
            record.trace_id = f"{span.trace_id:032x}" if span.is_valid else None
            record.span_id = f"{span.span_id:016x}" if span.is_valid else None
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, request_id,
    execution_id, trace_id, span_id (each when known), any `extra=` fields, and `exc`
    (the traceback) when present."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in _CONTEXT:
            value = getattr(record, key, None)
            if value:
                doc[key] = value
        doc.update(_extras(record))
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return _encoder.encode(doc).decode()


# Control characters in a logged value (a path or header a client sent) would forge lines
# or smuggle terminal escapes into a text log: they are shown escaped instead.
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)} | {
    0x0A: "\\n",
    0x0D: "\\r",
    0x09: "\\t",
}


def escape_control(text: str) -> str:
    """``text`` with every control character written as an escape (newline as ``\\n``)."""
    return text.translate(_CONTROL)


class TextFormatter(logging.Formatter):
    """`2026-01-01T00:00:00+00:00 INFO logger [req=... exec=... trace=... span=...] message`."""

    def format(self, record: logging.LogRecord) -> str:
        ts = dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds")
        ctx = [
            f"{label}={value}"
            for key, label in zip(_CONTEXT, ("req", "exec", "trace", "span"), strict=True)
            if (value := getattr(record, key, None))
        ]
        ctx.extend(f"{k}={v}" for k, v in _extras(record).items())
        context = escape_control(f" [{' '.join(ctx)}]") if ctx else ""
        message = escape_control(record.getMessage())
        line = f"{ts} {record.levelname} {record.name}{context} {message}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(fmt: str = "text", level: str | int = "INFO") -> logging.Handler:
    """Install one stderr handler on the root logger (replacing handlers a
    previous call installed) and return it. `fmt` is "json" or anything else
    for readable lines."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_steplog", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    handler._steplog = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    # pgserver logs every initdb and pg_ctl call with its whole output at INFO.
    logging.getLogger("pgserver").setLevel(max(root.level, logging.WARNING))
    return handler
