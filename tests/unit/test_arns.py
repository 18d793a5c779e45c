"""AWS-shaped identifiers: the ARN forms, the namespace in the account, the context
object reading what ExecutionStarted recorded, and old histories (recorded before the
ARNs were) replaying to the events they recorded."""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec
import pytest

from engine.core import events as ev
from engine.core.arns import ArnScope, execution_arns, legacy_arns
from engine.core.asl.compile import compile_definition
from engine.core.decide import decide
from engine.core.inmemory import run_in_memory
from engine.core.replay import Recorded, verify_history
from engine.core.state import evolve, initial_state
from engine.core.triggers import Begin
from steplog.settings import Settings

EID = "00000000-0000-4000-8000-0000000000cc"
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
STAMP = "2026-01-01T00:00:00.000Z"

# A Pass state that shows every identifier of the context object.
SHOW_IDS: dict[str, Any] = {
    "StartAt": "Show",
    "States": {
        "Show": {
            "Type": "Pass",
            "Parameters": {
                "execution.$": "$$.Execution.Id",
                "machine.$": "$$.StateMachine.Id",
                "machine_name.$": "$$.StateMachine.Name",
                "role.$": "$$.Execution.RoleArn",
                "name.$": "$$.Execution.Name",
                "account.$": "States.ArrayGetItem(States.StringSplit($$.Execution.Id, ':'), 4)",
            },
            "End": True,
        }
    },
}


def _output(started: ev.ExecutionStarted) -> Any:
    state = evolve(initial_state(EID), started, STAMP)
    decision = decide(compile_definition(SHOW_IDS), state, Begin(now=T0))
    assert decision.state.status == "SUCCEEDED"
    return decision.state.output


def test_the_default_scope_gives_the_aws_forms() -> None:
    arns = execution_arns(ArnScope(), "default", "order", "order-o-1", EID)
    assert arns.state_machine == "arn:aws:states:us-east-1:000000000000:stateMachine:order"
    assert arns.execution == "arn:aws:states:us-east-1:000000000000:execution:order:order-o-1"
    assert arns.role == "arn:aws:iam::000000000000:role/steplog"


def test_an_express_execution_arn_carries_its_id_after_its_name() -> None:
    arns = execution_arns(ArnScope(), "default", "order", "n", EID, express=True)
    assert arns.execution == f"arn:aws:states:us-east-1:000000000000:express:order:n:{EID}"


def test_partition_region_and_account_are_the_scope_given() -> None:
    scope = ArnScope(partition="aws-cn", region="cn-north-1", account="123456789012")
    arns = execution_arns(scope, "default", "wf", "n", EID)
    assert arns.execution == "arn:aws-cn:states:cn-north-1:123456789012:execution:wf:n"
    assert arns.role == "arn:aws-cn:iam::123456789012:role/steplog"


def test_a_namespace_other_than_default_is_part_of_the_account() -> None:
    arns = execution_arns(ArnScope(), "billing", "order", "n", EID)
    assert arns.state_machine == "arn:aws:states:us-east-1:000000000000-billing:stateMachine:order"
    assert arns.role == "arn:aws:iam::000000000000-billing:role/steplog"


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("default", "billing"),
        ("billing", "sales"),
        # A namespace named like an account does not take the default namespace's ARNs.
        ("default", "000000000000"),
        ("default", "default-x"),
    ],
)
def test_two_namespaces_never_share_an_arn(a: str, b: str) -> None:
    scope = ArnScope()
    assert scope.state_machine(a, "wf") != scope.state_machine(b, "wf")
    assert scope.execution(a, "wf", "n", EID) != scope.execution(b, "wf", "n", EID)


def test_the_context_object_shows_the_recorded_arns() -> None:
    arns = execution_arns(ArnScope(), "default", "order", "order-o-1", EID)
    started = ev.ExecutionStarted(
        input={},
        workflow="order",
        version=1,
        name="order-o-1",
        role_arn=arns.role,
        state_machine_arn=arns.state_machine,
        execution_arn=arns.execution,
    )
    assert _output(started) == {
        "execution": "arn:aws:states:us-east-1:000000000000:execution:order:order-o-1",
        "machine": "arn:aws:states:us-east-1:000000000000:stateMachine:order",
        "machine_name": "order",
        "role": "arn:aws:iam::000000000000:role/steplog",
        "name": "order-o-1",
        "account": "000000000000",
    }


