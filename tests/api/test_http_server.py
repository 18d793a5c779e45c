"""Issue 9, item 7: the HTTP server itself (api/server.py through steplog's run_roles),
probed with raw sockets: aiohttp's own errors are problem+json that echo nothing
and log one line without a traceback; slow and idle clients are timed out; open
connections are capped; CORS answers only a configured allow-list."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from steplog.settings import Settings
from tests.serving import Running, running_steplog

LIMITS = {
    "http_header_timeout_s": 0.5,
    "http_body_timeout_s": 0.5,
    "http_keepalive_timeout_s": 1.0,
    "http_max_connections": 8,
    "cors_allow_origins": ("https://app.example",),
}
SCRIPT = "<script>alert(1)</script>"


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[Running]:
    async with running_steplog(msgspec.structs.replace(settings, **LIMITS)) as running:
        yield running


async def _connect(app: Running) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = app.base_url.removeprefix("http://").rsplit(":", 1)
    return await asyncio.open_connection(host, int(port))


async def _exchange(app: Running, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``raw``; (status, headers, body) of the answer, read until the server closes."""
    reader, writer = await _connect(app)
    try:
        writer.write(raw)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


MALFORMED = [
    pytest.param(
        b"GET /v1/workflows?q=" + SCRIPT.encode() + b"x" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        "line_too_long",
        id="url-over-8KiB",
    ),
    pytest.param(
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + SCRIPT.encode() + b"y" * 9000 + b"\r\n\r\n",
        "line_too_long",
        id="header-over-8KiB",
    ),
    pytest.param(
        b"GET / HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-H%d: %s\r\n" % (i, SCRIPT.encode()) for i in range(200))
        + b"\r\n",
        "bad_http_request",
        id="200-headers",
    ),
    pytest.param(
        b"PUT /v1/workflows/wf HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\nZZ" + SCRIPT.encode() + b"\r\n{}\r\n0\r\n\r\n",
        "bad_http_request",
        id="bad-chunked",
    ),
    pytest.param(
        SCRIPT.encode() + b" / HTTP/1.1\r\nHost: x\r\n\r\n", "bad_http_request", id="bad-method"
    ),
    pytest.param(
        b"GET /\x00" + SCRIPT.encode() + b" HTTP/1.1\r\n\r\n", "bad_http_request", id="nul"
    ),
]


