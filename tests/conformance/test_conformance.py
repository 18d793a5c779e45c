"""Every recorded AWS execution in ../shared/conformance, run through the pure core.

A case listed in known_failures.txt is expected to fail (strict xfail: when it
starts passing, the test fails until the list is updated), so the pass rate can
only go up. Pass rates per group are printed at the end of the run.
"""

from __future__ import annotations

import pytest

from engine.core.asl.compile import compile_definition
from engine.core.inmemory import run_in_memory
from tests.conformance.cases import compare_history, compare_result, load_cases, load_known_failures

CASES = load_cases()
KNOWN = load_known_failures()
RESULTS: dict[str, list[bool]] = {}


def _run(case: dict) -> list[str]:
    definition = compile_definition(case["definition"])
    run = run_in_memory(
        definition,
        case["input"],
        name="conformance",
        workflow="conformance",
        state_machine_type=case.get("state_machine_type", "STANDARD"),
    )
    s = run.state
    problems = compare_result(case, s.status, s.output, s.error, s.cause)
    if not problems:
        problems = compare_history(case, run.events)
    return problems


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_case(case: dict, request: pytest.FixtureRequest) -> None:
    group = case["id"].split("/", 1)[0]
    if case["id"] in KNOWN:
        request.node.add_marker(pytest.mark.xfail(reason=KNOWN[case["id"]], strict=True))
    try:
        problems = _run(case)
    except Exception as exc:  # a crash is a failure of this case, reported as such
        problems = [f"{type(exc).__name__}: {exc}"]
    RESULTS.setdefault(group, []).append(not problems)
    assert not problems, "\n".join(problems)


def test_corpus_is_present() -> None:
    assert len(CASES) == 919
