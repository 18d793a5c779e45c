"""Issue 9, item 2: fuzzing the HTTP API.

- schemathesis (examples, coverage, fuzzing and stateful phases, the latter
  following the OpenAPI links) against a whole steplog served by this test
  session, driven from its CLI in a subprocess (its requests are blocking; the
  server runs on this session's event loop): zero 5xx, zero responses outside the
  published schema, in a bounded run.
- hypothesis: random definitions and inputs sent through HTTP; every answer is a
  documented status with a JSON body, and an execution started ends.

Cases these found are kept as regular tests in test_boundary.py.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from steplog.settings import Settings
from tests.api.helpers import PASS_DEFINITION
from tests.serving import Running, running_steplog

# Bounds of the schemathesis run: per operation, and a time budget for the whole run.
MAX_EXAMPLES = 40
MAX_TIME_S = 120
CHECKS = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
        "missing_required_header",
        "unsupported_method",
        "use_after_free",
        "ensure_resource_availability",
    )
)


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[Running]:
    # Authentication on: the fuzzer sends a namespace admin key, and also learns that a
    # request without it is refused (401), as the published security scheme says.
    # No webhooks role: the fuzzer's subscriptions name random hosts, and what the API
    # answers is the subject here (tests/api/test_webhooks_api.py covers deliveries).
    roles = ("api", "engine", "worker", "projector")
    async with running_steplog(
        msgspec.structs.replace(settings, auth=True, roles=roles)
    ) as running:
        await running.register("seeded", PASS_DEFINITION)
        yield running


@pytest.mark.timeout(MAX_TIME_S + 120)
async def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    app: Running, tmp_path: Path
) -> None:
    st_cli = Path(sys.executable).with_name("st")
    # An activity poll waits up to 60 s for a task (GetActivityTask's long poll): the
    # fuzzer polls without waiting, so an activity it created itself does not hang it.
    (tmp_path / "schemathesis.toml").write_text(
        '[[operations]]\ninclude-operation-id = "pollActivity"\nparameters = { "query.wait" = 0 }\n'
    )
    process = await asyncio.create_subprocess_exec(
        str(st_cli),
        "run",
        f"{app.base_url}/v1/openapi.json",
        f"--checks={CHECKS}",
        f"--max-examples={MAX_EXAMPLES}",
        f"--header=Authorization: Bearer {app.key}",
        f"--max-time={MAX_TIME_S}",
        "--phases=examples,coverage,fuzzing,stateful",
        # One worker: hypothesis's lambda descriptions (ast.parse) are not thread-safe
        # on Python 3.11 ("AST constructor recursion depth mismatch").
        "--workers=1",
        "--seed=9",
        "--request-timeout=10",
        "--suppress-health-check=all",
        "--warnings=off",
        # The live feed of a RUNNING execution streams until it ends: excluded here,
        # its refusals are covered by test_boundary and test_audit_stack.
        "--exclude-operation-id=getEventFeed",
        f"--report-dir={tmp_path}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "NO_COLOR": "1", "HOME": str(tmp_path)},
    )
    out, _ = await asyncio.wait_for(process.communicate(), MAX_TIME_S + 90)
    report = out.decode(errors="replace")
    print(report[report.rfind("SUMMARY") :])  # shown with -rP: operations, phases, counts
    assert process.returncode == 0, report[-20000:]


# --- hypothesis: random definitions and inputs through HTTP ------------------------

_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    _json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
_PATHS = ["$", "$.x", "$.a.b", "$.missing", "$[0]", "$$.Execution.Id"]
_INTRINSICS = [
    "States.Format('{} and {}', $.x, $.a)",
    "States.JsonToString($)",
    "States.StringToJson($.x)",
    "States.ArrayLength($.x)",
    "States.MathAdd($.x, 1)",
    "States.Array($.x, $.a)",
    "States.Hash($.x, 'SHA-256')",
]


@st.composite
def _machines(draw: st.DrawFn) -> dict[str, Any]:
    """A chain of states that mostly validates: Pass (with paths, results and
    intrinsics), Wait 0, Choice, then Succeed, Fail or End."""
    count = draw(st.integers(1, 4))
    names = [f"S{i}" for i in range(count)]
    states: dict[str, Any] = {}
    for i, name in enumerate(names):
        last = i == count - 1
        kind = draw(
            st.sampled_from(
                ["Pass", "Wait", "Choice", "Succeed", "Fail"]
                if last
                else ["Pass", "Wait", "Choice"]
            )
        )
        follow: dict[str, Any] = {"End": True} if last else {"Next": names[i + 1]}
        if kind == "Pass":
            state: dict[str, Any] = {"Type": "Pass", **follow}
            if draw(st.booleans()):
                state["Result"] = draw(json_values)
            if draw(st.booleans()):
                state["Parameters"] = {
                    "v.$": draw(st.sampled_from(_PATHS + _INTRINSICS)),
                    "k": draw(json_values),
                }
            for field in ("InputPath", "ResultPath", "OutputPath"):
                if draw(st.integers(0, 3)) == 0:
                    state[field] = draw(st.sampled_from(_PATHS))
        elif kind == "Wait":
            state = {"Type": "Wait", "Seconds": 0, **follow}
        elif kind == "Choice":
            target = names[i + 1] if not last else name + "End"
            state = {
                "Type": "Choice",
                "Choices": [{"Variable": "$.x", "IsPresent": True, "Next": target}],
                "Default": target,
            }
            if last:
                states[target] = {"Type": "Succeed"}
        elif kind == "Fail":
            state = {"Type": "Fail", "Error": draw(st.text(max_size=8)), "Cause": "fuzz"}
        else:
            state = {"Type": "Succeed"}
        states[name] = state
    return {"StartAt": names[0], "States": states}


# Mostly machines that validate; some that do not, and some that are not machines.
definitions = (
    _machines()
    | _machines().map(lambda m: {**m, "StartAt": "Nowhere"})
    | st.dictionaries(st.text(max_size=6), json_values, max_size=3)
)
inputs = st.dictionaries(st.sampled_from(["x", "a", "b"]), json_values, max_size=3) | json_values

DOCUMENTED = {200, 201, 400, 404, 409, 413, 415, 422}


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
async def test_random_definitions_and_inputs_get_documented_answers(
    app: Running, eventually: Any, data: st.DataObject
) -> None:
    definition = data.draw(definitions, label="definition")
    status, body = await app.call("PUT", "/v1/workflows/fuzzed", {"definition": definition})
    assert status in DOCUMENTED and status < 500, body
    assert isinstance(body, dict)
    if status not in (200, 201):
        assert body["code"] in {"invalid_definition", "invalid_body", "invalid_request"}, body
        return
    payload = data.draw(inputs, label="input")
    status, body = await app.start("fuzzed", payload)
    assert status in DOCUMENTED and status < 500, body
    if status == 201:
        ended = await app.ended(eventually, body["execution_id"], timeout_s=20)
        assert ended["status"] in {"SUCCEEDED", "FAILED", "TIMED_OUT"}, ended
