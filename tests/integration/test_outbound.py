"""The outbound HTTP guard (engine/adapters/outbound.py) against a real local aiohttp
server: timeouts, the response cap, no redirects, and the address guard with its
allow-list, checked on resolved addresses."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from engine.adapters.outbound import (
    Outbound,
    OutboundConnectionFailed,
    OutboundPolicy,
    OutboundRefused,
    OutboundTimeout,
    OutboundTooLarge,
    is_public,
    parse_allow,
)
from steplog.settings import Settings

LOCAL = parse_allow("127.0.0.1/32,::1/128,localhost")


async def _hello(request: web.Request) -> web.Response:
    return web.Response(text="hello", headers={"X-Seen": request.headers.get("X-Test", "")})


async def _big(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()  # chunked: no Content-Length to go by
    await response.prepare(request)
    for _ in range(64):
        await response.write(b"x" * 1024)
    await response.write_eof()
    return response


async def _big_declared(request: web.Request) -> web.Response:
    return web.Response(body=b"y" * 5000)


async def _slow(request: web.Request) -> web.Response:
    await asyncio.sleep(1.5)
    return web.Response(text="late")


async def _redirect(request: web.Request) -> web.Response:
    raise web.HTTPFound("http://169.254.169.254/latest/meta-data/")


@pytest.fixture
async def server() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/hello", _hello)
    app.router.add_post("/hello", _hello)
    app.router.add_get("/big", _big)
    app.router.add_get("/big-declared", _big_declared)
    app.router.add_get("/slow", _slow)
    app.router.add_get("/redirect", _redirect)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def _policy(allow: str = "127.0.0.1/32,::1/128,localhost", **kw: object) -> OutboundPolicy:
    networks, hosts = parse_allow(allow)
    return OutboundPolicy(allow_networks=networks, allow_hosts=hosts, **kw)  # type: ignore[arg-type]


async def test_allowed_local_call_returns_status_headers_body(server: str) -> None:
    async with Outbound(_policy()) as out:
        response = await out.request("POST", f"http://{server}/hello", headers={"X-Test": "1"})
    assert response.status == 200
    assert response.body == b"hello"
    assert dict(response.headers)["X-Seen"] == "1"
    assert not response.truncated and response.latency_s > 0


async def test_loopback_literal_refused_by_default(server: str) -> None:
    async with Outbound(OutboundPolicy()) as out:
        with pytest.raises(OutboundRefused, match=r"127\.0\.0\.1"):
            await out.request("GET", f"http://{server}/hello")


async def test_host_name_resolving_to_loopback_refused_by_default(server: str) -> None:
    port = server.rsplit(":", 1)[1]
    async with Outbound(OutboundPolicy()) as out:
        with pytest.raises(OutboundRefused, match="localhost resolves to addresses not allowed"):
            await out.request("GET", f"http://localhost:{port}/hello")


async def test_host_name_allowed_by_its_resolved_address(server: str) -> None:
    # Only the CIDR is allowed, not the name: the resolved 127.0.0.1 is what counts.
    port = server.rsplit(":", 1)[1]
    async with Outbound(_policy("127.0.0.0/8")) as out:
        response = await out.request("GET", f"http://localhost:{port}/hello")
    assert response.status == 200


async def test_host_name_allowed_by_name(server: str) -> None:
    port = server.rsplit(":", 1)[1]
    async with Outbound(_policy("localhost")) as out:
        response = await out.request("GET", f"http://localhost:{port}/hello")
        assert response.status == 200
        # The name is allowed, not the address behind it.
        with pytest.raises(OutboundRefused):
            await out.request("GET", f"http://{server}/hello")


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://10.1.2.3/",
        "http://192.168.0.1/",
        "http://172.16.0.1/",
        "http://100.100.100.200/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[fe80::1]/",
        "http://0.0.0.0/",
        "http://224.0.0.1/",
        "ftp://example.com/",
        "http://user:pw@example.com/",
        "/relative",
    ],
)
async def test_refused_destinations(url: str) -> None:
    async with Outbound(OutboundPolicy()) as out:
        with pytest.raises(OutboundRefused):
            await out.request("GET", url)


async def test_metadata_address_refused_even_inside_an_allowed_cidr() -> None:
    async with Outbound(_policy("169.254.0.0/16")) as out:
        with pytest.raises(OutboundRefused):
            await out.request("GET", "http://169.254.169.254/")


def test_public_addresses_pass_and_private_ones_do_not() -> None:
    assert is_public(ipaddress.ip_address("93.184.216.34"))
    assert is_public(ipaddress.ip_address("2606:4700::1111"))
    for private in ("127.0.0.1", "10.0.0.1", "100.64.0.1", "fc00::1", "fec0::1", "::"):
        assert not is_public(ipaddress.ip_address(private)), private


def test_parse_allow_rejects_garbage() -> None:
    networks, hosts = parse_allow(" 127.0.0.1/32 , ::1 ,Localhost. ,")
    assert [str(n) for n in networks] == ["127.0.0.1/32", "::1/128"]
    assert hosts == {"localhost"}
    with pytest.raises(ValueError, match="not a CIDR or a host name"):
        parse_allow("10.0.0.0/40x")
    with pytest.raises(ValueError):
        parse_allow("bad host")


async def test_timeout(server: str) -> None:
    async with Outbound(_policy(total_timeout_s=0.3)) as out:
        with pytest.raises(OutboundTimeout):
            await out.request("GET", f"http://{server}/slow")


async def test_response_cap_chunked_and_declared(server: str) -> None:
    async with Outbound(_policy(max_response_bytes=1000)) as out:
        with pytest.raises(OutboundTooLarge):
            await out.request("GET", f"http://{server}/big")
        with pytest.raises(OutboundTooLarge):
            await out.request("GET", f"http://{server}/big-declared")
        excerpt = await out.request("GET", f"http://{server}/big", truncate=True)
        assert excerpt.truncated and excerpt.body == b"x" * 1000
        declared = await out.request("GET", f"http://{server}/big-declared", truncate=True)
        assert declared.truncated and declared.body == b"y" * 1000


async def test_redirect_not_followed(server: str) -> None:
    async with Outbound(_policy()) as out:
        response = await out.request("GET", f"http://{server}/redirect")
    assert response.status == 302
    assert dict(response.headers)["Location"] == "http://169.254.169.254/latest/meta-data/"


async def test_connection_refused_is_connection_failed() -> None:
    # A port nobody listens on: bind one, close it, call it.
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    async with Outbound(_policy()) as out:
        with pytest.raises(OutboundConnectionFailed):
            await out.request("GET", f"http://127.0.0.1:{port}/")


async def test_unknown_host_is_connection_failed() -> None:
    async with Outbound(OutboundPolicy(connect_timeout_s=2)) as out:
        with pytest.raises((OutboundConnectionFailed, OutboundTimeout)):
            await out.request("GET", "http://no-such-host.invalid/")


def test_settings_build_the_policy() -> None:
    settings = Settings.from_env(
        {
            "STEPLOG_OUTBOUND_ALLOW": "127.0.0.1/32,localhost",
            "STEPLOG_OUTBOUND_TIMEOUT_S": "2.5",
            "STEPLOG_OUTBOUND_MAX_RESPONSE_BYTES": "4096",
        }
    )
    policy = settings.outbound_policy()
    assert policy.allow_hosts == {"localhost"}
    assert policy.address_allowed(ipaddress.ip_address("127.0.0.1"))
    assert policy.total_timeout_s == 2.5 and policy.max_response_bytes == 4096
    assert not Settings().outbound_policy().address_allowed(ipaddress.ip_address("127.0.0.1"))
    with pytest.raises(ValueError, match="outbound settings"):
        Settings.from_env({"STEPLOG_OUTBOUND_ALLOW": "no such host"})
