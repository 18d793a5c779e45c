"""PostgreSQL side of activities (migration 0010): the activities registered per namespace.

All SQL of activities is the named statements below; asyncpg errors are translated
(engine.adapters.postgres): `Unavailable` when PostgreSQL does not answer.
"""

from __future__ import annotations

import datetime as dt

import asyncpg
import msgspec

from engine.adapters.postgres import translate_errors
from engine.errors import ConcurrencyError

# One statement, idempotent: the existing row when the name is taken (created False).
CREATE_ACTIVITY = """
WITH made AS (
    INSERT INTO activities (namespace, name) VALUES ($1, $2)
    ON CONFLICT (namespace, name) DO NOTHING
    RETURNING name, created_at, true AS created
)
SELECT name, created_at, created FROM made
UNION ALL
SELECT name, created_at, false FROM activities
WHERE namespace = $1 AND name = $2 AND NOT EXISTS (SELECT 1 FROM made)"""
SELECT_ACTIVITY = "SELECT name, created_at FROM activities WHERE namespace = $1 AND name = $2"
LIST_ACTIVITIES = """
SELECT name, created_at FROM activities WHERE namespace = $1 AND name > $2
ORDER BY name LIMIT $3"""
DELETE_ACTIVITY = "DELETE FROM activities WHERE namespace = $1 AND name = $2 RETURNING name"


class Activity(msgspec.Struct, frozen=True):
    name: str
    created_at: dt.datetime


class ActivityStore:
    """The activities table over a pool it does not own."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(self, namespace: str, name: str) -> tuple[Activity, bool]:
        """The activity, made when it did not exist (``created``)."""
        for _ in range(5):  # a concurrent delete between the two halves: try again
            with translate_errors():
                row = await self._pool.fetchrow(CREATE_ACTIVITY, namespace, name)
            if row is not None:
                return Activity(row["name"], row["created_at"]), bool(row["created"])
        raise ConcurrencyError(f"activity {name!r} kept changing while creating it")

    async def get(self, namespace: str, name: str) -> Activity | None:
        with translate_errors():
            row = await self._pool.fetchrow(SELECT_ACTIVITY, namespace, name)
        return None if row is None else Activity(row["name"], row["created_at"])

    async def list(self, namespace: str, after: str, limit: int) -> list[Activity]:
        """Activities of ``namespace`` by name, after ``after`` ("" from the first)."""
        with translate_errors():
            rows = await self._pool.fetch(LIST_ACTIVITIES, namespace, after, limit)
        return [Activity(r["name"], r["created_at"]) for r in rows]

    async def delete(self, namespace: str, name: str) -> bool:
        with translate_errors():
            return await self._pool.fetchval(DELETE_ACTIVITY, namespace, name) is not None
