"""The relay's row in PostgreSQL: its checkpoint and its leadership lease (migration 0012).

One row per relay name in ``relay_checkpoint``: where the relay has published up to in
`EventStore.read_all` order, which relay leads (``leader``, a name unique per process)
and until when (``lease_until``, by PostgreSQL's clock, so the processes' own clocks do
not matter). A relay takes the lead only when no one holds it, it holds it already, or
the holder's lease has expired; the leader renews the lease and saves the checkpoint
only while the row still names it (the fence against a leader that was replaced).
"""

from __future__ import annotations

import asyncpg

from engine.adapters.postgres import translate_errors
from engine.adapters.store import GlobalPosition

# Whether ``$2`` may lead now: read first, so a standby polling while another leads (or
# while PostgreSQL refuses writes) writes nothing.
CAN_LEAD = """
SELECT leader IS NULL OR leader = $2 OR lease_until IS NULL OR lease_until < clock_timestamp()
FROM relay_checkpoint WHERE name = $1"""
# Take the lead (also the first row of a name, at the beginning of the global order).
TAKE_LEAD = """
INSERT INTO relay_checkpoint AS r (name, tx_id, position, leader, lease_until)
VALUES ($1, '0'::xid8, 0, $2, clock_timestamp() + make_interval(secs => $3))
ON CONFLICT (name) DO UPDATE
SET leader = EXCLUDED.leader, lease_until = EXCLUDED.lease_until
WHERE r.leader IS NULL OR r.leader = EXCLUDED.leader
   OR r.lease_until IS NULL OR r.lease_until < clock_timestamp()
RETURNING r.tx_id, r.position"""
RENEW_LEASE = """
UPDATE relay_checkpoint SET lease_until = clock_timestamp() + make_interval(secs => $3)
WHERE name = $1 AND leader = $2"""
# The checkpoint never moves backwards; saving renews the lease too.
SAVE_CHECKPOINT = """
UPDATE relay_checkpoint SET
    tx_id = CASE WHEN (tx_id, position) < ($3::text::xid8, $4) THEN $3::text::xid8
                 ELSE tx_id END,
    position = CASE WHEN (tx_id, position) < ($3::text::xid8, $4) THEN $4 ELSE position END,
    lease_until = clock_timestamp() + make_interval(secs => $5),
    updated_at = now()
WHERE name = $1 AND leader = $2"""
GIVE_UP_LEAD = """
UPDATE relay_checkpoint SET leader = NULL, lease_until = NULL WHERE name = $1 AND leader = $2"""


class RelayLease:
    """The lease and checkpoint of relay ``name`` as held by ``holder``. PostgreSQL's
    failures raise `engine.errors.Unavailable` (or what `translate_errors` makes of them)."""

    def __init__(self, pool: asyncpg.Pool, name: str, holder: str, lease_s: float) -> None:
        self._pool = pool
        self.name = name
        self.holder = holder
        self.lease_s = lease_s

    async def take(self) -> GlobalPosition | None:
        """Lead for ``lease_s`` from now when the lead is free, expired or already ours:
        the saved checkpoint; None while another holder's lease runs."""
        with translate_errors():
            if await self._pool.fetchval(CAN_LEAD, self.name, self.holder) is False:
                return None
            row = await self._pool.fetchrow(TAKE_LEAD, self.name, self.holder, self.lease_s)
        return None if row is None else GlobalPosition(int(row["tx_id"]), row["position"])

    async def renew(self) -> bool:
        """Extend the lease by ``lease_s`` from now; False when another holder leads."""
        with translate_errors():
            status = await self._pool.execute(RENEW_LEASE, self.name, self.holder, self.lease_s)
        return bool(status == "UPDATE 1")

    async def save(self, position: GlobalPosition) -> bool:
        """Record the checkpoint (never backwards) and renew the lease; False when another
        holder leads (nothing written)."""
        with translate_errors():
            status = await self._pool.execute(
                SAVE_CHECKPOINT,
                self.name,
                self.holder,
                str(position.tx_id),
                position.position,
                self.lease_s,
            )
        return bool(status == "UPDATE 1")

    async def give_up(self) -> None:
        """End the lease now (a clean stop), so a standby takes over at its next poll."""
        with translate_errors():
            await self._pool.execute(GIVE_UP_LEAD, self.name, self.holder)
