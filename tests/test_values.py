"""runtime.values: the one codec, and the one write policy (refused, never clamped)."""

from __future__ import annotations

import ctypes
import math
import pickle
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime import load_catalog
from runtime.buffer import Buffer, DeviceBufferError, Parameter
from runtime.values import (
    ARRAY,
    BOOL,
    CHAR,
    FLOAT,
    INTEGER,
    TEXT,
    WriteRefused,
    apply_writes,
    bounds_of,
    check_value,
    check_writes,
    describe,
    from_json_values,
    json_values,
    kind_of,
    parse_text,
    to_wire,
    type_name,
)

W = {"writeable": True}
DUTY = Parameter("duty_cycle", ctypes.c_float, 0, lower=-1.0, upper=1.0, **W)
SMALL = Parameter("small", ctypes.c_uint8, 1, lower=0, upper=100, **W)
FLAG = Parameter("flag", ctypes.c_bool, 2, **W)
NAME = Parameter("name", ctypes.c_char * 4, 3, **W)
PAIR = Parameter("pair", ctypes.c_int16 * 2, 4, **W)
SENSOR = Parameter("sensor", ctypes.c_float, 5)
WIDE = Parameter("wide", ctypes.c_float, 6, **W)
GRID = Parameter("grid", ctypes.c_uint8 * 2 * 2, 7, **W)
PROBE = Buffer.make_type("values-probe", [DUTY, SMALL, FLAG, NAME, PAIR, SENSOR, WIDE, GRID])


def test_kinds_and_names() -> None:
    cases = [
        (ctypes.c_bool, BOOL, "bool"),
        (ctypes.c_int16, INTEGER, "int16"),
        (ctypes.c_uint32, INTEGER, "uint32"),
        (ctypes.c_float, FLOAT, "float"),
        (ctypes.c_double, FLOAT, "double"),
        (ctypes.c_char, CHAR, "char"),
        (ctypes.c_char * 8, TEXT, "char[8]"),
        (ctypes.c_float * 3, ARRAY, "float[3]"),
        (ctypes.c_int8 * 2 * 3, ARRAY, "int8[2][3]"),
    ]
    for ctype, kind, name in cases:
        assert (kind_of(ctype), type_name(ctype)) == (kind, name)


def test_every_catalog_parameter_has_a_kind_and_a_description() -> None:
    for buffer_type in load_catalog().values():
        for param in buffer_type.params.values():
            assert kind_of(param.platform_type) in (BOOL, INTEGER, FLOAT, CHAR, TEXT, ARRAY), param
            assert describe(param)


@pytest.mark.parametrize(
    ("param", "value", "problem"),
    [
        (DUTY, 1.5, "1.5 is out of bounds [-1, 1]"),
        (DUTY, -2, "-2 is out of bounds [-1, 1]"),
        (DUTY, math.nan, "nan is not a finite number"),
        (DUTY, math.inf, "inf is not a finite number"),
        (DUTY, True, "True is not a number"),
        (DUTY, "0.5", "'0.5' is not a number"),
        (SMALL, 101, "101 is out of bounds [0, 100]"),
        (SMALL, -1, "-1 is out of bounds [0, 100]"),
        (SMALL, 2.5, "2.5 is not an integer (uint8)"),
        (FLAG, 1, "1 is not true or false"),
        (NAME, "hello", "5 bytes of text do not fit 4"),
        (NAME, 7, "7 is not text"),
        (PAIR, [1, 2, 3], "[1, 2, 3] is not 2 integers (int16)"),
        (PAIR, [1, 70000], "70000 is out of bounds [-32768, 32767]"),
        (SENSOR, 0.5, "read-only: nothing writes it but its device"),
        (WIDE, 1e39, "1e+39 does not fit a 4-byte float"),
    ],
)
def test_refused_never_clamped(param: Parameter, value: Any, problem: str) -> None:
    with pytest.raises(WriteRefused) as caught:
        check_value(param, value)
    assert caught.value.problem.startswith(problem), caught.value.problem
    assert str(caught.value).startswith(f"{param.name}") and caught.value.param.startswith(param.name)
    assert isinstance(caught.value, DeviceBufferError) and isinstance(caught.value, ValueError)


def test_a_refusal_survives_pickling() -> None:
    with pytest.raises(WriteRefused) as caught:
        check_value(DUTY, 3)
    again = pickle.loads(pickle.dumps(caught.value))
    assert (type(again), str(again), again.problem) == (WriteRefused, str(caught.value), caught.value.problem)


@pytest.mark.parametrize(
    ("param", "value", "taken"),
    [
        (DUTY, 1, 1.0),
        (DUTY, -0.25, -0.25),
        (SMALL, 100, 100),
        (SMALL, 7.0, 7),
        (FLAG, False, False),
        (NAME, "abcd", b"abcd"),
        (NAME, b"ab", b"ab"),
        (PAIR, (1, -2), [1, -2]),
        (GRID, [[1, 2], [3, 4]], [[1, 2], [3, 4]]),
    ],
)
def test_taken(param: Parameter, value: Any, taken: Any) -> None:
    assert check_value(param, value) == taken


