"""Task tokens (the callback pattern) and activity resources.

A Task whose Resource ends in ``.waitForTaskToken`` runs its base resource and then
waits for a callback naming its task token; a Task whose Resource is an activity ARN
(``arn:<partition>:states:<region>:<account>:activity:<name>``) is handed to an
external worker polling that activity, with a token to report with. Either way the
attempt is pending until ``POST /v1/tasks/success`` / ``failure`` arrives with the
token (or its timers fire).

A token names one task attempt and is unguessable without the execution's token key:

    stt1.<execution id, 32 hex>.<task local id>.<HMAC-SHA256(key, task id), 32 hex>

The key is 128 random bits made by the service at start and recorded in
ExecutionStarted (``task_token_key``, invariant 4: random values are read once and
recorded), so decide computes every token deterministically and a replay reproduces
them. The execution id in the token lets the API find the execution; the MAC proves
the token was issued for that task. Pure: hashlib and hmac only.
"""

from __future__ import annotations

import hashlib
import hmac
import re

WAIT_FOR_TASK_TOKEN = ".waitForTaskToken"
TOKEN_PREFIX = "stt1"
# AWS's bound on a task token's length (SendTaskSuccess taskToken: 1-1024).
MAX_TOKEN_CHARS = 1024
_MAC_HEX = 32
_TOKEN = re.compile(r"stt1\.([0-9a-f]{32})\.([1-9][0-9]{0,17})\.([0-9a-f]{32})")
# An activity name in a Resource: AWS allows 1-80 characters; steplog takes the same
# characters as a workflow name (they become part of a Redis key).
ACTIVITY_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,80}")
_ACTIVITY_ARN = re.compile(r"arn:[A-Za-z0-9\-]+:states:[A-Za-z0-9\-]*:[A-Za-z0-9\-]*:activity:(.+)")
# Queues of activities: one per (namespace, activity), never a built-in worker's.
ACTIVITY_QUEUE_PREFIX = "activity:"


def waits_for_token(resource: str) -> bool:
    return resource.endswith(WAIT_FOR_TASK_TOKEN)


def base_resource(resource: str) -> str:
    """The resource a built-in worker runs: without ``.waitForTaskToken``."""
    if waits_for_token(resource):
        return resource[: -len(WAIT_FOR_TASK_TOKEN)]
    return resource


def activity_name(resource: str) -> str | None:
    """The activity a Resource names, or None when it is not an activity ARN."""
    m = _ACTIVITY_ARN.fullmatch(resource)
    if m is None or ACTIVITY_NAME.fullmatch(m.group(1)) is None:
        return None
    return m.group(1)


def activity_queue(namespace: str, name: str) -> str:
    """The task queue of activity ``name`` of ``namespace``."""
    return f"{ACTIVITY_QUEUE_PREFIX}{namespace}:{name}"


def needs_token(resource: str) -> bool:
    """Whether a task attempt of ``resource`` gets a token and waits for a callback."""
    return waits_for_token(resource) or activity_name(resource) is not None


def _mac(key: str, task_id: str) -> str:
    digest = hmac.new(key.encode(), task_id.encode(), hashlib.sha256).hexdigest()
    return digest[:_MAC_HEX]


def make_token(key: str, execution_id: str, local_id: str) -> str:
    """The token of task ``<execution_id>:<local_id>`` under the execution's key."""
    task_id = f"{execution_id}:{local_id}"
    return f"{TOKEN_PREFIX}.{execution_id.replace('-', '')}.{local_id}.{_mac(key, task_id)}"


class ParsedToken:
    """What a well-formed token names (not yet verified: see `verify`)."""

    __slots__ = ("execution_hex", "local_id", "mac")

    def __init__(self, execution_hex: str, local_id: str, mac: str) -> None:
        self.execution_hex = execution_hex
        self.local_id = local_id
        self.mac = mac

    def task_id(self, execution_id: str) -> str:
        return f"{execution_id}:{self.local_id}"

    def verify(self, key: str, execution_id: str) -> bool:
        """Whether the token was issued under ``key`` (compared in constant time)."""
        if not key:
            return False
        return hmac.compare_digest(self.mac, _mac(key, self.task_id(execution_id)))


def parse_token(token: str) -> ParsedToken | None:
    """The parts of a token, or None when it is not one of steplog's form."""
    if len(token) > MAX_TOKEN_CHARS:
        return None
    m = _TOKEN.fullmatch(token)
    if m is None:
        return None
    return ParsedToken(m.group(1), m.group(2), m.group(3))
