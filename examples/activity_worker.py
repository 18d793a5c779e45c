"""An activity worker in Python: copy it.

    STEPLOG_API_KEY=$(cat .steplog/admin.key) .venv/bin/python examples/activity_worker.py

It creates the activity "approve-order" and runs its tasks until SIGTERM or Ctrl-C,
which let the task in hand finish and report first. A Task state hands it work with
the activity's ARN as its Resource (the reply of create_activity names it):

    "Approve": {"Type": "Task", "Resource": "<activityArn>", "HeartbeatSeconds": 30, ...}

A plain function works too (it runs in a thread); raising ActivityFailure fails the
task with an error a Retry or Catch can match.
"""

from __future__ import annotations

import asyncio
from typing import Any

from steplog.client import ActivityFailure, ActivityWorker, AsyncClient


async def approve(order: Any) -> Any:
    if order.get("amount", 0) > 1000:
        raise ActivityFailure("OrderRejected", "over the approval limit of 1000")
    await asyncio.sleep(0.1)  # the real work
    return {"order_id": order.get("order_id"), "approved": True}


async def main() -> None:
    async with AsyncClient() as steplog:  # STEPLOG_URL and STEPLOG_API_KEY
        activity = await steplog.create_activity("approve-order")
        print("serving", activity.activity_arn)
        worker = ActivityWorker(steplog, "approve-order", approve, heartbeat_s=10)
        await worker.run(handle_signals=True)
        print(f"stopped: {worker.completed} approved, {worker.failed} failed")


if __name__ == "__main__":
    asyncio.run(main())
