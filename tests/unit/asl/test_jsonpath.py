"""JSONPath (Jayway flavour), InputPath/OutputPath and ResultPath semantics.

Expected values and messages come from ../shared/conformance recordings.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.core.asl.errors import RESULT_PATH_MATCH_FAILURE, RUNTIME, StatesError
from engine.core.asl.jsonpath import (
    PathNotFound,
    PathSyntaxError,
    apply_path,
    compile_path,
    java_str,
    set_result,
)

ITEMS = {"items": [{"item_key": i} for i in range(11)]}
USERS = {"users": [{"year": 1997, "status": 0}, {"year": 1998, "status": 1}]}


@pytest.mark.parametrize(
    ("path", "data", "expected"),
    [
        ("$", {"a": 1}, {"a": 1}),
        ("$.items[0]", ITEMS, {"item_key": 0}),
        ("$.items[10]", ITEMS, {"item_key": 10}),
        ("$.items[-1]", ITEMS, {"item_key": 10}),
        ("$.delivery-partner", {"delivery-partner": "x"}, "x"),
        ("$['a b']", {"a b": 2}, 2),
        # Recorded: a backslash inside brackets stays literal.
        ('$[\'Test\\""Name"\']', {'Test\\""Name"': 'Value"\\'}, 'Value"\\'),
    ],
)
def test_definite_paths_select_one_value(path: str, data: Any, expected: Any) -> None:
    assert compile_path(path).evaluate(data) == expected


@pytest.mark.parametrize(
    ("path", "data", "expected"),
    [
        # base/test_state_pass_regex_json_path_base
        ("$.users[?(@.status == 0)]", USERS, [{"year": 1997, "status": 0}]),
        ("$.users[?(@.year > 1997 && @.status == 1)].year", USERS, [1998]),
        ("$.users[?(@.year<1998 || @.status==1)].year", USERS, [1997, 1998]),
        ("$.users[?(!(@.status == 0))].year", USERS, [1998]),
        ("$.users[?(@.status != true)].year", USERS, [1997, 1998]),
        ("$.users[?(@.year)].status", USERS, [0, 1]),
        ("$.users[*].year", USERS, [1997, 1998]),
        ("$..year", USERS, [1997, 1998]),
        ("$.users[0,1].status", USERS, [0, 1]),
        ("$.items[1:3].item_key", ITEMS, [1, 2]),
        ("$.items[:1].item_key", ITEMS, [0]),
        ("$.items[-2:].item_key", ITEMS, [9, 10]),
        ("$.items[(@.length-1)].item_key", ITEMS, [10]),
        ("$.a[?(@.n =~ /x.*/)].n", {"a": [{"n": "xy"}, {"n": "y"}]}, ["xy"]),
        ("$.a[?(@.n in ['y', 'z'])].n", {"a": [{"n": "xy"}, {"n": "y"}]}, ["y"]),
        # base/test_json_path_array_wildcard_or_slice_with_no_input: empty, no error
        ("$[*]", {}, []),
        ("$.items[*]", {}, []),
        ("$.items[1:]", {}, []),
        ("$.item.items[1:5].itemValue", {}, []),
    ],
)
def test_indefinite_paths_return_lists(path: str, data: Any, expected: Any) -> None:
    assert compile_path(path).evaluate(data) == expected


@pytest.mark.parametrize(
    ("path", "data", "message"),
    [
        ("$.NoSuchInputPath", {}, "No results for path: $['NoSuchInputPath']"),
        ("$.no.such.result.path", {}, "Missing property in path $['no']"),
        ("$.a.c", {"a": {}}, "No results for path: $['a']['c']"),
        ("$.items[20]", ITEMS, "No results for path: $['items'][20]"),
        (
            "$.a[0]",
            {"a": {"b": 1}},
            "Filter: [0] can only be applied to arrays. Current context is: {b=1}",
        ),
    ],
)
def test_definite_paths_that_find_nothing_raise_jayway_messages(
    path: str, data: Any, message: str
) -> None:
    with pytest.raises(PathNotFound) as info:
        compile_path(path).evaluate(data)
    assert str(info.value) == message


def test_context_and_variable_roots() -> None:
    ctx = {"Execution": {"Input": {"x": 1}}, "Map": {"Item": {"Value": "v"}}}
    assert compile_path("$$.Map.Item.Value").evaluate({}, ctx) == "v"
    assert compile_path("$$").evaluate({}, ctx) is ctx
    p = compile_path("$constant_obj.in_obj_constant_lst")
    assert p.variable == "constant_obj"
    assert p.evaluate({}, None, {"constant_obj": {"in_obj_constant_lst": [1]}}) == [1]
    with pytest.raises(PathNotFound):
        p.evaluate({}, None, {})


def test_path_flags() -> None:
    assert compile_path("$$.Execution.Id").is_context
    assert not compile_path("$.a").is_context
    assert compile_path("$.a['b'][0]").is_reference
    assert not compile_path("$.a[*]").is_reference
    assert not compile_path("$x.a").is_reference
    assert not compile_path("$.a[?(@.b)]").is_definite


@pytest.mark.parametrize("bad", ["", "a.b", "$.", "$[", "$.a[?(@.b ==)]", "$['x", "$.a[1:2:0]"])
def test_bad_syntax_is_rejected_at_compile_time(bad: str) -> None:
    with pytest.raises(PathSyntaxError):
        compile_path(bad)


def test_evaluate_returns_values_by_reference() -> None:
    data = {"a": {"b": [1]}}
    assert compile_path("$.a.b").evaluate(data) is data["a"]["b"]


# ---- InputPath / OutputPath ------------------------------------------------


def test_apply_path_wording_matches_aws() -> None:
    # scenarios/test_invalid_jsonpath: "Invalid path '$.NoSuchInputPath' : ..."
    with pytest.raises(StatesError) as info:
        apply_path(compile_path("$.NoSuchOutputPath"), {"int-literal": 0})
    assert info.value.error == RUNTIME
    assert info.value.cause == (
        "Invalid path '$.NoSuchOutputPath' : No results for path: $['NoSuchOutputPath']"
    )
    with pytest.raises(StatesError) as info:
        apply_path(compile_path("$.no.such.result.path"), {})
    assert info.value.cause == (
        "Invalid path '$.no.such.result.path' : Missing property in path $['no']"
    )


def test_apply_path_null_gives_empty_object() -> None:
    assert apply_path(None, {"a": 1}) == {}


# ---- ResultPath ----------------------------------------------------------------


def test_result_path_null_discards_result() -> None:
    data = {"a": 1}
    assert set_result(data, None, {"r": 1}) is data


def test_result_path_root_replaces_input() -> None:
    assert set_result({"a": 1}, compile_path("$"), [1, 2]) == [1, 2]


def test_result_path_creates_missing_objects_without_mutating_input() -> None:
    data = {"a": {"keep": 1}, "other": {"x": 1}}
    out = set_result(data, compile_path("$.a.b.c"), 5)
    assert out == {"a": {"keep": 1, "b": {"c": 5}}, "other": {"x": 1}}
    assert data == {"a": {"keep": 1}, "other": {"x": 1}}
    assert out["other"] is data["other"]  # only the path is copied


def test_result_path_into_array_element() -> None:
    data = {"a": [{"x": 1}, {"x": 2}]}
    assert set_result(data, compile_path("$.a[1].y"), 3) == {"a": [{"x": 1}, {"x": 2, "y": 3}]}
    assert data["a"][1] == {"x": 2}


@pytest.mark.parametrize(
    ("data", "path"),
    [({"a": "x"}, "$.a.c"), ("text", "$.a"), ({"a": [1]}, "$.a[3]"), ({"a": 1}, "$.a[0]")],
)
def test_result_path_through_a_non_object_fails(data: Any, path: str) -> None:
    with pytest.raises(StatesError) as info:
        set_result(data, compile_path(path), 1)
    assert info.value.error == RESULT_PATH_MATCH_FAILURE
    assert info.value.cause.startswith(f"Unable to apply ReferencePath {path} to input ")


def test_result_path_rejects_non_reference_paths() -> None:
    with pytest.raises(PathSyntaxError):
        set_result({}, compile_path("$.a[*]"), 1)


def test_java_str_renders_like_java_collections() -> None:
    value = {"a": [1, 2.5, None, True, {"b": "c"}], "f": 1e20, "g": 1.0}
    assert java_str(value) == "{a=[1, 2.5, null, true, {b=c}], f=1.0E20, g=1.0}"


# ---- properties ---------------------------------------------------------------

_keys = st.text(alphabet="abcdefgh_", min_size=1, max_size=4)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_keys, children, max_size=3),
    max_leaves=10,
)


@given(
    data=st.dictionaries(_keys, _json, max_size=4),
    keys=st.lists(_keys, min_size=1, max_size=3),
    value=_json,
)
def test_result_path_then_output_path_reads_back_the_result(
    data: dict[str, Any], keys: list[str], value: Any
) -> None:
    path = compile_path("$." + ".".join(keys))
    try:
        out = set_result(data, path, value)
    except StatesError as exc:
        assert exc.error == RESULT_PATH_MATCH_FAILURE
        return
    assert apply_path(path, out) == value
    # Every other top-level member is untouched.
    for k in data:
        if k != keys[0]:
            assert out[k] is data[k]


@given(data=_json)
def test_root_path_is_identity(data: Any) -> None:
    assert compile_path("$").evaluate(data) is data
    assert set_result(data, compile_path("$"), data) is data
