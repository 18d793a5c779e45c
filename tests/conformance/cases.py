"""Loading and comparing the recorded AWS cases of ../shared/conformance."""

from __future__ import annotations

import json
import os
import re
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


def load_known_failures(path: Path = KNOWN_FAILURES) -> dict[str, str]:
    """``<case id> # <reason>`` lines of ``path`` (blank lines and ``#`` comments aside)."""
    known: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
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


# What each recorder placeholder stands for (corpus README, "Normalization"). A value at
# a nondeterministic location must have the shape AWS's value had: an execution ARN
# must be an ARN of the AWS form, not merely any string. A placeholder that occurs more
# than once in a case stands for one value (the machine name in $$.StateMachine.Name is
# the one in $$.StateMachine.Id and in $$.Execution.Id).
_TIMESTAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d(?::\d\d(?:\.\d+)?)?(?:Z|[+-]\d\d:?\d\d)?"
_NAME = r"[^\s:]{1,80}"
_PLACEHOLDERS: dict[str, str] = {
    "<partition>": r"aws(?:-[a-z]+)*",
    "<region>": r"[a-z]{2}(?:-[a-z]+)+-\d+",
    "111111111111": r"\d{12}",
    "<ArnPart_0idx>": _NAME,
    "<ExecArnPart_0idx>": _NAME,
    "<SyncExecArn_Part1_0idx>": _NAME,
    "<SyncExecArn_Part2_0idx>": _NAME,
    "snf_role_arn": r"arn:aws(?:-[a-z]+)*:iam::\d{12}:role/[\w+=,.@/-]+",
    "sfn_role_arn": r"arn:aws(?:-[a-z]+)*:iam::\d{12}:role/[\w+=,.@/-]+",
    "date": _TIMESTAMP,
    "start-time": _TIMESTAMP,
    "entered-time": _TIMESTAMP,
    "<timestamp>": r"[^\s]+",
    "<uuid:1>": r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
    "<json-input:1>": r".+",
}
# Placeholders the recorder wrote for every value of a kind, not for one value: each
# occurrence stands for its own (the start and a state's entry are both "date").
_UNBOUND = {"date", "start-time", "entered-time", "<timestamp>", "<json-input:1>"}
# A whole value the recorder replaced that was not a string.
_NUMBER_PLACEHOLDERS = {"RandomNumberGenerated"}


def _placeholder_pattern(want: str, bindings: dict[str, str]) -> tuple[re.Pattern[str], list[str]]:
    """A regex for ``want`` with each placeholder as a group (or as the value it was
    already bound to), and the placeholders in group order."""
    tokens = sorted(_PLACEHOLDERS, key=len, reverse=True)
    splitter = re.compile(
        "|".join(
            rf"(?<![\w-]){re.escape(t)}(?![\w-])" if t[0].isalnum() else re.escape(t)
            for t in tokens
        )
    )
    parts: list[str] = []
    order: list[str] = []
    seen: dict[str, int] = {}
    last = 0
    for m in splitter.finditer(want):
        parts.append(re.escape(want[last : m.start()]))
        token = m.group(0)
        if token in _UNBOUND:
            parts.append(f"(?:{_PLACEHOLDERS[token]})")
        elif token in bindings:
            parts.append(re.escape(bindings[token]))
        elif token in seen:
            parts.append(f"(?P=g{seen[token]})")
        else:
            seen[token] = len(order)
            parts.append(f"(?P<g{len(order)}>{_PLACEHOLDERS[token]})")
            order.append(token)
        last = m.end()
    parts.append(re.escape(want[last:]))
    return re.compile("".join(parts), re.DOTALL), order


def placeholder_match(want: Any, got: Any, bindings: dict[str, str]) -> bool:
    """Whether ``got`` is a value AWS could have recorded as ``want`` (a string with
    recorder placeholders), binding each placeholder to what it stands for."""
    if isinstance(want, str) and want in _NUMBER_PLACEHOLDERS:
        return isinstance(got, int | float) and not isinstance(got, bool)
    if not isinstance(want, str) or not isinstance(got, str):
        return json_equal(want, got)
    pattern, order = _placeholder_pattern(want, bindings)
    m = pattern.fullmatch(got)
    if m is None:
        return False
    for index, token in enumerate(order):
        bindings[token] = m.group(f"g{index}")
    return True


def _at_path(value: Any, path: str) -> tuple[bool, Any]:
    """(found, value) at a JSONPath-style location (``$["a"][0]``)."""
    keys = json.loads("[" + path[1:].replace("][", ",").strip("[]") + "]") if path != "$" else []
    for key in keys:
        try:
            value = value[key]
        except (KeyError, IndexError, TypeError):
            return False, None
    return True, value


def compare_result(
    case: dict[str, Any], status: str, output: Any, error: Any, cause: Any
) -> list[str]:
    expected = case["expected"]
    problems: list[str] = []
    nondet = set(case.get("nondeterministic_paths", [])) if case.get("nondeterministic") else set()
    bindings: dict[str, str] = {}
    if status != expected["status"]:
        problems.append(
            f"status {status} != {expected['status']} (error={error!r} cause={cause!r})"
        )
        return problems
    if status == "SUCCEEDED":
        # Placeholders first, shortest paths last, so that a value is checked before an
        # enclosing location is nulled.
        paths = sorted((p for p in nondet if p.startswith("$")), key=len, reverse=True)
        for path in paths:
            found_want, want_value = _at_path(expected.get("output"), path)
            found_got, got_value = _at_path(output, path)
            if found_want and not (
                found_got and placeholder_match(want_value, got_value, bindings)
            ):
                problems.append(f"at {path}: {got_value!r} is not of the form {want_value!r}")
        want = _null_paths(expected.get("output"), paths)
        got = _null_paths(output, paths)
        if not json_equal(got, want):
            problems.append(f"output {json.dumps(output)} != {json.dumps(expected.get('output'))}")
    else:
        for field, value in (("error", error), ("cause", cause)):
            want_value = expected.get(field)
            if field in nondet and want_value is not None:
                if value is None or not placeholder_match(want_value, value, bindings):
                    problems.append(f"{field} {value!r} is not of the form {want_value!r}")
            elif (value or None) != want_value:
                problems.append(f"{field} {value!r} != {want_value!r}")
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
