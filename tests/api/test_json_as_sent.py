"""JSON kept as sent, one rendering everywhere (issue 9, item 5), through the whole stack.

An execution's input keeps its key order and number spelling byte for byte in the
start reply, GET, the listing, the stop reply, the history, the live feed and the
export; intrinsics over it give AWS's strings; a NUL character in input or produced
by an intrinsic is stored and the execution ends; every timestamp is RFC 3339 UTC
with milliseconds and a Z.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from steplog.settings import Settings
from tests.serving import Running, running_steplog

# The example: jsonb read it back as {"n":11,"id":1,"beta":"x"}.
AWS_INPUT = b'{"id":1,"beta":"x","n":11}'
# Number spellings a decoded value cannot keep (1e2 is 100.0 in Python).
SPELLED_INPUT = b'{"zeta":1.50,"alpha":1e2,"big":1e308,"neg":-0,"s":"\\u00e9"}'

FORMATS: dict[str, Any] = {
    "Comment": "the order of these keys is kept too",
    "StartAt": "Fmt",
    "States": {
        "Fmt": {
            "Type": "Pass",
            "Parameters": {
                "json.$": "States.JsonToString($)",
                "fmt.$": "States.Format('{}', $)",
                "input.$": "$",
            },
            "End": True,
        }
    },
}
WAITER: dict[str, Any] = {
    "StartAt": "Hold",
    "States": {"Hold": {"Type": "Wait", "Seconds": 60, "End": True}},
}
# A NUL made by an intrinsic, used as a state's output, an error and a cause, under a
# state name that holds one too.
# A NUL inside a definition is refused at registration (tests/api/test_boundary.py);
# one made by an intrinsic at run time is data like any other.
NUL_MAKER: dict[str, Any] = {
    "StartAt": "MakeIt",
    "States": {
        "MakeIt": {
            "Type": "Pass",
            "Parameters": {"made.$": "States.StringToJson($.text)"},
            "Next": "Boom",
        },
        "Boom": {"Type": "Fail", "ErrorPath": "$.made.k", "CausePath": "$.made.k"},
    },
}
MILLIS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
SSE = {"Accept": "text/event-stream"}


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[Running]:
    async with running_steplog(settings) as running:
        for name, definition in (("formats", FORMATS), ("waiter", WAITER), ("nul", NUL_MAKER)):
            await running.register(name, definition)
        yield running


async def _raw(app: Running, method: str, path: str, body: bytes | None = None) -> bytes:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    async with app.http.request(method, app.base_url + path, data=body, headers=headers) as resp:
        assert resp.status in (200, 201), await resp.text()
        return await resp.read()


async def _start_raw(app: Running, workflow: str, input_json: bytes) -> tuple[str, bytes]:
    body = await _raw(
        app, "POST", f"/v1/workflows/{workflow}/executions", b'{"input":' + input_json + b"}"
    )
    return str(msgspec.json.decode(body)["execution_id"]), body


async def _projected(app: Running, eventually: Any, eid: str, status: str) -> None:
    async def listed() -> bool:
        body = msgspec.json.decode(await _raw(app, "GET", "/v1/executions?limit=100"))
        return any(e["execution_id"] == eid and e["status"] == status for e in body["executions"])

    await eventually(listed, timeout_s=15)


def _sse_data(stream: bytes) -> list[bytes]:
    return [line[len(b"data: ") :] for line in stream.split(b"\n") if line.startswith(b"data: ")]


def _timestamps(value: Any) -> list[str]:
    """Every value of a key ending in _at, or named timestamp/created_at, in ``value``."""
    found: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if (key.endswith("_at") or key in ("timestamp", "entered_time")) and item is not None:
                found.append(item)
            else:
                found += _timestamps(item)
    elif isinstance(value, list):
        for item in value:
            found += _timestamps(item)
    return found


async def test_intrinsics_over_the_input_give_aws_strings(app: Running, eventually: Any) -> None:
    eid, _ = await _start_raw(app, "formats", AWS_INPUT)
    body = await app.ended(eventually, eid)
    assert body["status"] == "SUCCEEDED"
    # AWS keeps the order it was given (jsonb gave {n=11, id=1, beta=x}).
    assert body["output"]["json"] == '{"id":1,"beta":"x","n":11}'
    assert body["output"]["fmt"] == "{id=1, beta=x, n=11}"
    raw = await _raw(app, "GET", f"/v1/executions/{eid}")
    assert b'"output":{"json":"{\\"id\\":1,\\"beta\\":\\"x\\",\\"n\\":11}"' in raw
    assert b'"input":' + AWS_INPUT in raw
    # The definition comes back as registered: same key order (jsonb: shortest first).
    definition = await _raw(app, "GET", "/v1/workflows/formats")
    assert b'"definition":' + msgspec.json.encode(FORMATS) in definition


async def test_one_rendering_of_the_input_on_every_route(app: Running, eventually: Any) -> None:
    eid, started = await _start_raw(app, "waiter", SPELLED_INPUT)
    shown = b'"input":' + SPELLED_INPUT
    assert shown in started
    await _projected(app, eventually, eid, "RUNNING")
    assert shown in await _raw(app, "GET", f"/v1/executions/{eid}")
    listing = await _raw(app, "GET", "/v1/executions?workflow=waiter")
    assert shown in listing

    stopped = await _raw(app, "POST", f"/v1/executions/{eid}/stop", b"{}")
    assert shown in stopped and b'"status":"ABORTED"' in stopped
    await _projected(app, eventually, eid, "ABORTED")
    assert shown in await _raw(app, "GET", f"/v1/executions/{eid}")

    history = await _raw(app, "GET", f"/v1/executions/{eid}/history")
    assert b'"details":{' + shown in history  # ExecutionStarted's details
    export = await _raw(app, "GET", f"/v1/executions/{eid}/history.jsonl")
    first_line = export.split(b"\n")[0]
    assert b'"details":{' + shown in first_line
    async with app.http.get(f"{app.base_url}/v1/executions/{eid}/events", headers=SSE) as resp:
        feed = _sse_data(await resp.read())
    assert b'"details":{' + shown in feed[0]
    # The same event is the same bytes in the history page, the export and the feed.
    page_events = msgspec.json.decode(history)["events"]
    assert len(feed) == len(page_events)
    for data in feed:
        assert data in history

    # Timestamps: RFC 3339 UTC with milliseconds and a Z, everywhere.
    stamps = [
        *_timestamps(msgspec.json.decode(started)),
        *_timestamps(msgspec.json.decode(stopped)),
        *_timestamps(msgspec.json.decode(listing)),
        *_timestamps(page_events),
        *_timestamps(msgspec.json.decode(await _raw(app, "GET", f"/v1/executions/{eid}/state"))),
        *_timestamps(msgspec.json.decode(await _raw(app, "GET", "/v1/workflows/waiter"))),
    ]
    assert len(stamps) >= 8 and all(MILLIS.match(s) for s in stamps), stamps


async def test_a_nul_in_input_or_made_by_an_intrinsic_is_kept_and_the_execution_ends(
    app: Running, eventually: Any
) -> None:
    made = msgspec.json.encode({"text": '{"k": "a\\u0000b"}', "given": "x\u0000y"})
    assert b'"x\\u0000y"' in made
    eid, started = await _start_raw(app, "nul", made)
    assert b'"input":' + made in started
    body = await app.ended(eventually, eid)
    assert (body["status"], body["error"], body["cause"]) == ("FAILED", "a\x00b", "a\x00b")
    assert body["input"]["given"] == "x\x00y"
    await _projected(app, eventually, eid, "FAILED")
    projected = msgspec.json.decode(await _raw(app, "GET", f"/v1/executions/{eid}"))
    assert (projected["error"], projected["cause"]) == ("a\x00b", "a\x00b")
    history = msgspec.json.decode(await _raw(app, "GET", f"/v1/executions/{eid}/history"))
    exited = [e for e in history["events"] if e["type"] == "PassStateExited"]
    assert exited[0]["details"]["name"] == "MakeIt"
    assert exited[0]["details"]["output"]["made"] == {"k": "a\x00b"}

    # The statistics projection got past it too.
    async def counted() -> Any:
        stats = msgspec.json.decode(await _raw(app, "GET", "/v1/workflows/nul/stats"))
        names = {s["name"]: s for s in stats["states"]}
        return names if "Boom" in names else None

    names = await eventually(counted, timeout_s=15)
    assert names["MakeIt"]["succeeded"] == 1 and names["Boom"]["failed"] == 1
