"""executions_view listing: name prefixes by either plan give the same pages."""

from __future__ import annotations

import datetime as dt
from uuid import UUID, uuid4

import asyncpg
import pytest

from engine.adapters.store import EventStore
from engine.core import events as ev
from projections import executions as view
from projections.runner import catch_up
from tests.integration.test_projection_executions import T0, _new


def test_prefix_upper_bound() -> None:
    assert view.prefix_upper_bound("order-") == "order."
    assert view.prefix_upper_bound("a\U0010ffff") == "b"
    assert view.prefix_upper_bound("\U0010ffff") is None
    assert view.prefix_upper_bound("x\ud7ff") == "x\ue000"  # surrogates are skipped


async def _walk(pool: asyncpg.Pool, prefix: str, ascending: bool) -> list[UUID]:
    seen: list[UUID] = []
    after = None
    while True:
        page = await view.list_rows(
            pool,
            namespace="default",
            limit=3,
            after=after,
            ascending=ascending,
            filters=view.Filters(name_prefix=prefix),
        )
        seen += [r.execution_id for r in page.rows]
        if not page.more:
            return seen
        after = (page.rows[-1].started_at, page.rows[-1].execution_id)


@pytest.mark.parametrize("ascending", [False, True])
async def test_a_prefix_lists_the_same_by_either_plan(
    pool: asyncpg.Pool, store: EventStore, monkeypatch: pytest.MonkeyPatch, ascending: bool
) -> None:
    names = [f"{p}-{i}" for p in ("order", "orders", "refund") for i in range(7)]
    for i, name in enumerate(names):
        started = ev.ExecutionStarted(input={}, workflow="wf", version=1, name=name)
        at = T0 + dt.timedelta(seconds=i % 5)
        await store.start_execution("default", "wf", 1, uuid4(), name, b"{}", _new(started, at))
    await catch_up(pool, store)
    rows = [
        r for r in (await view.list_rows(pool, namespace="default", limit=100, after=None)).rows
    ]
    expected = [r.execution_id for r in rows if r.name.startswith("order-")]
    if ascending:
        expected.reverse()

    few = await _walk(pool, "order-", ascending)
    monkeypatch.setattr(view, "PREFIX_SORT_LIMIT", 3)  # now "many": the start-time plan
    many = await _walk(pool, "order-", ascending)

    assert few == many == expected and len(expected) == 7