def test_a_history_recorded_before_the_arns_keeps_its_identifiers() -> None:
    started = ev.ExecutionStarted(input={}, workflow="order", version=1, name="n")
    out = _output(started)
    assert out["execution"] == f"arn:steplog:states:default:execution:order:{EID}"
    assert out["machine"] == "arn:steplog:states:default:stateMachine:order"
    assert out["role"] == "arn:steplog:iam::role/steplog"
    assert legacy_arns("default", "order", EID).execution == out["execution"]


def test_an_old_history_replays_to_the_events_it_recorded() -> None:
    # Bytes of an ExecutionStarted written before the ARN fields existed, and the events
    # that execution recorded then: decide must still reproduce them.
    old_start = b'{"type":"ExecutionStarted","input":{},"workflow":"order","version":1,"name":"n"}'
    started = ev.decode_event(old_start)
    assert isinstance(started, ev.ExecutionStarted) and started.execution_arn == ""
    old_output = {
        "execution": f"arn:steplog:states:default:execution:order:{EID}",
        "machine": "arn:steplog:states:default:stateMachine:order",
        "machine_name": "order",
        "role": "arn:steplog:iam::role/steplog",
        "name": "n",
        "account": "execution",
    }
    history = [
        Recorded(1, started, T0),
        Recorded(2, ev.PassStateEntered(name="Show", input={}), T0),
        Recorded(3, ev.PassStateExited(name="Show", output=old_output, end=True), T0),
        Recorded(4, ev.ExecutionSucceeded(output=old_output), T0),
    ]
    assert verify_history(compile_definition(SHOW_IDS), EID, history).ok


def test_the_recorded_arns_survive_encoding() -> None:
    arns = execution_arns(ArnScope(), "default", "wf", "n", EID)
    started = ev.ExecutionStarted(
        workflow="wf", name="n", execution_arn=arns.execution, state_machine_arn=arns.state_machine
    )
    data = msgspec.json.decode(ev.encode_event(started))
    assert data["executionArn"] == arns.execution
    assert data["stateMachineArn"] == arns.state_machine
    assert ev.decode_event(ev.encode_event(started)) == started


def test_the_in_memory_runner_records_aws_shaped_arns() -> None:
    run = run_in_memory(compile_definition(SHOW_IDS), {}, name="run-1", workflow="wf")
    assert run.state.output["execution"] == (
        "arn:aws:states:us-east-1:000000000000:execution:wf:run-1"
    )


def test_the_settings_default_to_localstack_s_scope() -> None:
    assert Settings().arn_scope() == ArnScope(
        partition="aws", region="us-east-1", account="000000000000"
    )


def test_the_settings_read_the_scope_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "STEPLOG_ARN_PARTITION": "aws-us-gov",
            "STEPLOG_ARN_REGION": "us-gov-west-1",
            "STEPLOG_ARN_ACCOUNT": "123456789012",
        }
    )
    assert settings.arn_scope() == ArnScope(
        partition="aws-us-gov", region="us-gov-west-1", account="123456789012"
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("STEPLOG_ARN_PARTITION", "AWS"),
        ("STEPLOG_ARN_PARTITION", "a:b"),
        ("STEPLOG_ARN_REGION", "us east"),
        ("STEPLOG_ARN_ACCOUNT", "12345"),
        ("STEPLOG_ARN_ACCOUNT", "abcdefghijkl"),
        ("STEPLOG_NAMESPACE", "a:b"),
    ],
)
def test_a_setting_that_would_break_an_arn_is_refused(variable: str, value: str) -> None:
    with pytest.raises(ValueError, match=variable.removeprefix("STEPLOG_").lower()):
        Settings.from_env({variable: value})
