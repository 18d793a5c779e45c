"""An execution's history as readers see it: event details and the JSON Lines export.

`event_details` is the one rendering of a stored event's JSON for readers (the
API's history entries, the live feed, `steplog export`): the event's fields
without its ``type`` tag, and without the fields that carry execution data
when ``include_data`` is false. Each field's value is passed through as the log
spells it (``msgspec.Raw``), so key order and number text are exactly the
stored ones. `rfc3339` is the one timestamp format of the read side.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import msgspec

from engine.adapters.store import EventStore
from engine.core.events import CommittedEvent
from engine.core.timestamps import iso_millis

# Event fields that carry execution data (left out with include_data=false).
DATA_FIELDS = ("input", "output", "branchInput", "items", "assignedVariables")
EXPORT_PAGE = 1000

_export_line = msgspec.json.Encoder()


def rfc3339(value: dt.datetime) -> str:
    """The read side's timestamps: RFC 3339 in UTC with milliseconds and a Z
    (2026-01-02T03:04:05.123Z), as Step Functions and the events themselves write them."""
    return iso_millis(value)


_decode_fields = msgspec.json.Decoder(dict[str, msgspec.Raw])


def event_details(event: CommittedEvent, include_data: bool = True) -> dict[str, Any]:
    """The event's fields without ``type`` (and without data fields unless
    ``include_data``), each value the stored JSON text (a ``msgspec.Raw``)."""
    details: dict[str, Any] = _decode_fields.decode(event.data)
    details.pop("type", None)
    if not include_data:
        for name in DATA_FIELDS:
            details.pop(name, None)
    return details


class ExportLine(msgspec.Struct):
    """One line of a history export (JSON Lines)."""

    execution_id: str
    seq: int
    type: str
    timestamp: str
    details: dict[str, Any]


async def history_lines(
    store: EventStore, execution_id: UUID, include_data: bool = True
) -> AsyncIterator[bytes]:
    """An execution's events as JSON Lines, in chunks of up to EXPORT_PAGE lines
    (nothing for an unknown execution)."""
    after = 0
    while events := await store.load(execution_id, after_seq=after, limit=EXPORT_PAGE):
        chunk = bytearray()
        for e in events:
            line = ExportLine(
                str(execution_id),
                e.seq,
                e.type,
                rfc3339(e.timestamp),
                event_details(e, include_data),
            )
            chunk += _export_line.encode(line)
            chunk += b"\n"
        yield bytes(chunk)
        after = events[-1].seq
