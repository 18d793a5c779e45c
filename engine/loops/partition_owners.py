"""Which trigger partitions an engine reads: each partition has one engine at a time.

Any engine can decide any execution (it loads the state and appends with the expected
seq), but two engines deciding triggers of one execution at once make one of them lose
its append (a conflict: reload, decide again). All of an execution's triggers go to one
partition (`Bus.partition_of`), so when each partition is read by one engine, one
engine decides each execution and conflicts between engines do not happen.

The engines keep a membership in Redis (`Bus.engine_members`: renewed every
``every_s``, lapsing ``ttl_s`` after the last renewal; an engine that stops leaves at
once) and each computes the same assignment from the same sorted list of names:
partition p goes to the (p mod n)-th of the n live engines. With more engines than
partitions the extra ones read nothing (they still claim stale entries, as every
engine does). While the views of a change differ (at most one renewal apart) a
partition may be read by two engines (conflicts, fenced by the expected seq as ever)
or by none (its triggers wait for the next renewal); a dead engine's partitions wait
for its membership to lapse, and the entries it held for the visibility timeout.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from engine.adapters.bus import Bus

log = logging.getLogger("steplog.engine")


def owned_partitions(partitions: int, members: Sequence[str], me: str) -> list[int]:
    """The partitions ``me`` reads among ``members`` (live engines' names, in any
    order): every partition when ``me`` is not a member (no membership read yet)."""
    ordered = sorted(set(members))
    if me not in ordered:
        return list(range(partitions))
    mine = ordered.index(me)
    return [p for p in range(partitions) if p % len(ordered) == mine]


class PartitionOwners:
    """This engine's share of the partitions, renewed through the bus."""

    def __init__(self, bus: Bus, consumer: str, every_s: float = 1.0, ttl_s: float = 5.0) -> None:
        self.bus = bus
        self.consumer = consumer
        self.every_s = every_s
        self.ttl_s = ttl_s
        self.members: list[str] = []
        self.owned: list[int] = list(range(bus.partitions))

    async def renew(self) -> list[int]:
        """Stay a member; the partitions owned from now on. Redis's errors raise (the
        last share is kept meanwhile)."""
        members = await self.bus.engine_members(self.consumer, self.ttl_s)
        owned = owned_partitions(self.bus.partitions, members, self.consumer)
        if owned != self.owned:
            log.info(
                "engine %s reads partitions %s of %d (%d engines)",
                self.consumer,
                owned,
                self.bus.partitions,
                len(members),
            )
        self.members, self.owned = members, owned
        return owned

    async def leave(self) -> None:
        """Leave the membership, so the others take this engine's partitions at their
        next renewal (not after ``ttl_s``)."""
        self.members = await self.bus.engine_members(self.consumer, self.ttl_s, leave=True)

    def streams(self) -> list[str]:
        return [self.bus.triggers_stream(p) for p in self.owned]