@pytest.mark.parametrize(
    ("param", "text", "taken"),
    [
        (FLAG, "On", True),
        (FLAG, "no", False),
        (FLAG, "0", False),
        (SMALL, "0x10", 16),
        (SMALL, "0b101", 5),
        (DUTY, " -0.5 ", -0.5),
        (NAME, "ab", b"ab"),
        (PAIR, "1, 2", [1, 2]),
        (PAIR, "[3, 4]", [3, 4]),
        (GRID, "[[1, 2], [3, 4]]", [[1, 2], [3, 4]]),
    ],
)
def test_parse_text(param: Parameter, text: str, taken: Any) -> None:
    assert parse_text(param, text) == taken


@pytest.mark.parametrize(
    ("param", "text", "problem"),
    [
        (FLAG, "maybe", "'maybe' is not true or false"),
        (DUTY, "fast", "'fast' is not a number (float) in [-1, 1]"),
        (DUTY, "1.5", "1.5 is out of bounds [-1, 1]"),
        (SMALL, "1.5", "'1.5' is not an integer (uint8) in [0, 100]"),
        (PAIR, "1", "[1] is not 2 integers (int16)"),
        (PAIR, "[1, ", "'[1, ' is not 2 integers (int16)"),
        (GRID, "1,2,3,4", "'1,2,3,4' is not a 2x2 JSON list of lists"),
    ],
)
def test_parse_text_refuses(param: Parameter, text: str, problem: str) -> None:
    with pytest.raises(WriteRefused) as caught:
        parse_text(param, text)
    assert caught.value.problem.startswith(problem), caught.value.problem


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_a_bounded_float_is_taken_exactly_within_its_bounds(value: float) -> None:
    low, high = bounds_of(DUTY)
    if math.isfinite(value) and low <= value <= high:
        assert check_value(DUTY, value) == value
        assert parse_text(DUTY, repr(value)) == value
    else:
        with pytest.raises(WriteRefused):
            check_value(DUTY, value)


@given(st.integers(min_value=-(2**70), max_value=2**70))
def test_an_integer_is_taken_exactly_within_its_bounds_and_range(value: int) -> None:
    if 0 <= value <= 100:
        assert check_value(SMALL, value) == value
        assert to_wire(SMALL, value) == bytes([value])
    else:
        with pytest.raises(WriteRefused, match=r"out of bounds \[0, 100\]"):
            check_value(SMALL, value)


def test_check_writes_names_the_wrong_parameter_and_checks_all_first() -> None:
    with pytest.raises(WriteRefused) as caught:
        check_writes(PROBE, {"duty_cycle": 0.5, "duty_cyle": 0.5})
    assert caught.value.message == "duty_cyle: no such parameter of values-probe (did you mean 'duty_cycle'?)"
    with pytest.raises(WriteRefused, match="no such parameter of values-probe; it has duty_cycle, flag"):
        check_writes(PROBE, {"zzz": 1})
    assert check_writes(PROBE, {"duty_cycle": "0.5", "flag": "yes"}, texts=True) == {
        "duty_cycle": 0.5,
        "flag": True,
    }


def test_apply_writes_all_or_none(shm_name: Any) -> None:
    buffer = PROBE.attach(shm_name("probe"), create=True)
    try:
        with pytest.raises(WriteRefused):
            apply_writes(buffer, check_writes(PROBE, {"duty_cycle": 0.5, "small": 500}))
        assert buffer.pending_writes() == {}  # refused while checking: nothing written
        apply_writes(buffer, check_writes(PROBE, {"duty_cycle": 0.5, "small": 5, "name": "ab"}))
        pending = buffer.pending_writes()
        assert (pending["duty_cycle"], pending["small"], bytes(pending["name"])) == (0.5, 5, b"ab")
    finally:
        buffer.close()


def test_to_wire_matches_the_ctypes_layout() -> None:
    assert to_wire(DUTY, 0.5) == bytes(ctypes.c_float(0.5))
    assert to_wire(NAME, b"ab") == b"ab\0\0"
    assert to_wire(PAIR, [1, -2]) == bytes((ctypes.c_int16 * 2)(1, -2))
    assert to_wire(GRID, [[1, 2], [3, 4]]) == bytes([1, 2, 3, 4])


def test_json_values_shortens_float32_and_converts_arrays() -> None:
    snapshot = {
        "duty_cycle": ctypes.c_float(0.1).value,
        "sensor": math.nan,
        "pair": (ctypes.c_int16 * 2)(1, 2),
    }
    readable = Buffer.make_type(
        "values-json",
        [
            Parameter("duty_cycle", ctypes.c_float, 0),
            Parameter("sensor", ctypes.c_float, 1),
            Parameter("pair", ctypes.c_int16 * 2, 2),
        ],
    )
    assert json_values(readable, snapshot) == {"duty_cycle": 0.1, "sensor": None, "pair": [1, 2]}


@given(st.floats(width=32, allow_nan=False, allow_infinity=False))
def test_a_float32_through_json_comes_back_as_the_very_float32(value: float) -> None:
    buffer_type = Buffer.make_type("values-json32", [Parameter("v", ctypes.c_float, 0)])
    sent = json_values(buffer_type, {"v": value})  # the shortest decimal that reads back the same
    assert from_json_values(buffer_type, {"v": float(str(sent["v"]))}) == {"v": value}
