"""What a projection is, for the runner (projections/runner.py).

A projection is a module that declares one `Projection`: its name, the tables it
owns, the event types it handles and an `apply` function. The runner guarantees
`apply` sees every committed event of a handled type exactly once per table set,
in global (hence per-execution seq) order, inside the transaction that also
advances the projection's checkpoint; `apply` must still be idempotent (skip an
event at or below what a row already reflects), so a replayed batch is harmless.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import asyncpg

from engine.adapters.store import StoredEvent

# (connection in the caller's transaction, events, logical table -> actual table) -> applied
ApplyFn = Callable[[asyncpg.Connection, Sequence[StoredEvent], Mapping[str, str]], Awaitable[int]]


@dataclass(frozen=True)
class Projection:
    """A read model kept from the event log.

    ``tables``: every table it owns; a rebuild fills a fresh copy of each
    (``<table>_new``) and swaps them all in one transaction, so ``apply`` must
    address tables through the mapping it is given, never by literal name.
    ``handles``: the event types ``apply`` is given (None: every type); the
    checkpoint advances over the others too.
    """

    name: str
    tables: tuple[str, ...]
    handles: frozenset[str] | None
    apply: ApplyFn

    @property
    def group(self) -> str:
        """Its own Redis consumer group on the events streams."""
        return f"projection:{self.name}"

    def relevant(self, events: Sequence[StoredEvent]) -> list[StoredEvent]:
        if self.handles is None:
            return list(events)
        return [e for e in events if e.type in self.handles]

    def identity(self) -> Mapping[str, str]:
        return {t: t for t in self.tables}
