"""The access routes and the rules around keys (issue 10, items 1, 2, 5, 6)."""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from api.app import create_app
from engine.access import Access
from engine.adapters.store import EventStore
from engine.service import EngineService
from projections.queries import Queries
from steplog.settings import Settings
from tests.api.conftest import OTHER, World
from tests.api.helpers import api_config


def _auth(token: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **extra}


async def _json(world: World, method: str, path: str, token: str, **kw: Any) -> tuple[int, Any]:
    async with world.client.request(method, path, headers=_auth(token), **kw) as resp:
        return resp.status, await resp.json()


async def test_a_stop_is_audited_with_who_and_from_where(world: World) -> None:
    status, _ = await _json(
        world, "POST", f"/v1/executions/{world.execution_id}/stop", world.keys["own"], json={}
    )
    assert status == 200
    status, trail = await _json(world, "GET", "/v1/audit?limit=1", world.keys["own"])
    assert status == 200
    [entry] = trail["entries"]
    assert entry["action"] == "execution.stop"
    assert entry["target"] == world.execution_id
    assert entry["key_id"] == world.keys["own"].split("_")[1]
    assert entry["remote"] == "127.0.0.1"
    assert trail["next_cursor"] is not None
    status, older = await _json(
        world, "GET", f"/v1/audit?limit=100&cursor={trail['next_cursor']}", world.keys["own"]
    )
    assert status == 200
    assert all(e["id"] < entry["id"] for e in older["entries"])


async def test_a_key_made_by_the_route_works_once_and_never_shows_its_secret_again(
    world: World,
) -> None:
    status, made = await _json(
        world, "POST", "/v1/keys", world.keys["own"], json={"role": "operator", "name": "ci"}
    )
    assert status == 201
    token = made["key"]
    assert made["info"]["namespace"] == "default" and made["info"]["role"] == "operator"
    status, _ = await _json(world, "GET", "/v1/workflows", token)
    assert status == 200
    status, listing = await _json(world, "GET", "/v1/keys", world.keys["own"])
    assert token.split("_")[2] not in msgspec.json.encode(listing).decode()
    # A namespace's admin makes keys of its namespace only, and no global key.
    for body in ({"role": "reader", "namespace": OTHER}, {"role": "admin", "global_key": True}):
        status, problem = await _json(world, "POST", "/v1/keys", world.keys["own"], json=body)
        assert (status, problem["code"]) == (403, "forbidden")
    status, _ = await _json(
        world, "POST", f"/v1/keys/{made['info']['key_id']}/revoke", world.keys["own"]
    )
    assert status == 200
    status, problem = await _json(world, "GET", "/v1/workflows", token)
    assert (status, problem["code"]) == (401, "unauthenticated")


async def test_a_global_admin_works_in_the_namespace_it_names(world: World) -> None:
    header = {"Steplog-Namespace": OTHER}
    async with world.client.get(
        "/v1/workflows/wf", headers=_auth(world.keys["global"], **header)
    ) as resp:
        assert resp.status == 404  # "wf" is of the default namespace
    async with world.client.get(
        "/v1/workflows", headers=_auth(world.keys["global"], **{"Steplog-Namespace": "nowhere"})
    ) as resp:
        assert (resp.status, (await resp.json())["code"]) == (404, "namespace_not_found")
    # A key bound to a namespace may not name another.
    async with world.client.get(
        "/v1/workflows", headers=_auth(world.keys["own"], **header)
    ) as resp:
        assert (resp.status, (await resp.json())["code"]) == (403, "forbidden")
    status, made = await _json(
        world, "POST", "/v1/namespaces", world.keys["global"], json={"name": "team-c"}
    )
    assert (status, made["name"]) == (201, "team-c")


async def test_401_says_how_to_authenticate_and_keys_stay_out_of_logs(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with world.client.get("/v1/workflows") as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    for token in world.keys.values():
        async with world.client.get("/v1/workflows", headers=_auth(token)) as resp:
            assert token not in await resp.text()
    async with world.client.get("/v1/workflows", headers={"Authorization": "Basic abc"}) as resp:
        assert resp.status == 401
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert all(token not in logged for token in world.keys.values())


async def test_metrics_need_the_token_when_one_is_set(
    pool: asyncpg.Pool, store: EventStore, redis: Redis, settings: Settings
) -> None:
    config = msgspec.structs.replace(api_config(settings), auth=True, metrics_token="s3cret")
    app = create_app(
        EngineService(store), Queries(store, pool, redis.ping), config, Access.over(pool)
    )
    async with TestClient(TestServer(app)) as c:
        assert (await c.get("/metrics")).status == 401
        assert (await c.get("/metrics", headers=_auth("wrong"))).status == 401
        ok = await c.get("/metrics", headers=_auth("s3cret"))
        assert ok.status == 200
        assert "steplog_http_requests" in await ok.text()
        assert (await c.get("/health/live")).status == 200
        assert (await c.get("/health/ready")).status == 200


def test_metrics_without_a_token_are_for_loopback_clients_only() -> None:
    from api.auth import _is_loopback

    assert _is_loopback("127.0.0.1") and _is_loopback("::1")
    assert not any(_is_loopback(a) for a in ("10.0.0.7", "192.168.1.2", "2001:db8::1", None, "x"))
