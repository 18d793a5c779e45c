"""States.* intrinsic functions: values recorded from AWS, failures, properties."""

from __future__ import annotations

import json
import random
import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.core.asl.context import EvalEnv
from engine.core.asl.errors import INTRINSIC_FAILURE, StatesError
from engine.core.asl.intrinsics import (
    ArgumentPathNotFound,
    IntrinsicSyntaxError,
    compile_intrinsic,
    is_intrinsic,
)


def run(text: str, data: Any = None, context: Any = None, env: EvalEnv | None = None) -> Any:
    return compile_intrinsic(text).evaluate(data, context, env or EvalEnv())


def pair(fst: Any, snd: Any, trd: Any = None) -> dict[str, Any]:
    return {"FunctionInput": {"fst": fst, "snd": snd, "trd": trd}}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", "Formatting argument ."),
        (None, "Formatting argument null."),
        (1, "Formatting argument 1."),
        (1.1, "Formatting argument 1.1."),
        ('{"Arg1": 1, "Arg2": []}', 'Formatting argument {"Arg1": 1, "Arg2": []}.'),
        ({"Arg1": 1, "Arg2": []}, "Formatting argument {Arg1=1, Arg2=[]}."),
    ],
)
def test_format(value: Any, expected: str) -> None:
    # intrinsic_functions/test_format_1, test_format_2
    assert (
        run("States.Format('Formatting argument {}.', $.FunctionInput)", {"FunctionInput": value})
        == expected
    )


def test_format_with_context_object_and_escapes() -> None:
    ctx = {"Execution": {"Name": "exec"}, "StateMachine": {"Id": "arn", "Name": "sm"}}
    assert (
        run("States.Format('fst={} and snd={}.', $$.Execution.Name, $$.StateMachine)", {}, ctx)
        == "fst=exec and snd={Id=arn, Name=sm}."
    )
    assert run("States.Format('\\{} {} it\\'s \\\\', 'x')") == "{} x it's \\"


def test_format_argument_count_mismatch_fails() -> None:
    with pytest.raises(StatesError) as info:
        run("States.Format('{} {}', 1)")
    assert info.value.error == INTRINSIC_FAILURE


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", None),
        (" ", None),
        ("null", None),
        ("-0", 0),
        ("1", 1),
        ("1.1", 1.1),
        ("true", True),
        ('"HelloWorld"', "HelloWorld"),
        ('[1, 2, "HelloWorld"]', [1, 2, "HelloWorld"]),
        ('{"Arg1": 1, "Arg2": []}', {"Arg1": 1, "Arg2": []}),
    ],
)
def test_string_to_json(text: str, expected: Any) -> None:
    assert run("States.StringToJson($.FunctionInput)", {"FunctionInput": text}) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "null"),
        (0, "0"),
        (1.1, "1.1"),
        (True, "true"),
        ("HelloWorld", '"HelloWorld"'),
        ([1, 2, "HelloWorld"], '[1,2,"HelloWorld"]'),
        ({"Arg1": 1, "Arg2": []}, '{"Arg1":1,"Arg2":[]}'),
    ],
)
def test_json_to_string(value: Any, expected: str) -> None:
    assert run("States.JsonToString($.FunctionInput)", {"FunctionInput": value}) == expected


def test_array() -> None:
    assert run("States.Array()") == []
    assert run("States.Array('a', 1, 1.5, true, null, $.x)", {"x": {"k": []}}) == [
        "a",
        1,
        1.5,
        True,
        None,
        {"k": []},
    ]


@pytest.mark.parametrize(
    ("arr", "size", "expected"),
    [
        ([], 1, []),
        ([0], 5, [[0]]),
        ([0, 1, 2], 2, [[0, 1], [2]]),
        ([0, 1, 2, 3], 3, [[0, 1, 2], [3]]),
    ],
)
def test_array_partition(arr: list[Any], size: int, expected: Any) -> None:
    assert (
        run("States.ArrayPartition($.FunctionInput.fst, $.FunctionInput.snd)", pair(arr, size))
        == expected
    )


