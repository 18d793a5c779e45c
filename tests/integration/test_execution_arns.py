"""AWS-shaped identifiers through the whole stack: the settings' partition, region and
account, the namespace, and the execution's name end up in $$ and in ExecutionStarted."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import msgspec

from engine.core import events as ev
from steplog.settings import Settings
from tests.serving import running_steplog

SHOW_IDS: dict[str, Any] = {
    "StartAt": "Show",
    "States": {
        "Show": {
            "Type": "Pass",
            "Parameters": {
                "execution.$": "$$.Execution.Id",
                "machine.$": "$$.StateMachine.Id",
                "role.$": "$$.Execution.RoleArn",
                "name.$": "$$.Execution.Name",
            },
            "End": True,
        }
    },
}


async def _ids(settings: Settings, eventually: Any, name: str | None) -> tuple[Any, Any]:
    """The identifiers an execution of SHOW_IDS saw, and its recorded start."""
    async with running_steplog(settings) as app:
        await app.register("order", SHOW_IDS)
        status, body = await app.start("order", {}, name)
        assert status == 201, body
        done = await app.ended(eventually, body["execution_id"])
        events = await app.resources.store.load(UUID(body["execution_id"]))
        return done, ev.decode_event(events[0].data)


async def test_a_named_execution_sees_the_configured_arns(
    settings: Settings, eventually: Any
) -> None:
    settings = msgspec.structs.replace(
        settings, arn_partition="aws-cn", arn_region="cn-north-1", arn_account="123456789012"
    )
    done, started = await _ids(settings, eventually, "order-o-1")
    prefix = "arn:aws-cn:states:cn-north-1:123456789012"
    assert done["status"] == "SUCCEEDED"
    assert done["output"] == {
        "execution": f"{prefix}:execution:order:order-o-1",
        "machine": f"{prefix}:stateMachine:order",
        "role": "arn:aws-cn:iam::123456789012:role/steplog",
        "name": "order-o-1",
    }
    assert isinstance(started, ev.ExecutionStarted)
    assert started.execution_arn == f"{prefix}:execution:order:order-o-1"
    assert started.state_machine_arn == f"{prefix}:stateMachine:order"


async def test_an_unnamed_execution_is_named_by_its_id_in_its_arn(
    settings: Settings, eventually: Any
) -> None:
    done, _ = await _ids(settings, eventually, None)
    execution_id = done["execution_id"]
    assert done["output"]["name"] == execution_id
    assert done["output"]["execution"] == (
        f"arn:aws:states:us-east-1:000000000000:execution:order:{execution_id}"
    )


async def test_another_namespace_has_its_own_account(settings: Settings, eventually: Any) -> None:
    settings = msgspec.structs.replace(settings, namespace="billing")
    done, _ = await _ids(settings, eventually, "run-1")
    assert done["output"]["machine"] == (
        "arn:aws:states:us-east-1:000000000000-billing:stateMachine:order"
    )
    assert done["output"]["role"] == "arn:aws:iam::000000000000-billing:role/steplog"
