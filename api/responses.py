"""JSON responses encoded with msgspec (Structs, Raw and builtins)."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

_encoder = msgspec.json.Encoder()


def json_response(
    value: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    response = web.Response(body=_encoder.encode(value), status=status, headers=headers)
    response.content_type = "application/json"
    return response