@pytest.mark.parametrize(
    ("arr", "item", "expected"),
    [
        ([], None, False),
        ([[1, 2, 3], 2], [1, 2, 3], True),
        ([{"1": 2, "2": []}], [], False),
        ([{"1": 2, "2": []}], {"1": 2, "2": []}, True),
        ([True, False], False, True),
        ([1], True, False),
    ],
)
def test_array_contains(arr: list[Any], item: Any, expected: bool) -> None:
    assert (
        run("States.ArrayContains($.FunctionInput.fst, $.FunctionInput.snd)", pair(arr, item))
        is expected
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((0, 9, 3), [0, 3, 6, 9]),
        ((0, 10, 3), [0, 3, 6, 9]),
        ((1, 9, 9), [1]),
        ((1, 9, 2), [1, 3, 5, 7, 9]),
        ((5, 1, -2), [5, 3, 1]),
    ],
)
def test_array_range(args: tuple[int, int, int], expected: list[int]) -> None:
    assert (
        run(
            "States.ArrayRange($.FunctionInput.fst, $.FunctionInput.snd, $.FunctionInput.trd)",
            pair(*args),
        )
        == expected
    )


def test_array_range_limits() -> None:
    with pytest.raises(StatesError):
        run("States.ArrayRange(0, 5000, 1)")
    with pytest.raises(StatesError):
        run("States.ArrayRange(0, 5, 0)")


def test_array_get_item_length_unique() -> None:
    assert run("States.ArrayGetItem($.a, 5)", {"a": [1, 2, 3, 4, 5, 6, 7, 8, 9]}) == 6
    assert run("States.ArrayLength($.a)", {"a": [1, 2, 3]}) == 3
    dupes = [None, None, True, True, 1, 1, 1.1, "a", "a", [], [], {"a": 1}, {"a": 1}, {"a": 2}]
    assert run("States.ArrayUnique($.a)", {"a": dupes}) == [
        None,
        True,
        1,
        1.1,
        "a",
        [],
        {"a": 1},
        {"a": 2},
    ]
    with pytest.raises(StatesError) as info:
        run("States.ArrayGetItem($.a, 3)", {"a": [1]})
    assert info.value.error == INTRINSIC_FAILURE


def test_nested_calls() -> None:
    # intrinsic_functions/test_nested_calls_2
    text = (
        "States.ArrayGetItem(States.StringSplit($$.StateMachine.Name, '-'), "
        "States.MathAdd(States.ArrayLength(States.StringSplit($$.StateMachine.Name, '-')), -1))"
    )
    assert run(text, {}, {"StateMachine": {"Name": "first-second-last"}}) == "last"


def test_base64() -> None:
    assert run("States.Base64Encode($.s)", {"s": "Data to encode"}) == "RGF0YSB0byBlbmNvZGU="
    assert run("States.Base64Decode($.s)", {"s": "RGF0YSB0byBlbmNvZGU="}) == "Data to encode"
    assert run("States.Base64Encode('')") == ""
    with pytest.raises(StatesError):
        run("States.Base64Decode('not base64!')")


@pytest.mark.parametrize(
    ("algorithm", "digest"),
    [
        ("MD5", "812f45842bc6d66ee14572ce20db8e86"),
        ("SHA-1", "aaff4a450a104cd177d28d18d74485e8cae074b7"),
        ("SHA-256", "b4a697a057313163aee33cd8d40c66e9f0f177e00cac2de32475ffff6169c3e3"),
        (
            "SHA-384",
            "d28a7d5cf25a74f11a50a18452b75e04bb3d70c9dd0510d6123aa008c756511b87525bdc835ebb27e1fb9e9374a15562",
        ),
        (
            "SHA-512",
            "6ce4adb348546d4f449c4d25aad9a7c9cb711d9e91982d3f0b29ca2f3f47d4ce2deba23bf2954f0f1d593fc50283731a533d30d425402d4f91316d871303aac4",
        ),
    ],
)
def test_hash(algorithm: str, digest: str) -> None:
    assert (
        run("States.Hash($.FunctionInput.fst, $.FunctionInput.snd)", pair("input data", algorithm))
        == digest
    )


