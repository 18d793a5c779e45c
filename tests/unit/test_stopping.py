"""Ending a role's helper tasks (engine.stopping.cancel_and_wait)."""

from __future__ import annotations

import asyncio

import pytest

from engine.stopping import cancel_and_wait

pytestmark = pytest.mark.asyncio


async def test_a_task_that_swallowed_its_cancellation_is_cancelled_again() -> None:
    """As a keeper does when Python 3.11's wait_for swallows the cancellation that
    arrives as its write completes: the loop goes on to its next sleep."""
    rounds = 0

    async def keeper() -> None:
        nonlocal rounds
        while True:
            rounds += 1
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if rounds == 1:
                    continue  # swallowed once
                raise

    task = asyncio.create_task(keeper())
    await asyncio.sleep(0)
    async with asyncio.timeout(5):
        await cancel_and_wait([task], resend_s=0.05)
    assert task.cancelled()
    assert rounds == 2


async def test_tasks_that_ended_or_failed_are_waited_for_without_raising() -> None:
    async def fails() -> None:
        raise ValueError("keeper failed")

    failed = asyncio.create_task(fails())
    done = asyncio.create_task(asyncio.sleep(0))
    sleeping = asyncio.create_task(asyncio.sleep(3600))
    await asyncio.sleep(0.01)
    assert failed.done() and done.done()

    await cancel_and_wait([failed, done, sleeping])

    assert sleeping.cancelled()
    assert isinstance(failed.exception(), ValueError)
    assert done.result() is None
