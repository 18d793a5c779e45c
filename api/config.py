"""What the API reads of the settings, as one frozen struct (steplog/ builds it)."""

from __future__ import annotations

import msgspec


class ApiConfig(msgspec.Struct, frozen=True, kw_only=True):
    """``namespace``: the namespace every route works in. ``max_payload_bytes``: the
    largest definition body and execution input accepted (413 beyond)."""

    namespace: str
    max_payload_bytes: int
