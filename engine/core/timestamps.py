"""The one timestamp format of histories: ISO 8601 in UTC with milliseconds and a "Z"
(``2026-11-30T13:11:24.123Z``), as Step Functions writes them."""

from __future__ import annotations

import datetime as dt


def iso_millis(t: dt.datetime) -> str:
    """``t`` in UTC, milliseconds, "Z" suffix."""
    return t.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(text: str) -> dt.datetime:
    """The inverse of `iso_millis` (any ISO 8601 text with an offset or "Z")."""
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
