"""EngineService.start remembers each workflow's latest version, and still starts the
version that is latest when the start commits (one registered by another process
included)."""

from __future__ import annotations

import pytest

from engine.adapters.store import EventStore
from engine.errors import WorkflowNotFound
from engine.service import EngineService

V1 = {"StartAt": "A", "States": {"A": {"Type": "Pass", "Result": 1, "End": True}}}
V2 = {"StartAt": "A", "States": {"A": {"Type": "Pass", "Result": 2, "End": True}}}


@pytest.mark.parametrize("decide_at_start", [False, True], ids=["begin later", "decided"])
async def test_a_start_takes_the_version_another_process_registered_since(
    store: EventStore, decide_at_start: bool
) -> None:
    here = EngineService(store, decide_at_start=decide_at_start)
    elsewhere = EngineService(store)  # another process, as far as `here` knows
    with pytest.raises(WorkflowNotFound):
        await here.start("default", "wf", {}, "before")
    await elsewhere.register("default", "wf", V1)
    first = await here.start("default", "wf", {}, "one")
    assert first.record.version == 1
    await elsewhere.register("default", "wf", V2)
    # `here` remembers version 1; the start's statement finds version 2 the latest.
    second = await here.start("default", "wf", {}, "two")
    assert (second.created, second.record.version) == (True, 2)
    third = await here.start("default", "wf", {}, "three")
    assert third.record.version == 2
    # The same name again answers with its execution, of the version it was started as.
    again = await here.start("default", "wf", {}, "one")
    assert (again.created, again.record.execution_id) == (False, first.record.execution_id)
    assert again.record.version == 1
    events = await store.load(second.record.execution_id)
    assert b'"version":2' in events[0].data


async def test_a_workflow_registered_here_is_started_at_once_in_its_new_version(
    store: EventStore,
) -> None:
    service = EngineService(store)
    await service.register("default", "wf", V1)
    assert (await service.start("default", "wf", {}, None)).record.version == 1
    await service.register("default", "wf", V2)
    assert (await service.start("default", "wf", {}, None)).record.version == 2
