"""Where each projection stands: its checkpoint and how far behind the log it is.

`lag_events` counts the committed events after the checkpoint in read_all order
(an index range scan on events(tx_id, position), capped at LAG_CAP so a far
behind projection costs a bounded query); `behind_seconds` is the age of the
oldest of them (0 when caught up).
"""

from __future__ import annotations

import datetime as dt

import asyncpg
import msgspec

from projections.runner import PROJECTIONS

LAG_CAP = 10_000_000

_STATUS = """
SELECT c.tx_id::text, c.position, c.updated_at FROM projection_checkpoints c WHERE c.name = $1"""
_LAG = """
SELECT count(*) FROM (
    SELECT 1 FROM events
    WHERE (tx_id, position) > ($1::text::xid8, $2::bigint)
    LIMIT $3
) behind"""
_OLDEST_BEHIND = """
SELECT recorded_at FROM events
WHERE (tx_id, position) > ($1::text::xid8, $2::bigint)
ORDER BY tx_id, position LIMIT 1"""


class ProjectionStatus(msgspec.Struct):
    name: str
    tx_id: int
    position: int
    lag_events: int
    behind_seconds: float
    updated_at: dt.datetime | None


async def projection_status(
    conn: asyncpg.Pool | asyncpg.Connection, now: dt.datetime
) -> list[ProjectionStatus]:
    """The status of every registered projection, by name."""
    out = []
    for name in sorted(PROJECTIONS):
        row = await conn.fetchrow(_STATUS, name)
        tx_id, position, updated = ("0", 0, None) if row is None else (row[0], row[1], row[2])
        lag = await conn.fetchval(_LAG, tx_id, position, LAG_CAP)
        oldest = await conn.fetchval(_OLDEST_BEHIND, tx_id, position) if lag else None
        behind = max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0
        out.append(ProjectionStatus(name, int(tx_id), position, lag, behind, updated))
    return out
