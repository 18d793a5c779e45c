"""A Server-Sent Events reader (the WHATWG event stream format) over aiohttp's body
stream: what the live feed of an execution sends."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import msgspec


class ServerSentEvent(msgspec.Struct, frozen=True):
    id: str | None
    event: str
    data: bytes


async def _lines(content: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """The lines of the stream without their ends, however long (aiohttp's own line
    iterator refuses lines past its buffer size, and an event's data can be larger)."""
    buffer = b""
    async for chunk in content.iter_any():
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            yield line.removesuffix(b"\r")


async def parse_events(content: aiohttp.StreamReader) -> AsyncIterator[ServerSentEvent]:
    """Each complete event of the stream (comments and ``retry`` lines skipped; an event
    cut short by the end of the stream is dropped, as the format says)."""
    event_id: str | None = None
    kind = ""
    data: list[bytes] = []
    async for line in _lines(content):
        if not line:
            if data:
                yield ServerSentEvent(event_id, kind or "message", b"\n".join(data))
            kind, data = "", []
            continue
        if line.startswith(b":"):
            continue
        field, _, value = line.partition(b":")
        value = value.removeprefix(b" ")
        if field == b"data":
            data.append(value)
        elif field == b"event":
            kind = value.decode()
        elif field == b"id":
            event_id = value.decode()
