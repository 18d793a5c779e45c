"""Loading and comparing the recorded AWS cases of ../shared/conformance."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from engine.core import events as ev
from engine.core.asl.jsonvalue import json_equal

# A copy of ../shared/conformance (Apache-2.0, see corpus/NOTICE) lives in the repository
# so that a clean clone tests on its own; STEPLOG_CONFORMANCE_DIR points elsewhere.
CORPUS = Path(os.environ.get("STEPLOG_CONFORMANCE_DIR") or Path(__file__).with_name("corpus"))
KNOWN_FAILURES = Path(__file__).with_name("known_failures.txt")

# AWS names the events of Lambda-backed tasks after Lambda; test:echo cases were
# recorded that way. Ours are the generic Task* events.
_AWS_ALIASES = {
    "LambdaFunctionScheduled": "TaskScheduled",
    "LambdaFunctionSucceeded": "TaskSucceeded",
    "LambdaFunctionFailed": "TaskFailed",
    "LambdaFunctionTimedOut": "TaskTimedOut",
}
# Events AWS records that steplog does not produce (yet): a worker does not report
# the moment it picks up a task, and Map runs have no separate run resource.
_NOT_PRODUCED = {
    "LambdaFunctionStarted",
    "TaskStarted",
    "MapRunStarted",
    "MapRunSucceeded",
    "MapRunFailed",
    "EvaluationFailed",
}


def load_cases() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = []
    for path in sorted((CORPUS / "cases").glob("*.jsonl")):
        with path.open() as f:
            cases.extend(json.loads(line) for line in f if line.strip())
    return cases


def load_known_failures() -> dict[str, str]:
    known: dict[str, str] = {}
    if KNOWN_FAILURES.exists():
        for line in KNOWN_FAILURES.read_text().splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            case_id, _, reason = line.partition(" # ")
            known[case_id.strip()] = reason.strip()
    return known


def _null_paths(value: Any, paths: list[str]) -> Any:
    """Set each JSONPath-style location (``$["a"][0]``) to None, when it exists."""
    value = json.loads(json.dumps(value))
    for path in paths:
        if not path.startswith("$"):
            continue
        keys = (
            json.loads("[" + path[1:].replace("][", ",").strip("[]") + "]") if path != "$" else []
        )
        if not keys:
            return None
        node = value
        for key in keys[:-1]:
            try:
                node = node[key]
            except (KeyError, IndexError, TypeError):
                node = None
                break
        if node is None:
            continue
        try:
            node[keys[-1]] = None
        except (KeyError, IndexError, TypeError):
            pass
    return value


def compare_result(
    case: dict[str, Any], status: str, output: Any, error: Any, cause: Any
) -> list[str]:
    expected = case["expected"]
    problems: list[str] = []
    nondet = set(case.get("nondeterministic_paths", [])) if case.get("nondeterministic") else set()
    if status != expected["status"]:
        problems.append(
            f"status {status} != {expected['status']} (error={error!r} cause={cause!r})"
        )
        return problems
    if status == "SUCCEEDED":
        paths = [p for p in nondet if p.startswith("$")]
        want = _null_paths(expected.get("output"), paths)
        got = _null_paths(output, paths)
        if not json_equal(got, want):
            problems.append(f"output {json.dumps(output)} != {json.dumps(expected.get('output'))}")
    else:
        if "error" not in nondet and (error or None) != expected.get("error"):
            problems.append(f"error {error!r} != {expected.get('error')!r}")
        if "cause" not in nondet and (cause or None) != expected.get("cause"):
            problems.append(f"cause {cause!r} != {expected.get('cause')!r}")
    return problems


def compare_history(case: dict[str, Any], produced: list[ev.Event]) -> list[str]:
    if not case.get("history"):
        return []
    want = [_AWS_ALIASES.get(h["type"], h["type"]) for h in case["history"]]
    want = [t for t in want if t not in _NOT_PRODUCED]
    got = [ev.event_type(e) for e in ev.aws_history(produced)]
    features = set(case.get("features", []))
    if "state:Map" in features or "state:Parallel" in features:
        # Branches and iterations run concurrently on AWS: their events interleave
        # in an order that is not part of the contract. Compare the multiset.
        if Counter(got) != Counter(want):
            return [f"history types (as multiset) {got} != {want}"]
        return []
    if got != want:
        return [f"history types {got} != {want}"]
    return []