@pytest.mark.parametrize(("raw", "code"), MALFORMED)
async def test_aiohttp_errors_are_problems_that_echo_nothing(
    app: Running, raw: bytes, code: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        status, headers, body = await _exchange(app, raw)

    assert status == 400
    assert headers["content-type"] == "application/problem+json"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["server"] == "steplog"
    problem = json.loads(body)
    assert (problem["status"], problem["code"]) == (400, code)
    assert "script" not in body.decode() and "X-H" not in body.decode()
    server_lines = [r for r in caplog.records if r.name == "steplog.api.server"]
    assert len(server_lines) == 1 and server_lines[0].levelno == logging.WARNING
    assert server_lines[0].exc_info is None
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_the_server_header_shows_no_version(app: Running) -> None:
    status, headers, _ = await _exchange(
        app, b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert status == 200
    assert headers["server"] == "steplog"


async def test_headers_sent_one_byte_at_a_time_are_cut_off(app: Running) -> None:
    reader, writer = await _connect(app)
    request = b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 100
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        for byte in request:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.05)
            if reader.at_eof() or writer.transport.is_closing():
                break
        closed = await asyncio.wait_for(reader.read(), 5)
    except ConnectionError:
        closed = b""
    finally:
        writer.close()
    assert closed == b""  # closed without a response
    assert loop.time() - started < 4  # 0.5 s of header time, not 100 bytes x 50 ms


async def test_an_idle_keep_alive_connection_is_closed(app: Running) -> None:
    reader, writer = await _connect(app)
    try:
        writer.write(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        first = await asyncio.wait_for(reader.readuntil(b'{"status":"ok"}'), 5)
        assert first.startswith(b"HTTP/1.1 200")
        rest = await asyncio.wait_for(reader.read(), 5)  # EOF after ~1 s idle
    finally:
        writer.close()
    assert rest == b""


async def test_a_body_sent_too_slowly_is_a_408(app: Running) -> None:
    reader, writer = await _connect(app)
    try:
        writer.write(
            b"PUT /v1/workflows/slow HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408")
    assert json.loads(body)["code"] == "request_timeout"


async def test_a_client_hanging_up_mid_body_logs_one_line_and_changes_nothing(
    app: Running, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        _, writer = await _connect(app)
        writer.write(
            b"PUT /v1/workflows/gone HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"StartAt": '
        )
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.close()
        await writer.wait_closed()

        def told() -> list[logging.LogRecord]:
            return [r for r in caplog.records if "whole body" in r.getMessage()]

        for _ in range(50):
            if told():
                break
            await asyncio.sleep(0.05)
    (line,) = told()
    assert line.levelno == logging.INFO and line.exc_info is None
    assert not [r for r in caplog.records if r.name.startswith("steplog.api") and r.exc_info]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    status, body = await app.call("GET", "/v1/workflows/gone")
    assert (status, body["code"]) == (404, "workflow_not_found")


async def test_open_connections_are_capped(app: Running) -> None:
    held = [await _connect(app) for _ in range(LIMITS["http_max_connections"])]  # type: ignore[call-overload]
    try:
        await asyncio.sleep(0.1)
        status, headers, body = await _exchange(
            app, b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        assert status == 503
        assert headers["retry-after"] == "1"
        assert json.loads(body)["code"] == "too_many_connections"
    finally:
        for _, writer in held:
            writer.close()
    await asyncio.sleep(0.2)
    status, _, _ = await _exchange(
        app, b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert status == 200


async def test_cors_answers_only_the_allow_list(app: Running) -> None:
    url = app.base_url + "/v1/workflows"
    preflight: dict[str, Any] = {"Access-Control-Request-Method": "PUT"}
    async with app.http.options(url, headers={**preflight, "Origin": "https://app.example"}) as r:
        assert r.status == 204
        assert r.headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert "PUT" in r.headers["Access-Control-Allow-Methods"]
    async with app.http.options(url, headers={**preflight, "Origin": "https://evil.example"}) as r:
        assert r.status == 403
        assert (await r.json(content_type=None))["code"] == "cors_origin_not_allowed"
        assert "Access-Control-Allow-Origin" not in r.headers
    async with app.http.get(url, headers={"Origin": "https://app.example"}) as r:
        assert r.headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert r.headers["Vary"] == "Origin"
    async with app.http.get(url, headers={"Origin": "https://evil.example"}) as r:
        assert r.status == 200 and "Access-Control-Allow-Origin" not in r.headers


def test_the_http_settings_come_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "STEPLOG_HTTP_MAX_CONNECTIONS": "50",
            "STEPLOG_HTTP_HEADER_TIMEOUT_S": "2.5",
            "STEPLOG_HTTP_BODY_TIMEOUT_S": "4",
            "STEPLOG_HTTP_KEEPALIVE_TIMEOUT_S": "6",
            "STEPLOG_HTTP_MAX_LINE_BYTES": "4096",
            "STEPLOG_HTTP_MAX_HEADERS": "40",
            "STEPLOG_CORS_ALLOW_ORIGINS": "https://a.example, https://b.example",
        }
    )
    assert (
        settings.http_max_connections,
        settings.http_header_timeout_s,
        settings.http_body_timeout_s,
        settings.http_keepalive_timeout_s,
        settings.http_max_line_bytes,
        settings.http_max_headers,
        settings.cors_allow_origins,
    ) == (50, 2.5, 4.0, 6.0, 4096, 40, ("https://a.example", "https://b.example"))
    assert Settings().cors_allow_origins == ()  # CORS off by default
    for bad in ({"STEPLOG_HTTP_MAX_CONNECTIONS": "0"}, {"STEPLOG_HTTP_BODY_TIMEOUT_S": "-1"}):
        with pytest.raises(ValueError):
            Settings.from_env(bad)
