"""HTTP tasks (arn:aws:states:::http:invoke) through a whole steplog (API, engine,
worker) against a real local aiohttp endpoint, reached through the outbound guard's
allow-list; without it, loopback and private addresses are refused."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import web
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON

from engine.adapters.outbound import Outbound
from engine.loops.http_task import (
    HttpInvoke,
    cause_of,
    connection_name,
    parse_connections,
    result_of,
)
from engine.loops.worker import TaskContext
from steplog.settings import Settings
from tests.serving import Running, free_port, running_steplog

HTTP = "arn:aws:states:::http:invoke"
SECRET = "s3cr3t-token-never-in-a-definition"
CONNECTIONS = json.dumps(
    {
        "billing": {"Headers": {"X-Api-Key": SECRET}, "QueryParameters": {"tenant": "t-1"}},
        "basic": {"Basic": {"Username": "user", "Password": "pw"}},
    }
)


class Endpoint(msgspec.Struct):
    """A local HTTP endpoint: records every request, answers from a script per path."""

    url: str
    seen: list[dict[str, Any]]
    script: dict[str, list[tuple[int, Any]]]


@pytest.fixture
async def endpoint() -> AsyncIterator[Endpoint]:
    seen: list[dict[str, Any]] = []
    script: dict[str, list[tuple[int, Any]]] = {}

    async def handle(request: web.Request) -> web.StreamResponse:
        seen.append(
            {
                "method": request.method,
                "path": request.path,
                "query": list(request.query.items()),
                "headers": dict(request.headers),
                "body": await request.read(),
            }
        )
        answers = script.get(request.path) or [(200, {"ok": True})]
        status, body = answers.pop(0) if len(answers) > 1 else answers[0]
        if body == "slow":
            await asyncio.sleep(5)
        if isinstance(body, str):
            return web.Response(status=status, text=body)
        return web.json_response(body, status=status, headers={"X-Trace": "a"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield Endpoint(f"http://127.0.0.1:{port}", seen, script)
    finally:
        await runner.cleanup()


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[Running]:
    allowed = msgspec.structs.replace(
        settings,
        outbound_allow="127.0.0.1/32",
        outbound_timeout_s=1.0,
        http_connections=CONNECTIONS,
    )
    async with running_steplog(allowed) as running:
        yield running


def task(parameters: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "StartAt": "Call",
        "States": {"Call": {"Type": "Task", "Resource": HTTP, "Parameters": parameters, **extra}},
    }


async def run(app: Running, eventually: Any, definition: dict[str, Any], input: Any) -> Any:
    await app.register("http", definition)
    eid = await app.start_id("http", input)
    return await app.ended(eventually, eid, timeout_s=60)


async def test_a_get_returns_status_headers_and_the_parsed_body(
    app: Running, endpoint: Endpoint, eventually: Any
) -> None:
    endpoint.script["/orders/7"] = [(200, {"id": 7, "items": [1, 2]})]
    definition = task(
        {
            "ApiEndpoint.$": "States.Format('{}/orders/{}', $.base, $.id)",
            "Method": "GET",
            "Headers": {"Accept": "application/json", "X-Api-Key": "overridden"},
            "QueryParameters": {"expand": ["items", "customer"], "limit": 5},
            "Authentication": {
                "ConnectionArn": "arn:aws:events:us-east-1:000000000000:connection/billing/0f1e"
            },
        },
        End=True,
    )
    done = await run(app, eventually, definition, {"base": endpoint.url, "id": 7})
    assert done["status"] == "SUCCEEDED", done
    out = done["output"]
    assert (out["StatusCode"], out["StatusText"]) == (200, "OK")
    assert out["ResponseBody"] == {"id": 7, "items": [1, 2]}
    assert out["Headers"]["X-Trace"] == ["a"]
    [request] = endpoint.seen
    assert request["method"] == "GET" and request["path"] == "/orders/7"
    assert request["query"] == [
        ("expand", "items"),
        ("expand", "customer"),
        ("limit", "5"),
        ("tenant", "t-1"),
    ]
    # The connection's secret header wins over the definition's, and is in no event.
    assert request["headers"]["X-Api-Key"] == SECRET
    status, history = await app.call("GET", f"/v1/executions/{done['execution_id']}/history")
    assert status == 200 and SECRET not in json.dumps(history)


async def test_bodies_are_sent_as_json_text_or_a_form_with_basic_credentials(
    app: Running, endpoint: Endpoint, eventually: Any
) -> None:
    definition = {
        "StartAt": "Json",
        "States": {
            "Json": {
                "Type": "Task",
                "Resource": HTTP,
                "Parameters": {
                    "ApiEndpoint.$": "States.Format('{}/json', $.base)",
                    "Method": "POST",
                    "RequestBody": {"amount": 250, "tags": ["a"]},
                },
                "ResultPath": None,
                "Next": "Text",
            },
            "Text": {
                "Type": "Task",
                "Resource": HTTP,
                "Parameters": {
                    "ApiEndpoint.$": "States.Format('{}/text', $.base)",
                    "Method": "PUT",
                    "RequestBody": "plain words",
                    "Authentication": {"ConnectionArn": "basic"},
                },
                "ResultPath": None,
                "Next": "Form",
            },
            "Form": {
                "Type": "Task",
                "Resource": HTTP,
                "Parameters": {
                    "ApiEndpoint.$": "States.Format('{}/form', $.base)",
                    "Method": "POST",
                    "RequestBody": {"a": "1 2", "b": True},
                    "Transform": {"RequestBodyEncoding": "URL_ENCODED"},
                },
                "End": True,
            },
        },
    }
    endpoint.script["/form"] = [(201, "created")]
    done = await run(app, eventually, definition, {"base": endpoint.url})
    assert done["status"] == "SUCCEEDED", done
    assert done["output"]["StatusCode"] == 201 and done["output"]["ResponseBody"] == "created"
    sent_json, sent_text, sent_form = endpoint.seen
    assert json.loads(sent_json["body"]) == {"amount": 250, "tags": ["a"]}
    assert sent_json["headers"]["Content-Type"] == "application/json"
    assert (sent_text["method"], sent_text["body"]) == ("PUT", b"plain words")
    assert sent_text["headers"]["Content-Type"].startswith("text/plain")
    assert sent_text["headers"]["Authorization"] == "Basic dXNlcjpwdw=="  # user:pw
    assert sent_form["body"] == b"a=1+2&b=true"
    assert sent_form["headers"]["Content-Type"] == "application/x-www-form-urlencoded"


async def test_a_503_is_retried_then_succeeds(
    app: Running, endpoint: Endpoint, eventually: Any
) -> None:
    endpoint.script["/flaky"] = [(503, {"busy": True}), (200, {"done": 1})]
    retry = [
        {
            "ErrorEquals": ["States.Http.StatusCode.503"],
            "IntervalSeconds": 1,
            "MaxAttempts": 2,
            "BackoffRate": 1,
        }
    ]
    definition = task(
        {"ApiEndpoint.$": "States.Format('{}/flaky', $.base)", "Method": "GET"},
        Retry=retry,
        ResultSelector={"body.$": "$.ResponseBody"},
        End=True,
    )
    done = await run(app, eventually, definition, {"base": endpoint.url})
    assert done["status"] == "SUCCEEDED", done
    assert done["output"] == {"body": {"done": 1}}
    assert len(endpoint.seen) == 2
    _, history = await app.call("GET", f"/v1/executions/{done['execution_id']}/history")
    failed = [e for e in history["events"] if e["type"] == "TaskFailed"]
    assert [e["details"]["error"] for e in failed] == ["States.Http.StatusCode.503"]


async def test_a_404_is_caught_with_the_response_in_its_cause(
    app: Running, endpoint: Endpoint, eventually: Any
) -> None:
    endpoint.script["/missing"] = [(404, {"message": "no such order"})]
    definition = {
        "StartAt": "Call",
        "States": {
            "Call": {
                "Type": "Task",
                "Resource": HTTP,
                "Parameters": {
                    "ApiEndpoint.$": "States.Format('{}/missing', $.base)",
                    "Method": "DELETE",
                },
                "Catch": [
                    {
                        "ErrorEquals": ["States.Http.StatusCode.404"],
                        "ResultPath": "$.failure",
                        "Next": "Gone",
                    }
                ],
                "End": True,
            },
            "Gone": {"Type": "Pass", "End": True},
        },
    }
    done = await run(app, eventually, definition, {"base": endpoint.url})
    assert done["status"] == "SUCCEEDED", done
    failure = done["output"]["failure"]
    assert failure["Error"] == "States.Http.StatusCode.404"
    cause = json.loads(failure["Cause"])
    assert (cause["StatusCode"], cause["StatusText"]) == (404, "Not Found")
    assert json.loads(cause["ResponseBody"]) == {"message": "no such order"}


async def test_no_answer_in_time_is_a_socket_error(
    app: Running, endpoint: Endpoint, eventually: Any
) -> None:
    endpoint.script["/slow"] = [(200, "slow")]
    definition = task(
        {"ApiEndpoint.$": "States.Format('{}/slow', $.base)", "Method": "GET"}, End=True
    )
    done = await run(app, eventually, definition, {"base": endpoint.url})
    assert (done["status"], done["error"]) == ("FAILED", "States.Http.Socket")
    assert "within 1 s" in done["cause"]


@pytest.mark.parametrize(
    ("parameters", "input", "message"),
    [
        # Computed values the definition could not show at registration.
        (
            {"ApiEndpoint": "http://127.0.0.1/", "Method.$": "$.m"},
            {"m": "FETCH"},
            "Method must be one of",
        ),
        ({"ApiEndpoint.$": "$.url", "Method": "GET"}, {"url": 5}, "ApiEndpoint must be a URL"),
        (
            {"ApiEndpoint": "http://127.0.0.1/", "Method": "GET", "Headers": {"Host": "x"}},
            {},
            "may not set Host",
        ),
        (
            {
                "ApiEndpoint": "http://127.0.0.1/",
                "Method": "GET",
                "Authentication": {"ConnectionArn": "nobody"},
            },
            {},
            "no connection named 'nobody'",
        ),
    ],
)
async def test_parameters_that_are_no_request_fail_the_task_clearly(
    app: Running, eventually: Any, parameters: dict[str, Any], input: Any, message: str
) -> None:
    done = await run(app, eventually, task(parameters, End=True), input)
    assert (done["status"], done["error"]) == ("FAILED", "Steplog.Http.InvalidRequest")
    assert message in done["cause"]


async def test_loopback_and_private_addresses_are_refused_by_default(
    settings: Settings, endpoint: Endpoint, eventually: Any
) -> None:
    assert settings.outbound_allow == ""  # the default: nothing private is allowed
    async with running_steplog(settings) as app:
        for base in (endpoint.url, "http://10.1.2.3:8080", "http://169.254.169.254"):
            definition = task({"ApiEndpoint": f"{base}/x", "Method": "GET"}, End=True)
            done = await run(app, eventually, definition, {})
            assert (done["status"], done["error"]) == ("FAILED", "Steplog.Http.Refused"), base
            assert "not allowed" in done["cause"]
    assert endpoint.seen == []  # nothing reached the endpoint


def test_connections_are_parsed_without_echoing_secrets() -> None:
    parsed = parse_connections(CONNECTIONS)
    assert parsed["billing"].headers == {"X-Api-Key": SECRET}
    assert parse_connections("") == {}
    with pytest.raises(ValueError) as bad:
        parse_connections('{"x": {"Headers": {"A": 1}, "Secret": "' + SECRET + '"}}')
    assert SECRET not in str(bad.value)
    with pytest.raises(ValueError):
        Settings(http_connections='{"x": {"Headers": {"Host": "h"}}}')
    assert Settings.from_env({"STEPLOG_HTTP_CONNECTIONS": CONNECTIONS}).http_connections
    assert connection_name("arn:aws:events:eu-west-1:1:connection/stripe/81210c42") == "stripe"
    assert connection_name("stripe") == "stripe"


async def test_the_example_definition_retries_a_503_and_uses_its_connection(
    settings: Settings, endpoint: Endpoint, eventually: Any
) -> None:
    example = Path(__file__).parents[2] / "examples" / "http_task.asl.json"
    connections = json.dumps({"orders-api": {"Headers": {"Authorization": f"Bearer {SECRET}"}}})
    allowed = msgspec.structs.replace(
        settings, outbound_allow="127.0.0.1/32", http_connections=connections
    )
    endpoint.script["/orders/o-1"] = [(503, "busy"), (200, {"id": "o-1"})]
    endpoint.script["/orders/o-2"] = [(404, {"message": "none"})]
    async with running_steplog(allowed) as app:
        await app.register("lookup", json.loads(example.read_text()))
        first = await app.start_id("lookup", {"api": endpoint.url, "order_id": "o-1"})
        second = await app.start_id("lookup", {"api": endpoint.url, "order_id": "o-2"})
        found = await app.ended(eventually, first, 60)
        missing = await app.ended(eventually, second, 60)
    assert found["status"] == "SUCCEEDED", found
    assert found["output"] == {"status": 200, "order": {"id": "o-1"}}
    assert (missing["status"], missing["error"]) == ("FAILED", "NotFound")
    assert {r["headers"]["Authorization"] for r in endpoint.seen} == {f"Bearer {SECRET}"}
    assert all(r["query"] == [("expand", "items")] for r in endpoint.seen)
    assert len(endpoint.seen) == 3  # o-1 twice (503, then 200), o-2 once


async def test_with_tracing_on_the_request_carries_the_attempts_trace(endpoint: Endpoint) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_ON)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    policy = Settings(outbound_allow="127.0.0.1/32").outbound_policy()
    async with Outbound(policy) as outbound:
        handler = HttpInvoke(outbound, {})
        ctx = TaskContext(execution_id="e", state="Call", attempt=0, task_id="3", tracer=tracer)
        with tracer.start_as_current_span("steplog.task") as attempt:
            result = await handler({"ApiEndpoint": f"{endpoint.url}/t", "Method": "GET"}, ctx)
        untraced = TaskContext(execution_id="e", state="Call", attempt=0, task_id="3")
        await handler({"ApiEndpoint": f"{endpoint.url}/u", "Method": "GET"}, untraced)
    assert result["StatusCode"] == 200
    traced, plain = endpoint.seen
    trace_id = f"{attempt.get_span_context().trace_id:032x}"
    assert traced["headers"]["traceparent"].split("-")[1] == trace_id
    assert "traceparent" not in plain["headers"]
    [http_span] = [s for s in exporter.get_finished_spans() if s.name == "steplog.http"]
    assert http_span.parent is not None
    assert http_span.parent.span_id == attempt.get_span_context().span_id


def test_a_failure_cause_stays_under_awss_bound_and_parseable() -> None:
    headers = tuple(("X-Big-" + str(i), "v" * 1000) for i in range(60))
    result = result_of(500, headers, ("é" * 10_000).encode())
    cause = cause_of(result)
    assert len(cause) <= 32768
    shown = json.loads(cause)
    assert shown["StatusCode"] == 500 and shown["Headers"] == {}
    assert shown["ResponseBody"] == "é" * 4096
    small = json.loads(cause_of(result_of(502, (("X-A", "1"),), b"oops")))
    assert small["Headers"] == {"X-A": ["1"]} and small["ResponseBody"] == "oops"
