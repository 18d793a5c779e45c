"""steplog._otlp_speedups (C) encodes span records to the bytes steplog.otlp's Python
encoding writes of them, for every record the pipe can carry; what it does not handle
(or finds wrong) it refuses with an exception, never a crash, and the Python encoding
answers. Where a C compiler is, `make install` builds it."""

from __future__ import annotations

import math
import shutil
import struct
import sysconfig
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steplog import otlp
from steplog.span_export import decode_batch, encode_batch


def test_it_is_built_where_a_c_compiler_is() -> None:
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is not None:
        assert otlp._speedups is not None, "setup.py's optional extension did not build"
    else:  # (the install went on without it: Python encodes)
        assert otlp._speedups is None


speedups = otlp._speedups
needs_speedups = pytest.mark.skipif(speedups is None, reason="built only with a C compiler")

_U64 = st.integers(0, 2**64 - 1)
_HEX = "0123456789abcdef"
_TEXT = st.text(max_size=12)
# What msgpack decodes an attribute value as (a tuple crosses the pipe as a list).
_SCALARS = (
    st.booleans()
    | _TEXT
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.binary(max_size=8)
    | st.none()
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=6,
)
_ATTRIBUTES = st.dictionaries(_TEXT, _VALUES, max_size=5)


def _hex(digits: int) -> st.SearchStrategy[str]:
    return st.text(alphabet=_HEX + "ABCDEF", min_size=digits, max_size=digits)


def _records(attributes: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[list[Any]]:
    """Records as `span_export.decode_batch` reads them (`SpanRecord`, as lists)."""
    return st.builds(
        lambda *fields: list(fields),
        st.integers(0, 3),  # group
        _TEXT,  # name
        st.integers(0, 4),  # kind
        _hex(32),  # trace id
        _U64,  # span id
        st.integers(0, 3),  # flags
        st.sampled_from(["", "k=v", "a=1,b=2"]),  # trace state header
        st.none() | st.tuples(_U64 | _hex(16), st.booleans()).map(list),  # parent
        st.none() | _U64,  # start
        st.none() | _U64,  # end
        attributes,
        st.lists(st.tuples(_TEXT, _U64, attributes).map(list), max_size=3),  # events
        st.lists(  # links: (context, is remote, attributes)
            st.tuples(
                st.tuples(_U64, _U64, _U64, st.integers(0, 3), st.just("")).map(list),
                st.booleans(),
                attributes,
            ).map(list),
            max_size=2,
        ),
        st.tuples(st.integers(0, 2), st.none() | _TEXT).map(list),  # status
        st.integers(0, 300),
        st.integers(0, 300),
        st.integers(0, 300),
    )


def _python(records: list[list[Any]]) -> bytes:
    return b"".join(otlp._record_span(record) for record in records)


@needs_speedups
@settings(max_examples=500, deadline=None)
@given(st.lists(_records(_ATTRIBUTES), max_size=4))
def test_c_encodes_every_record_as_python_does(records: list[list[Any]]) -> None:
    # Any id, and any attribute value: what a lean span holds (str, bool, int, float,
    # tuples of str) and lists, maps, bytes and None (a handler's own span, through an
    # SDK span's record), nested less deep than C's limit, ints within 64 bits: C
    # encodes them all.
    assert speedups is not None
    assert speedups.encode_spans(records) == _python(records)


def test_what_c_refuses_python_answers() -> None:
    record: list[Any] = [0, "s", 1, "ab" * 16, 7, 1, "", None, 1, 2, {}, [], [], [0, None], 0, 0, 0]
    refused: list[list[Any]] = [
        [*record[:10], {"big": 2**70}, *record[11:]],  # an int beyond 64 bits
        [*record[:10], {"nested": [[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]}, *record[11:]],
        [*record[:3], "0x" + "a" * 30, *record[4:]],  # a trace id int() reads, not hex
        [*record[:7], [5, 1], *record[8:]],  # is remote not a bool (Python: its truth)
        # a link with a trace state (Python parses it, as the SDK's TraceState would)
        [*record[:12], [[[1, 2, 3, 1, "k=v,bad key=x"], True, {}]], *record[13:]],
    ]
    for one in refused:
        if speedups is not None:
            with pytest.raises(TypeError):
                speedups.encode_spans([one])
        # The encoding of the batch is Python's.
        assert otlp._records([one]) == _python([one])
    # A record Python cannot encode either fails the batch there (the exporter logs it).
    wrong = [*record[:4], -1, *record[5:]]
    with pytest.raises((OverflowError, struct.error)):
        otlp._records([wrong])


@needs_speedups
@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.lists(
            st.none()
            | st.integers()
            | st.floats()
            | _TEXT
            | st.lists(st.integers() | _TEXT, max_size=3)
            | st.dictionaries(_TEXT, st.integers() | st.lists(st.none())),
            max_size=18,
        ),
        max_size=3,
    )
)
def test_c_refuses_malformed_records_without_crashing(records: list[list[Any]]) -> None:
    assert speedups is not None
    try:
        ours = speedups.encode_spans(records)
    except Exception:
        return
    assert ours == _python(records)


@needs_speedups
def test_floats_and_unicode_encode_alike() -> None:
    assert speedups is not None
    values = [math.inf, -math.inf, -0.0, 5e-324, 1.5, math.nan]
    attributes = {"f": values[0], "ü": "日本", "": "", "g": values[2], "n": values[5]}
    attributes |= {"l": values, "e": [], "d": {"x": None}}
    record = [0, "späne", 4, "F" * 32, 2**64 - 1, 3, "k=v", ["0" * 15 + "1", True]]
    record += [2**64 - 1, 0, attributes, [["ev", 0, {}]], [], [2, "ошибка"], 1, 2, 3]
    assert speedups.encode_spans([record]) == _python([record])


def test_a_batch_through_the_pipe_encodes_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.unit.test_span_pipe import _records_and_spans

    records, _ = _records_and_spans()
    received = decode_batch(encode_batch(records))  # type: ignore[arg-type]
    ours = otlp.encode_spans(received)
    monkeypatch.setattr(otlp, "_speedups", None)
    assert otlp.encode_spans(received) == ours
