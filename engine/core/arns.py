"""Amazon Resource Names of steplog's state machines and executions, in AWS's form.

    arn:<partition>:states:<region>:<account>:stateMachine:<workflow>
    arn:<partition>:states:<region>:<account>:execution:<workflow>:<execution name>
    arn:<partition>:states:<region>:<account>:express:<workflow>:<execution name>:<execution id>
    arn:<partition>:iam::<account>:role/steplog                    (the execution's role)

Partition, region and account are settings (`ArnScope`); the defaults are LocalStack's,
the usual stand-in for AWS on one machine: ``aws``, ``us-east-1``, ``000000000000``.

The namespace is part of the account: the namespace ``default`` has the configured
account itself, any other namespace ``<account>-<namespace>``. A namespace is a tenant
of steplog as an account is one of AWS (its ids are invisible to other namespaces), the
state machine's name stays the workflow's name (``$$.StateMachine.Name`` is the last
segment of ``$$.StateMachine.Id``, as on AWS), and two namespaces never share an ARN:
only ``default`` gives the bare account, and the suffix is the namespace itself.

The service computes the ARNs once, at start, and records them in ExecutionStarted, so a
replay reads them back instead of recomputing them from settings that may have changed.
Histories recorded before the ARNs were (no such fields) get `legacy_arns`, the form the
context object had then, so they replay to the events they recorded.
"""

from __future__ import annotations

import msgspec

DEFAULT_PARTITION = "aws"
DEFAULT_REGION = "us-east-1"
DEFAULT_ACCOUNT = "000000000000"
DEFAULT_NAMESPACE = "default"
ROLE_NAME = "steplog"


class ArnScope(msgspec.Struct, frozen=True, kw_only=True):
    """Where steplog's resources live, as AWS would say: partition, region, account."""

    partition: str = DEFAULT_PARTITION
    region: str = DEFAULT_REGION
    account: str = DEFAULT_ACCOUNT

    def account_of(self, namespace: str) -> str:
        """The ARN account field of ``namespace`` (see the module docstring)."""
        return self.account if namespace == DEFAULT_NAMESPACE else f"{self.account}-{namespace}"

    def _prefix(self, namespace: str) -> str:
        return f"arn:{self.partition}:states:{self.region}:{self.account_of(namespace)}"

    def state_machine(self, namespace: str, workflow: str) -> str:
        return f"{self._prefix(namespace)}:stateMachine:{workflow}"

    def execution(
        self, namespace: str, workflow: str, name: str, execution_id: str, *, express: bool = False
    ) -> str:
        if express:
            # AWS adds an id to an express execution's ARN: its names need not be unique.
            return f"{self._prefix(namespace)}:express:{workflow}:{name}:{execution_id}"
        return f"{self._prefix(namespace)}:execution:{workflow}:{name}"

    def activity(self, namespace: str, name: str) -> str:
        """An activity's ARN: a Task whose Resource is this is handed to its pollers."""
        return f"{self._prefix(namespace)}:activity:{name}"

    def role(self, namespace: str) -> str:
        return f"arn:{self.partition}:iam::{self.account_of(namespace)}:role/{ROLE_NAME}"


class ExecutionArns(msgspec.Struct, frozen=True, kw_only=True):
    """The identifiers an execution's context object shows."""

    state_machine: str
    execution: str
    role: str


def execution_arns(
    scope: ArnScope,
    namespace: str,
    workflow: str,
    name: str,
    execution_id: str,
    *,
    express: bool = False,
) -> ExecutionArns:
    return ExecutionArns(
        state_machine=scope.state_machine(namespace, workflow),
        execution=scope.execution(namespace, workflow, name, execution_id, express=express),
        role=scope.role(namespace),
    )


def legacy_arns(
    namespace: str, workflow: str, execution_id: str, *, express: bool = False
) -> ExecutionArns:
    """The identifiers of an execution whose ExecutionStarted recorded none (before
    AWS-shaped ARNs): kept as they were, so old histories replay unchanged."""
    kind = "express" if express else "execution"
    return ExecutionArns(
        state_machine=f"arn:steplog:states:{namespace}:stateMachine:{workflow}",
        execution=f"arn:steplog:states:{namespace}:{kind}:{workflow}:{execution_id}",
        role="arn:steplog:iam::role/steplog",
    )