def test_hash_unknown_algorithm_fails() -> None:
    with pytest.raises(StatesError) as info:
        run("States.Hash('x', 'SHA-3')")
    assert info.value.error == INTRINSIC_FAILURE


def test_json_merge_is_shallow() -> None:
    data = pair(
        {"a": {"a1": 1, "a2": 2}, "b": 2, "d": 3}, {"a": {"a3": 1, "a4": 2}, "c": 3, "d": 4}
    )
    assert run("States.JsonMerge($.FunctionInput.fst, $.FunctionInput.snd, false)", data) == {
        "a": {"a3": 1, "a4": 2},
        "b": 2,
        "c": 3,
        "d": 4,
    }
    # intrinsic_functions/test_json_merge_escaped_argument
    assert run(
        'States.JsonMerge(States.StringToJson(\'{"k": "false"}\'), $.x, false)', {"x": {"y": 1}}
    ) == {"k": "false", "y": 1}
    with pytest.raises(StatesError):
        run("States.JsonMerge($.a, $.a, true)", {"a": {}})


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (-9, 3, -6),
        (1.49, 1.5, 3),
        (1.5, 1.51, 4),
        (-1.49, -1.5, -2),
        (-1.5, -1.51, -3),
        (0.5, 0, 1),
        (-0.5, 0, 0),
        (-2.5, 0, -2),
        (2.5, 0, 3),
        (-0.5, 0.5, 1),
    ],
)
def test_math_add_rounds_like_java(a: float, b: float, expected: int) -> None:
    out = run("States.MathAdd($.FunctionInput.fst, $.FunctionInput.snd)", pair(a, b))
    assert out == expected
    assert type(out) is int


def test_math_random_uses_env_only() -> None:
    env1, env2 = EvalEnv(rng=random.Random(7)), EvalEnv(rng=random.Random(7))
    a = run("States.MathRandom(1, 1000)", env=env1)
    assert a == run("States.MathRandom(1, 1000)", env=env2)
    assert 1 <= a < 1000
    seeded = run("States.MathRandom(0, 999, 3)")
    assert seeded == run("States.MathRandom(0, 999, 3)", env=EvalEnv(rng=random.Random(99)))


def test_uuid_comes_from_env() -> None:
    env = EvalEnv(uuid=lambda: "00000000-0000-4000-8000-000000000000")
    assert run("States.UUID()", env=env) == "00000000-0000-4000-8000-000000000000"


def test_a_seeded_env_draws_what_random_seeded_alike_draws() -> None:
    """The engine's env (seeded with the execution id and seq) makes its Random at the
    first draw: the values are those of Random(seed), uuids and numbers from one
    sequence, as recorded histories replayed must see them."""
    seed = "7b0e7e1c-8f55-4a5e-9d8e-2b5f0c2f9a11:12"
    env = EvalEnv.seeded(seed, {"v": 1})
    assert env.variables == {"v": 1}
    drawn = [run("States.UUID()", env=env), run("States.MathRandom(0, 999)", env=env)]
    rng = random.Random(seed)
    expected_uuid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    assert drawn == [expected_uuid, rng.randrange(0, 999)]
    untouched = EvalEnv.seeded(seed)
    assert untouched._rng is None  # nothing drawn, nothing seeded


@pytest.mark.parametrize(
    ("s", "sep", "expected"),
    [
        (" ", ",", [" "]),
        (" , ", ",", [" ", " "]),
        (", , ,", ",", [" ", " "]),
        (",,,,", ",", []),
        ("1,2,3", ",", ["1", "2", "3"]),
        ("This.is+a,test=string", ".+,=", ["This", "is", "a", "test", "string"]),
        ("split on T and \nnew line", "T\n", ["split on ", " and ", "new line"]),
    ],
)
def test_string_split(s: str, sep: str, expected: list[str]) -> None:
    assert (
        run("States.StringSplit($.FunctionInput.fst, $.FunctionInput.snd)", pair(s, sep))
        == expected
    )


def test_string_split_literal_with_newline() -> None:
    # intrinsic_functions/test_escape_sequence (a real newline inside the literal)
    assert run("States.StringSplit('Hello\nWorld', '\n')") == ["Hello", "World"]


