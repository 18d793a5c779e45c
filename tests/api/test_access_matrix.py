"""Issue 10, items 1 and 2: every route x every kind of caller -> the expected status, and
nothing changed by a refused request.

The routes come from api/openapi.py's OPERATIONS, so a new route is in the matrix as soon
as it is published (the test fails until BODIES / PARAMS say how to call it). Callers:
an admin key of the namespace that owns the seeded rows ("own"), an admin key of another
namespace ("other"), a reader key of the own namespace on every route ("reader"), no key,
a malformed key, a revoked key, an expired key, and a global admin key.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import msgspec

from api.auth import PUBLIC_PATHS, required_role
from api.identity import Role
from api.openapi import OPERATIONS, Op
from tests.api.conftest import OTHER, OWN, World
from tests.api.helpers import PASS_DEFINITION, row_counts

UNKNOWN_ID = str(uuid.uuid4())

BODIES: dict[str, Any] = {
    "registerWorkflow": {"definition": PASS_DEFINITION},
    "validateWorkflow": {"definition": PASS_DEFINITION},
    "startExecution": {"input": {}},
    "stopExecution": {},
    "createNamespace": {"name": "made-by-matrix"},
    "createKey": {"role": "reader", "name": "matrix"},
    "revokeKey": None,
    "createWebhook": {"url": "http://127.0.0.1:9/matrix", "statuses": ["SUCCEEDED"]},
    "updateWebhook": {"description": "changed by the matrix"},
    "rotateWebhookSecret": None,  # the body is optional: a secret is generated
    "replayDelivery": None,
    # Not a token steplog issued: every caller allowed to send one gets 400 invalid_token.
    "sendTaskSuccess": {"taskToken": "stt1.not-a-token", "output": {}},
    "sendTaskFailure": {"taskToken": "stt1.not-a-token", "error": "E"},
    "sendTaskHeartbeat": {"taskToken": "stt1.not-a-token"},
    # "wf" (seeded in the own namespace): the own callers re-create what deleteActivity
    # removed; "other" makes one of its own name (see _call).
    "createActivity": {"name": "wf"},
    "pollActivity": {"workerName": "matrix"},
    "deleteActivity": None,
}
QUERIES: dict[str, str] = {"getStateDiff": "?from=1&to=2", "pollActivity": "?wait=0"}
TOKEN_OPS = frozenset({"sendTaskSuccess", "sendTaskFailure", "sendTaskHeartbeat"})


def _path(op: Op, world: World, *, unknown: bool = False, caller: str = "") -> str:
    # A registration makes its own workflow: "other" registering "wf" in its namespace
    # would make the later reads of "wf" by "other" rightly succeed.
    seeded = "registered" if op.id == "registerWorkflow" else "wf"
    path = op.path.replace("{name}", "nope" if unknown else seeded)
    path = path.replace("{id}", UNKNOWN_ID if unknown else world.execution_id)
    path = path.replace("{key_id}", "0" * 16 if unknown else world.victim_key_id)
    # Each admin of the own namespace deletes a webhook of its own; the others (refused)
    # aim at one that exists.
    webhook = world.doomed.get(caller, world.webhook_id) if op.id == "deleteWebhook" else None
    path = path.replace("{webhook_id}", UNKNOWN_ID if unknown else webhook or world.webhook_id)
    path = path.replace("{delivery_id}", "msg_unknown" if unknown else world.delivery_id)
    return path + QUERIES.get(op.id, "")


def _expected(op: Op, caller: str) -> set[int]:
    """The statuses ``caller`` may get from ``op``."""
    ok = set(op.ok)
    if op.path in PUBLIC_PATHS or op.path == "/metrics":  # /metrics: loopback, no token
        return ok
    if caller in ("none", "malformed", "revoked", "expired"):
        return {401}
    if caller == "reader":
        return ok if required_role(op.method.upper(), op.path) == Role.READER else {403}
    if op.id == "createNamespace":
        return ok if caller == "global" else {403}
    if op.id in TOKEN_OPS:
        return {400}
    if caller == "other":
        by_id = any(p in op.path for p in ("{id}", "{key_id}", "{webhook_id}"))
        if by_id or ("{name}" in op.path and op.id != "registerWorkflow"):
            return {404}
    return ok


async def _state(pool: asyncpg.Pool) -> dict[str, Any]:
    counts: dict[str, Any] = await row_counts(pool)
    counts["revoked"] = await pool.fetchval(
        "SELECT count(*) FROM api_keys WHERE revoked_at IS NOT NULL"
    )
    return counts


async def _call(world: World, op: Op, caller: str, path: str) -> tuple[int, bytes]:
    headers = {} if caller == "none" else {"Authorization": f"Bearer {world.keys[caller]}"}
    body = BODIES[op.id] if op.method in ("post", "put", "patch") else None
    if op.id == "createActivity" and caller == "other":
        body = {"name": "made-by-other"}  # "wf" of its own would make its reads of wf 200
    async with world.client.request(op.method.upper(), path, json=body, headers=headers) as resp:
        return resp.status, await resp.read()


CALLERS = ("none", "malformed", "revoked", "expired", "reader", "other", "own", "global")


async def test_every_route_answers_every_caller_as_expected_and_refusals_change_nothing(
    world: World,
) -> None:
    failures = []
    for caller in CALLERS:
        for op in OPERATIONS:
            expected = _expected(op, caller)
            before = await _state(world.pool)
            status, body = await _call(world, op, caller, _path(op, world, caller=caller))
            if status not in expected:
                failures.append(f"{caller} {op.method.upper()} {op.path}: {status} {body[:200]!r}")
            if status >= 400:
                assert await _state(world.pool) == before, f"{caller} {op.id} changed rows"
                if status == 401:
                    assert msgspec.json.decode(body)["code"] == "unauthenticated"
                    for token in world.keys.values():
                        assert token.encode() not in body  # no key is ever echoed
    assert not failures, "\n".join(failures)


async def test_another_namespace_id_is_a_404_exactly_like_an_unknown_id(world: World) -> None:
    """Same status, code, title and detail (but for the id) as an id nobody has."""
    for op in OPERATIONS:
        if _expected(op, "other") != {404}:
            continue
        status, body = await _call(world, op, "other", _path(op, world))
        unknown_status, unknown_body = await _call(world, op, "own", _path(op, world, unknown=True))
        theirs, unknown = msgspec.json.decode(body), msgspec.json.decode(unknown_body)
        assert (status, theirs["code"], theirs["title"]) == (
            unknown_status,
            unknown["code"],
            unknown["title"],
        ), op.id
        for value in (
            world.execution_id,
            UNKNOWN_ID,
            world.victim_key_id,
            world.webhook_id,
            "wf",
            "nope",
            "0" * 16,
        ):
            theirs["detail"] = theirs["detail"].replace(value, "X")
            unknown["detail"] = unknown["detail"].replace(value, "X")
        assert theirs["detail"] == unknown["detail"], op.id


async def test_listings_never_show_another_namespace(world: World) -> None:
    async def get(caller: str, path: str) -> Any:
        status, body = await _call(
            world, next(o for o in OPERATIONS if o.path == path and o.method == "get"), caller, path
        )
        assert status == 200, body
        return msgspec.json.decode(body)

    assert [w["name"] for w in (await get("own", "/v1/workflows"))["workflows"]] == ["wf"]
    assert (await get("other", "/v1/workflows"))["workflows"] == []
    assert len((await get("own", "/v1/executions"))["executions"]) == 1
    assert (await get("other", "/v1/executions"))["executions"] == []
    assert {k["namespace"] for k in (await get("other", "/v1/keys"))["keys"]} == {OTHER}
    assert {k["namespace"] for k in (await get("own", "/v1/keys"))["keys"]} == {OWN}
    assert [n["name"] for n in (await get("other", "/v1/namespaces"))["namespaces"]] == [OTHER]
    everything = {n["name"] for n in (await get("global", "/v1/namespaces"))["namespaces"]}
    assert {OWN, OTHER} <= everything
    # The stop of the setup was not made through the API: the trail has the key rows only.
    own_trail = (await get("own", "/v1/audit"))["entries"]
    assert own_trail and {e["namespace"] for e in own_trail} == {OWN}
    assert {e["namespace"] for e in (await get("other", "/v1/audit"))["entries"]} == {OTHER}