def test_variables_as_arguments() -> None:
    env = EvalEnv(variables={"name": "Ann", "place": "Oslo"})
    assert run("States.Format('Hello {}, welcome to {}!', $name, $place)", {}, None, env) == (
        "Hello Ann, welcome to Oslo!"
    )


def test_missing_path_argument_is_reported_with_its_path() -> None:
    with pytest.raises(ArgumentPathNotFound) as info:
        run("States.Format('{}', $.missing)", {})
    assert info.value.path_text == "$.missing"


@pytest.mark.parametrize(
    "text",
    [
        "States.Nope(1)",
        "States.Format(",
        "States.UUID(1)",
        "States.ArrayLength()",
        "States.Array('unterminated)",
        "States.Array(1) trailing",
        "States.Array(bogus)",
    ],
)
def test_bad_calls_fail_at_compile_time(text: str) -> None:
    with pytest.raises(IntrinsicSyntaxError):
        compile_intrinsic(text)


def test_type_errors_are_intrinsic_failures() -> None:
    for text, data in [
        ("States.ArrayLength($.a)", {"a": "x"}),
        ("States.MathAdd($.a, 1)", {"a": "1"}),
        ("States.StringToJson($.a)", {"a": "{bad"}),
        ("States.Base64Encode($.a)", {"a": 1}),
    ]:
        with pytest.raises(StatesError) as info:
            run(text, data)
        assert info.value.error == INTRINSIC_FAILURE


def test_is_intrinsic() -> None:
    assert is_intrinsic("States.Format('x')")
    assert not is_intrinsic("$.States")
    assert not is_intrinsic("States.Format")


# ---- properties ---------------------------------------------------------------

_scalars = st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.text(max_size=8)
_json = st.recursive(
    _scalars | st.floats(allow_nan=False, allow_infinity=False),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c, max_size=3),
    max_leaves=12,
)


@given(arr=st.lists(_scalars, max_size=30), size=st.integers(1, 10))
def test_partition_then_flatten_is_identity(arr: list[Any], size: int) -> None:
    parts = run("States.ArrayPartition($.a, $.n)", {"a": arr, "n": size})
    assert [x for p in parts for x in p] == arr
    assert all(1 <= len(p) <= size for p in parts)
    assert all(len(p) == size for p in parts[:-1])


@given(text=st.text(max_size=200))
def test_base64_round_trip(text: str) -> None:
    encoded = run("States.Base64Encode($.s)", {"s": text})
    assert run("States.Base64Decode($.s)", {"s": encoded}) == text


@given(value=_json)
def test_json_to_string_then_string_to_json_round_trip(value: Any) -> None:
    text = run("States.JsonToString($.v)", {"v": value})
    assert json.loads(text) == value
    if text.strip():
        assert run("States.StringToJson($.s)", {"s": text}) == value


@given(arr=st.lists(st.integers(-5, 5), max_size=20))
def test_array_unique_keeps_first_occurrences(arr: list[int]) -> None:
    assert run("States.ArrayUnique($.a)", {"a": arr}) == list(dict.fromkeys(arr))


@given(start=st.integers(-50, 50), end=st.integers(-50, 50), step=st.integers(1, 7))
def test_array_range_matches_inclusive_python_range(start: int, end: int, step: int) -> None:
    assert run("States.ArrayRange($.a, $.b, $.c)", {"a": start, "b": end, "c": step}) == list(
        range(start, end + 1, step)
    )


def test_string_to_json_of_a_too_deeply_nested_string_is_an_intrinsic_failure() -> None:
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(StatesError) as caught:
        compile_intrinsic("States.StringToJson($.s)").evaluate({"s": deep}, None, EvalEnv())
    assert caught.value.error == "States.IntrinsicFailure"


def test_array_range_too_large_fails_before_building_it() -> None:
    with pytest.raises(StatesError) as caught:
        compile_intrinsic("States.ArrayRange(1, 100000000000000000000, 1)").evaluate(
            {}, None, EvalEnv()
        )
    assert caught.value.error == INTRINSIC_FAILURE
