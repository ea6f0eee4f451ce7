"""The packaged device catalog and its loader (runtime.catalog).

The facts below are transcribed independently from shared/spec/device-catalog.md,
so a slip in runtime/catalog.yaml shows up as a mismatch here. The safe values
("safe=0") are this library's policy, not the spec's: every actuator stops when
nobody commands it.
"""

import copy
import ctypes
import importlib
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from runtime import catalog

# type name -> (device_id or None, parameters in ID order as "name type [flags] [safe=X] [lower, upper]").
W, NO_R = "w", "no-r"
BEAR = [
    "duty_cycle float w safe=0 [-1, 1]",
    "pid_pos_setpoint float w no-r",
    "pid_pos_kp float w no-r [0, inf]",
    "pid_pos_ki float w no-r [0, inf]",
    "pid_pos_kd float w no-r [0, inf]",
    "pid_vel_setpoint float w no-r",
    "pid_vel_kp float w no-r",
    "pid_vel_ki float w no-r",
    "pid_vel_kd float w no-r",
    "current_thresh float w no-r [2, 10]",
    "enc_pos float w",
    "enc_vel float",
    "motor_current float",
    "deadband float w",
]
KOALA_CHANNEL = [
    "duty_cycle_{} float w safe=0 [-1, 1]",
    "pid_kp_{} float w no-r [0, inf]",
    "pid_ki_{} float w no-r [0, inf]",
    "pid_kd_{} float w no-r [0, inf]",
    "enc_pos_{} float w",
    "deadband_{} float w",
    "motor_enabled_{} bool w",
    "drive_mode_{} uint8 w",
]
GAMEPAD_BUTTONS = (
    "button_a button_b button_x button_y l_bumper r_bumper l_trigger r_trigger button_back button_start "
    "l_stick r_stick dpad_up dpad_down dpad_left dpad_right button_xbox"
).split()
FACTS: dict[str, tuple[int | None, list[str]]] = {
    "limit-switch": (0, ["switch0 bool", "switch1 bool", "switch2 bool"]),
    "line-follower": (1, ["left float", "center float", "right float"]),
    "potentiometer": (2, ["pot0 float", "pot1 float", "pot2 float"]),
    "encoder": (3, ["rotation int16"]),
    "battery": (
        4,
        ["is_unsafe bool", "calibrated bool"]
        + [f"{name} float" for name in "v_cell1 v_cell2 v_cell3 v_batt dv_cell2 dv_cell3".split()],
    ),
    "team-flag": (5, [f"{name} bool w" for name in "mode blue yellow led1 led2 led3 led4".split()]),
    "servo-motor": (7, ["servo0 float w safe=0 [-1, 1]", "servo1 float w safe=0 [-1, 1]"]),
    "yogi-bear": (10, BEAR),
    "rfid": (11, ["id uint32", "tag_detect uint8"]),
    "polar-bear": (12, BEAR),
    "koala-bear": (13, [p.format("a") for p in KOALA_CHANNEL] + [p.format("b") for p in KOALA_CHANNEL]),
    "gamepad": (
        None,
        [f"{name} bool" for name in GAMEPAD_BUTTONS]
        + [f"joystick_{side}_{axis} float [-1, 1]" for side in ("left", "right") for axis in "xy"],
    ),
    "field": (None, ["mode uint8", "alliance uint8", "send_buf uint8[4096]", "recv_buf uint8[4096]"]),
    "keyboard": (
        None,
        [
            *(f"{key} bool" for key in "abcdefghijklmnopqrstuvwxyz"),
            *(f"digit_{digit} bool" for digit in range(10)),
            *(f"{key} bool" for key in ("comma", "period", "slash", "semicolon", "quote")),
            *(f"{key} bool" for key in ("left_bracket", "right_bracket")),
            *(f"{key}_arrow bool" for key in ("left", "right", "up", "down")),
        ],
    ),
    "runner": (
        None,
        ["mode uint8", "pid int32", "cycles uint32", "overruns uint32", "lines uint32", "log char[2048]"],
    ),
}
DEFAULTS = {
    "readable": True, "writeable": False, "subscribed": True,
    "lower": -math.inf, "upper": math.inf, "safe": None,
}  # fmt: skip
ACTUATORS = {
    ("servo-motor", "servo0"), ("servo-motor", "servo1"), ("yogi-bear", "duty_cycle"),
    ("polar-bear", "duty_cycle"), ("koala-bear", "duty_cycle_a"), ("koala-bear", "duty_cycle_b"),
}  # fmt: skip
"""The parameters of the packaged catalog that have a safe value (each 0)."""


def expected_param(fact: str) -> dict[str, Any]:
    """Turn ``"name type [w] [no-r] [safe=X] [[lower, upper]]"`` into the parameter's full settings."""
    words, _, bounds = fact.partition(" [")
    name, type_, *flags = words.split()
    safe = [float(flag.removeprefix("safe=")) for flag in flags if flag.startswith("safe=")]
    lower, upper = (
        (float(bound) for bound in bounds.rstrip("]").split(",")) if bounds else (-math.inf, math.inf)
    )
    return {
        "name": name,
        "type": type_,
        "readable": NO_R not in flags,
        "writeable": W in flags,
        "subscribed": True,
        "lower": lower,
        "upper": upper,
        "safe": safe[0] if safe else None,
    }


METADATA = ("unit", "description")
"""Words for people the spec's table does not give (checked apart: every parameter has a description)."""


def with_defaults(param: dict[str, Any]) -> dict[str, Any]:
    return {**DEFAULTS, **{key: value for key, value in param.items() if key not in METADATA}}


@pytest.fixture(scope="module")
def raw() -> dict[str, dict[str, Any]]:
    return catalog.load_raw()


def buffer_module() -> ModuleType:
    """runtime.buffer, or skip the test while that module does not exist yet (and only then)."""
    try:
        return importlib.import_module("runtime.buffer")
    except ModuleNotFoundError as exc:
        if exc.name != "runtime.buffer":
            raise
        pytest.skip("runtime/buffer.py does not exist yet")


# -- The packaged catalog ---------------------------------------------------------------------------------


def test_packaged_catalog_has_every_device(raw: dict[str, dict[str, Any]]) -> None:
    assert list(raw) == list(FACTS)


@pytest.mark.parametrize("type_name", FACTS)
def test_packaged_catalog_matches_the_spec(raw: dict[str, dict[str, Any]], type_name: str) -> None:
    device_id, facts = FACTS[type_name]
    entry = raw[type_name]
    assert entry.get("device_id") == device_id
    assert [with_defaults(param) for param in entry["params"]] == [expected_param(fact) for fact in facts]
    assert all("id" not in param for param in entry["params"])  # IDs follow the list order.


def test_spot_checks(raw: dict[str, dict[str, Any]]) -> None:
    yogi = raw["yogi-bear"]["params"]
    assert len(yogi) == 14
    assert {key: value for key, value in yogi[0].items() if key not in METADATA} == {
        "name": "duty_cycle", "type": "float", "writeable": True, "lower": -1.0, "upper": 1.0, "safe": 0.0,
    }  # fmt: skip
    assert with_defaults(yogi[2]) == with_defaults(
        {"name": "pid_pos_kp", "type": "float", "writeable": True, "readable": False, "lower": 0.0}
    )
    assert yogi[9]["name"] == "current_thresh" and (yogi[9]["lower"], yogi[9]["upper"]) == (2.0, 10.0)
    assert [p["name"] for p in yogi if p.get("readable", True) is False] == [
        "pid_pos_setpoint", "pid_pos_kp", "pid_pos_ki", "pid_pos_kd",
        "pid_vel_setpoint", "pid_vel_kp", "pid_vel_ki", "pid_vel_kd", "current_thresh",
    ]  # fmt: skip
    assert raw["polar-bear"]["params"] == yogi
    assert raw["polar-bear"]["params"] is not yogi  # The YAML alias is not shared after validation.
    assert len(raw["koala-bear"]["params"]) == 16
    assert {key: value for key, value in raw["koala-bear"]["params"][7].items() if key not in METADATA} == {
        "name": "drive_mode_a", "type": "uint8", "writeable": True,
    }  # fmt: skip
    assert raw["koala-bear"]["params"][8]["name"] == "duty_cycle_b"
    assert raw["rfid"]["sub_interval"] == 0.1
    assert all(
        key not in entry for name, entry in raw.items() if name != "rfid" for key in catalog.INTERVAL_KEYS
    )
    send_buf = raw["field"]["params"][2]
    assert {key: value for key, value in send_buf.items() if key not in METADATA} == {
        "name": "send_buf", "type": "uint8[4096]",
    }  # fmt: skip
    assert len(raw["gamepad"]["params"]) == 21
    assert "device_id" not in raw["gamepad"] and "device_id" not in raw["field"]
    smart = [name for name, entry in raw.items() if "device_id" in entry]
    assert len({raw[name]["device_id"] for name in smart}) == len(smart) == 11


def test_base_types_are_ctypes_names() -> None:
    for name in catalog.BASE_TYPES:
        assert isinstance(getattr(ctypes, f"c_{name}"), type), name


TYPE_SPECS = [
    *sorted(catalog.BASE_TYPES),
    "uint8[4096]", "uint64[8][8]", " uint8 [ 4 ] ", "char[253]",  # Accepted ...
    "c_int", "Float", "flaot", "char_p", "void_p", "char*", "int[]", "int[0]", "int[-1]", "[4]", "", "int[2",
]  # fmt: skip


@pytest.mark.parametrize("spec", TYPE_SPECS)
def test_type_check_agrees_with_parse_ctype(spec: str) -> None:
    buffer = buffer_module()
    raw = {"thing": {"params": [{"name": "x", "type": spec}]}}
    try:
        buffer.Parameter.parse_ctype(spec)
    except buffer.DeviceBufferError:
        with pytest.raises(buffer.DeviceBufferError, match="type"):
            catalog.validate(raw)
    else:
        assert catalog.validate(raw) == raw


def test_packaged_file_loads_by_path_too(raw: dict[str, dict[str, Any]]) -> None:
    path = Path(catalog.__file__).with_name("catalog.yaml")
    assert catalog.load_raw(path) == raw
    assert catalog.load_raw(str(path)) == raw


# -- validate(): normalization --------------------------------------------------------------------------


def minimal() -> dict[str, Any]:
    """A small valid catalog: one Smart Device and one plain buffer."""
    return {
        "motor": {
            "device_id": 20,
            "sub_interval": 1,
            "params": [
                {"name": "duty", "type": "double", "writeable": True, "lower": -1, "upper": 1},
                {"name": "flags", "type": "uint8[4]", "id": 5},
            ],
        },
        "panel": {"params": [{"name": "label", "type": "char[32]"}, {"name": "lit", "type": "bool"}]},
    }


def test_validate_normalizes_without_mutating() -> None:
    raw = minimal()
    before = copy.deepcopy(raw)
    result = catalog.validate(raw)
    assert raw == before
    assert result == before  # Same content, no keys added ...
    duty = result["motor"]["params"][0]
    assert type(duty["lower"]) is float and type(result["motor"]["sub_interval"]) is float  # ... as floats.
    duty["upper"] = 99
    result["motor"]["params"].clear()
    assert raw == before  # A deep copy: nothing shared.


def test_validate_accepts_edge_cases() -> None:
    raw: dict[str, Any] = {
        "empty": {"device_id": 0, "params": []},
        "full": {"device_id": 65535, "params": [{"name": f"p{i}", "type": "int8"} for i in range(16)]},
        "big": {"params": [{"name": f"p{i}", "type": "float", "id": 100 + i} for i in range(40)]},
        "inf-bounds": {
            "params": [{"name": "x", "type": "int32", "lower": -math.inf, "upper": math.inf}],
            "heartbeat_interval": 0.5,
        },
    }
    assert catalog.validate(raw) == raw


def test_validate_reads_yaml_infinity(tmp_path: Path) -> None:
    path = tmp_path / "inf.yaml"
    path.write_text("thing:\n  params:\n    - {name: x, type: float, lower: -.inf, upper: .inf}\n")
    assert catalog.load_raw(path)["thing"]["params"][0]["upper"] == math.inf


# -- validate(): every kind of mistake ------------------------------------------------------------------

Mutation = Callable[[dict[str, Any]], None]


def motor(raw: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = raw["motor"]
    return entry


def duty(raw: dict[str, Any]) -> dict[str, Any]:
    param: dict[str, Any] = raw["motor"]["params"][0]
    return param


def set_device(key: str, value: object) -> Mutation:
    return lambda raw: motor(raw).__setitem__(key, value)


def set_param(key: str, value: object) -> Mutation:
    return lambda raw: duty(raw).__setitem__(key, value)


def add_param(param: object) -> Mutation:
    return lambda raw: motor(raw)["params"].append(param)


# (id, mutation of minimal(), device named, param named, words the message must contain)
MISTAKES: list[tuple[str, Mutation, str | None, str | int | None, str]] = [
    ("bad-type-name", lambda raw: raw.__setitem__("Bad Name", {"params": []}), None, None, "kebab-case"),
    ("non-str-type-name", lambda raw: raw.__setitem__(7, {"params": []}), None, None, "kebab-case"),
    ("device-not-mapping", lambda raw: raw.__setitem__("motor", ["x"]), "motor", None, "mapping"),
    ("unknown-device-key", set_device("parms", []), "motor", None, "allowed keys: device_id"),
    ("missing-params", lambda raw: motor(raw).pop("params"), "motor", None, "'params'"),
    ("device-id-negative", set_device("device_id", -1), "motor", None, "device_id"),
    ("device-id-too-big", set_device("device_id", 65536), "motor", None, "0..65535"),
    ("device-id-not-int", set_device("device_id", "20"), "motor", None, "device_id"),
    ("device-id-bool", set_device("device_id", True), "motor", None, "device_id"),
    ("interval-zero", set_device("sub_interval", 0), "motor", None, "sub_interval"),
    ("interval-negative", set_device("write_interval", -0.1), "motor", None, "write_interval"),
    ("interval-string", set_device("heartbeat_interval", "1s"), "motor", None, "heartbeat_interval"),
    ("interval-inf", set_device("heartbeat_interval", math.inf), "motor", None, "heartbeat_interval"),
    ("params-not-list", set_device("params", {"name": "x"}), "motor", None, "list"),
    ("param-not-mapping", add_param("speed"), "motor", 2, "mapping"),
    ("unknown-param-key", set_param("writable", True), "motor", "duty", "allowed keys: name, type"),
    ("missing-name", add_param({"type": "float"}), "motor", 2, "'name'"),
    ("missing-type", add_param({"name": "speed"}), "motor", "speed", "'type'"),
    ("empty-name", add_param({"name": "", "type": "float"}), "motor", 2, "identifier"),
    ("bad-name", add_param({"name": "max speed", "type": "float"}), "motor", "max speed", "identifier"),
    ("duplicate-name", add_param({"name": "duty", "type": "float"}), "motor", "duty", "duplicate"),
    ("unknown-type", set_param("type", "flaot"), "motor", "duty", "known types: bool"),
    ("c-prefixed-type", set_param("type", "c_double"), "motor", "duty", "'c_double'"),
    ("pointer-type", set_param("type", "char*"), "motor", "duty", "malformed type"),
    ("bad-array", set_param("type", "uint8[]"), "motor", "duty", "malformed type"),
    ("zero-array", set_param("type", "uint8[0]"), "motor", "duty", "positive"),
    ("type-not-str", set_param("type", 4), "motor", "duty", "type"),
    ("id-not-int", set_param("id", "0"), "motor", "duty", "id"),
    ("id-too-big", set_param("id", 16), "motor", "duty", "0..15"),
    ("id-negative", set_param("id", -1), "motor", "duty", "out of range"),
    ("duplicate-id", set_param("id", 5), "motor", "flags", "already used by parameter 'duty'"),
    ("duplicate-positional-id", add_param({"name": "x", "type": "float", "id": 0}), "motor", "x", "duty"),
    ("flag-not-bool", set_param("readable", "yes"), "motor", "duty", "readable"),
    ("flag-int", set_param("subscribed", 1), "motor", "duty", "subscribed"),
    ("bound-not-number", set_param("lower", "-1"), "motor", "duty", "lower"),
    ("bound-bool", set_param("upper", True), "motor", "duty", "upper"),
    ("bound-nan", set_param("upper", math.nan), "motor", "duty", "upper"),
    ("bounds-crossed", set_param("lower", 2), "motor", "duty", "greater than upper"),
    ("bound-on-bool", add_param({"name": "x", "type": "bool", "lower": 0}), "motor", "x", "numeric"),
    ("bound-on-array", add_param({"name": "x", "type": "int8[2]", "upper": 1}), "motor", "x", "numeric"),
    ("bound-on-char", add_param({"name": "x", "type": "char", "upper": 1}), "motor", "x", "numeric"),
    ("unknown-safe-key", set_param("save", 0), "motor", "duty", "did you mean 'safe'"),
    (
        "safe-string",
        set_param("safe", "0"),
        "motor",
        "duty",
        "safe must be a number for a double parameter, not '0'",
    ),
    ("safe-bool-on-number", set_param("safe", False), "motor", "duty", "safe must be a number"),
    ("safe-none", set_param("safe", None), "motor", "duty", "safe must be a number"),
    ("safe-list", set_param("safe", [0]), "motor", "duty", "safe must be a number"),
    ("safe-nan", set_param("safe", math.nan), "motor", "duty", "safe must be a finite number, not nan"),
    ("safe-inf", set_param("safe", math.inf), "motor", "duty", "safe must be a finite number, not inf"),
    ("safe-above", set_param("safe", 1.5), "motor", "duty", "safe 1.5 is out of bounds [-1, 1]"),
    ("safe-below", set_param("safe", -2), "motor", "duty", "safe -2 is out of bounds [-1, 1]"),
    ("safe-read-only", add_param({"name": "x", "type": "float", "safe": 0}), "motor", "x", "writeable"),
    (
        "safe-writeable-false",
        add_param({"name": "x", "type": "float", "writeable": False, "safe": 0}),
        "motor",
        "x",
        "safe applies to writeable parameters only",
    ),
    (
        "safe-number-on-bool",
        add_param({"name": "on", "type": "bool", "writeable": True, "safe": 0}),
        "motor",
        "on",
        "safe must be true or false for a bool parameter, not 0",
    ),
    (
        "safe-on-array",
        add_param({"name": "x", "type": "uint8[4]", "writeable": True, "safe": 0}),
        "motor",
        "x",
        "bool and numeric scalar types only, not 'uint8[4]'",
    ),
    (
        "safe-on-bool-array",
        add_param({"name": "x", "type": "bool[2]", "writeable": True, "safe": False}),
        "motor",
        "x",
        "scalar types only",
    ),
    ("unit-not-text", add_param({"name": "x", "type": "float", "unit": 5}), "motor", "x", "one line"),
    ("unit-empty", add_param({"name": "x", "type": "float", "unit": " "}), "motor", "x", "one line"),
    (
        "description-two-lines",
        add_param({"name": "x", "type": "float", "description": "one\ntwo"}),
        "motor",
        "x",
        "one line",
    ),
    (
        "description-too-long",
        add_param({"name": "x", "type": "float", "description": "x" * 121}),
        "motor",
        "x",
        "at most 120",
    ),
    (
        "safe-on-char",
        add_param({"name": "x", "type": "char", "writeable": True, "safe": 0}),
        "motor",
        "x",
        "scalar types only, not 'char'",
    ),
    (
        "safe-fraction-on-integer",
        add_param({"name": "mode", "type": "uint8", "writeable": True, "safe": 1.5}),
        "motor",
        "mode",
        "safe must be a whole number for a uint8 parameter, not 1.5",
    ),
    (
        "safe-outside-integer-type",
        add_param({"name": "mode", "type": "uint8", "writeable": True, "safe": 256}),
        "motor",
        "mode",
        "safe 256 is outside the range of uint8 (0..255)",
    ),
    (
        "safe-negative-unsigned",
        add_param({"name": "mode", "type": "uint16", "writeable": True, "safe": -1}),
        "motor",
        "mode",
        "outside the range of uint16 (0..65535)",
    ),
    (
        "safe-outside-integer-bounds",
        add_param({"name": "mode", "type": "int8", "writeable": True, "lower": 0, "upper": 3, "safe": 4}),
        "motor",
        "mode",
        "safe 4 is out of bounds [0, 3]",
    ),
    (
        "safe-on-plain-buffer",
        lambda raw: raw["panel"]["params"].append(
            {"name": "x", "type": "float", "writeable": True, "safe": 0}
        ),
        "panel",
        "x",
        "safe applies to Smart Device parameters only (a device type with a device_id)",
    ),
    ("timeout-zero", set_device("command_timeout", 0), "motor", None, "command_timeout must be a positive"),
    ("timeout-negative", set_device("command_timeout", -1), "motor", None, "command_timeout"),
    ("timeout-string", set_device("command_timeout", "1s"), "motor", None, "not '1s'"),
    ("timeout-bool", set_device("command_timeout", True), "motor", None, "command_timeout"),
    ("timeout-inf", set_device("command_timeout", math.inf), "motor", None, "command_timeout"),
    ("timeout-nan", set_device("command_timeout", math.nan), "motor", None, "command_timeout"),
    ("timeout-misspelled", set_device("command_timout", 1), "motor", None, "did you mean 'command_timeout'"),
    (
        "timeout-on-plain-buffer",
        lambda raw: raw["panel"].__setitem__("command_timeout", 1),
        "panel",
        None,
        "command_timeout applies to Smart Devices only",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "device", "param", "words"),
    [case[1:] for case in MISTAKES],
    ids=[case[0] for case in MISTAKES],
)
def test_mistakes_raise_one_clear_error(
    mutate: Mutation, device: str | None, param: str | int | None, words: str
) -> None:
    buffer = buffer_module()
    raw = minimal()
    mutate(raw)
    with pytest.raises(buffer.DeviceBufferError) as info:
        catalog.validate(raw, source="robot/broken.yaml")
    message, context = info.value.message, info.value.context
    assert message.startswith("robot/broken.yaml")
    assert words in message
    assert context["source"] == "robot/broken.yaml"
    assert context.get("device") == device
    assert context.get("param") == param
    if device is not None:
        assert repr(device) in message
    if isinstance(param, str):
        assert f"parameter {param!r}" in message
    elif param is not None:
        assert f"parameter #{param}" in message


def test_duplicate_device_id_names_both_types() -> None:
    buffer = buffer_module()
    raw = minimal()
    raw["other-motor"] = {"device_id": 20, "params": []}
    with pytest.raises(buffer.DeviceBufferError, match="'other-motor'.*already used by device type 'motor'"):
        catalog.validate(raw, source="cat.yaml")


@pytest.mark.parametrize("raw", [None, [], "motor", 3])
def test_top_level_must_be_a_mapping(raw: object) -> None:
    buffer = buffer_module()
    with pytest.raises(buffer.DeviceBufferError, match=r"^cat\.yaml: ") as info:
        catalog.validate(raw, source="cat.yaml")
    assert info.value.context == {"source": "cat.yaml"}


def test_too_many_params_on_a_smart_device_is_a_value_error() -> None:
    raw = minimal()
    motor(raw)["params"] = [{"name": f"p{i}", "type": "float"} for i in range(17)]
    with pytest.raises(ValueError, match=r"cat\.yaml.*'motor'.*at most 16") as info:
        catalog.validate(raw, source="cat.yaml")
    assert type(info.value) is ValueError
    del motor(raw)["device_id"]  # A plain buffer may have more.
    assert len(catalog.validate(raw)["motor"]["params"]) == 17


def test_errors_do_not_mutate_input() -> None:
    buffer = buffer_module()
    raw = minimal()
    duty(raw)["lower"] = 5
    before = copy.deepcopy(raw)
    with pytest.raises(buffer.DeviceBufferError, match="greater than upper"):
        catalog.validate(raw)
    assert raw == before


# -- Reading files --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("motor:\n  device_id: 1\n  params: [\n", 4),
        ("motor:\n  params: []\n   bad: indent\n", 3),
        ("motor:\n  params:\n    - {name: x, type: uint8[4]}\n", 3),  # Unquoted [ in a flow mapping.
        ("motor:\n  params: []\nmotor:\n  params: []\n", 3),  # A duplicate key would silently win.
        ("m:\n  params:\n    - {name: x, type: float, name: y}\n", 3),
    ],
    ids=["unclosed", "indent", "unquoted-array", "duplicate-type", "duplicate-param-key"],
)
def test_yaml_errors_name_file_and_line(tmp_path: Path, text: str, line: int) -> None:
    buffer = buffer_module()
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(buffer.DeviceBufferError) as info:
        catalog.load_raw(path)
    assert str(path) in str(info.value)
    assert f"line {line}" in info.value.message
    assert info.value.context == {"source": str(path), "line": line}
    assert info.value.__cause__ is not None


def test_yaml_with_a_schema_mistake_names_file(tmp_path: Path) -> None:
    buffer = buffer_module()
    path = tmp_path / "catalog.yaml"
    path.write_text("motor:\n  device_id: 1\n  params:\n    - {name: x, type: flaot}\n")
    with pytest.raises(buffer.DeviceBufferError, match="did you mean 'float'") as info:
        catalog.load_raw(path)
    assert info.value.context == {"source": str(path), "device": "motor", "param": "x"}


def test_empty_file(tmp_path: Path) -> None:
    buffer = buffer_module()
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing yet\n")
    with pytest.raises(buffer.DeviceBufferError, match="empty"):
        catalog.load_raw(path)


@pytest.mark.parametrize("name", ["missing.yaml", "."])
def test_unreadable_file_names_it(tmp_path: Path, name: str) -> None:
    buffer = buffer_module()
    path = tmp_path / name
    with pytest.raises(buffer.DeviceBufferError, match="cannot read") as info:
        catalog.load(path)
    assert info.value.context == {"source": str(path)}
    assert isinstance(info.value.__cause__, OSError)


def nested_lists(depth: int) -> list[Any]:
    """``[[[...]]]``: ``depth`` lists, one in the other."""
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def test_deeply_nested_yaml_is_one_error_not_a_recursion_error(tmp_path: Path) -> None:
    buffer = buffer_module()
    path = tmp_path / "deep.yaml"
    path.write_text("[" * 1000 + "]" * 1000 + "\n")  # deeper than PyYAML's recursion can go
    with pytest.raises(
        buffer.DeviceBufferError, match=f"nested more than {catalog.MAX_NESTING} levels"
    ) as info:
        catalog.load(path)
    assert info.value.context == {"source": str(path), "limit": catalog.MAX_NESTING}
    assert str(path) in info.value.message


@pytest.mark.parametrize(
    "text",
    [
        "[" * 300 + "]" * 300,  # PyYAML reads it; the check refuses it
        "motor: &m {params: [*m]}",  # a mapping inside itself
        "a: &a [*a]",
    ],
    ids=["300-deep", "mapping-in-itself", "list-in-itself"],
)
def test_data_too_deep_or_inside_itself_is_refused(tmp_path: Path, text: str) -> None:
    buffer = buffer_module()
    path = tmp_path / "deep.yaml"
    path.write_text(text + "\n")
    with pytest.raises(buffer.DeviceBufferError, match="nested more than .* or inside themselves"):
        catalog.load_raw(path)


def test_nesting_limit_applies_to_validate() -> None:
    buffer = buffer_module()
    # top mapping, device mapping, then lists: exactly MAX_NESTING levels is not a nesting error...
    allowed = {"motor": {"device_id": nested_lists(catalog.MAX_NESTING - 2), "params": []}}
    with pytest.raises(buffer.DeviceBufferError, match="device_id must be an integer"):
        catalog.validate(allowed, source="cat.yaml")
    # ...one more is.
    too_deep = {"motor": {"device_id": nested_lists(catalog.MAX_NESTING - 1), "params": []}}
    with pytest.raises(buffer.DeviceBufferError, match="nested more than") as info:
        catalog.validate(too_deep, source="cat.yaml")
    assert info.value.context == {"source": "cat.yaml", "limit": catalog.MAX_NESTING}


def test_aliases_that_multiply_the_catalog_are_refused_quickly(tmp_path: Path) -> None:
    buffer = buffer_module()
    params = "".join(f"    - {{name: p{index}, type: float}}\n" for index in range(60))
    uses = "".join(f"copy{index}: {{params: *p}}\n" for index in range(2000))
    path = tmp_path / "aliases.yaml"
    path.write_text(f"base:\n  params: &p\n{params}{uses}")  # 60 KB that mean 120,000 parameters
    started = time.monotonic()
    with pytest.raises(buffer.DeviceBufferError, match="too many values") as info:
        catalog.load(path)
    assert time.monotonic() - started < 1.5
    assert info.value.context == {"source": str(path), "limit": catalog.MAX_CATALOG_NODES}


def test_aliases_within_the_limit_still_work() -> None:
    raw = catalog.load_raw()  # the packaged catalog shares the bears' parameters through an alias
    assert raw["polar-bear"]["params"] == raw["yogi-bear"]["params"]


def test_file_size_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    buffer = buffer_module()
    text = "panel:\n  params: []\n"
    monkeypatch.setattr(catalog, "MAX_CATALOG_SIZE", len(text))
    path = tmp_path / "cap.yaml"
    path.write_text(text)
    assert list(catalog.load_raw(path)) == ["panel"]  # exactly the cap: fine
    path.write_text(text + "\n")
    with pytest.raises(buffer.DeviceBufferError, match="too large") as info:
        catalog.load_raw(path)
    message = info.value.message
    assert message.startswith(f"{path}: ")
    assert f"{len(text) + 1} bytes" in message and f"the limit is {len(text)} bytes" in message
    assert info.value.context == {"source": str(path), "size": len(text) + 1, "limit": len(text)}


def test_a_50_mb_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    buffer = buffer_module()
    path = tmp_path / "huge.yaml"
    with open(path, "wb") as file:
        file.truncate(50_000_000)  # sparse
    started = time.monotonic()
    with pytest.raises(buffer.DeviceBufferError, match="50000000 bytes") as info:
        catalog.load(path)
    assert time.monotonic() - started < 0.5
    assert info.value.context["limit"] == catalog.MAX_CATALOG_SIZE == 1 << 20


def test_a_file_that_grows_while_read_is_read_no_further_than_the_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fstat said small, but there is more: at most MAX_CATALOG_SIZE + 1 bytes are read."""
    buffer = buffer_module()
    path = tmp_path / "growing.yaml"
    path.write_text("#" * 1000)
    monkeypatch.setattr(catalog, "MAX_CATALOG_SIZE", 100)
    real_fstat = os.fstat

    def stale_fstat(fd: int) -> os.stat_result:
        info = list(real_fstat(fd))
        info[6] = 10  # st_size, as it was a moment ago
        return os.stat_result(info)

    reads: list[int] = []
    real_open = open

    def spying_open(*args: Any, **kwargs: Any) -> Any:
        file = real_open(*args, **kwargs)
        read = file.read
        file.read = lambda size=-1: reads.append(size) or read(size)
        return file

    monkeypatch.setattr(os, "fstat", stale_fstat)
    monkeypatch.setattr(catalog, "open", spying_open, raising=False)
    with pytest.raises(buffer.DeviceBufferError, match="more than 100 bytes") as info:
        catalog.load_raw(path)
    assert reads == [101]
    assert info.value.context == {"source": str(path), "limit": 100}


@pytest.mark.parametrize("kind", ["device", "pipe"])
def test_only_regular_files_are_read(tmp_path: Path, kind: str) -> None:
    buffer = buffer_module()
    if kind == "device":
        path = Path("/dev/zero")  # endless: reading it whole would exhaust memory
        described = "a character device"
    else:
        path = tmp_path / "fifo"
        os.mkfifo(path)  # no writer: opening it must not wait for one
        described = "a pipe"
    with pytest.raises(
        buffer.DeviceBufferError, match=f"cannot read device catalog: not a regular file but {described}"
    ) as info:
        catalog.load(path)
    assert info.value.context == {"source": str(path)}
    assert isinstance(info.value.__cause__, OSError)


# -- load(): buffer types ----------------------------------------------------------------------------------


def test_load_makes_buffer_types(raw: dict[str, dict[str, Any]]) -> None:
    buffer = buffer_module()
    types = catalog.load()
    assert list(types) == list(FACTS)
    for type_name, (device_id, facts) in FACTS.items():
        buffer_type = types[type_name]
        assert issubclass(buffer_type, buffer.Buffer)
        if device_id is None:
            assert not issubclass(buffer_type, buffer.DeviceBuffer), type_name
        else:
            assert issubclass(buffer_type, buffer.DeviceBuffer), type_name
            assert buffer_type.device_id == device_id
        assert list(buffer_type.params) == [fact.split()[0] for fact in facts]
    duty_cycle = types["yogi-bear"].params["duty_cycle"]
    assert (duty_cycle.lower, duty_cycle.upper, duty_cycle.writeable) == (-1, 1, True)
    assert types["yogi-bear"].params["pid_pos_kp"].readable is False


def test_load_from_path(tmp_path: Path) -> None:
    buffer = buffer_module()
    path = tmp_path / "custom.yaml"
    path.write_text("panel:\n  params:\n    - {name: lit, type: bool, writeable: true}\n")
    types = catalog.load(path)
    assert list(types) == ["panel"]
    assert issubclass(types["panel"], buffer.Buffer)
    assert not issubclass(types["panel"], buffer.DeviceBuffer)


# -- Safe values and command timeouts -----------------------------------------------------------------------


def test_packaged_catalog_has_safe_values_on_exactly_the_actuators(raw: dict[str, dict[str, Any]]) -> None:
    with_safe = {
        (name, param["name"]): param["safe"]
        for name, entry in raw.items()
        for param in entry["params"]
        if "safe" in param
    }
    assert set(with_safe) == ACTUATORS
    assert all(value == 0 and type(value) is float for value in with_safe.values())
    assert all("command_timeout" not in entry for entry in raw.values())


def test_packaged_buffer_types_carry_the_safe_values() -> None:
    buffer = buffer_module()
    types = catalog.load()
    for name, buffer_type in types.items():
        for param in buffer_type.params.values():
            expected = 0.0 if (name, param.name) in ACTUATORS else None
            assert param.safe == expected, (name, param.name)
        if issubclass(buffer_type, buffer.DeviceBuffer):
            assert buffer_type.command_timeout is None, name


def with_safety() -> dict[str, Any]:
    """minimal() with a safe value of every kind and a command timeout."""
    raw = minimal()
    duty(raw)["safe"] = 0
    motor(raw)["command_timeout"] = 2
    motor(raw)["params"] += [
        {"name": "on", "type": "bool", "writeable": True, "safe": False},
        {"name": "mode", "type": "uint8", "writeable": True, "lower": 1, "upper": 3, "safe": 2.0},
        {"name": "trim", "type": "int16", "writeable": True, "readable": False, "safe": -300},
        {"name": "edge", "type": " float ", "id": 9, "writeable": True, "lower": -1, "upper": 1, "safe": -1},
    ]
    return raw


def test_safe_values_and_command_timeout_are_accepted_and_normalized() -> None:
    raw = with_safety()
    before = copy.deepcopy(raw)
    result = catalog.validate(raw)
    assert raw == before
    checked = {param["name"]: param for param in result["motor"]["params"]}
    assert [
        (checked[name]["safe"], type(checked[name]["safe"])) for name in ("duty", "on", "mode", "trim")
    ] == [
        (0.0, float),
        (False, bool),
        (2, int),
        (-300, int),
    ]
    assert checked["edge"]["safe"] == -1.0  # on a bound: inside
    assert "safe" not in checked["flags"]
    assert result["motor"]["command_timeout"] == 2.0 and type(result["motor"]["command_timeout"]) is float
    assert list(result["motor"]) == list(raw["motor"])  # the file's key order


def test_safe_values_and_command_timeout_reach_the_buffer_types() -> None:
    buffer = buffer_module()
    types = buffer.BufferStore.make_catalog(catalog.validate(with_safety()))
    motor_type = types["motor"]
    assert motor_type.command_timeout == 2.0
    assert {name: param.safe for name, param in motor_type.params.items()} == {
        "duty": 0.0, "flags": None, "on": False, "mode": 2, "trim": -300, "edge": -1.0,
    }  # fmt: skip
    assert "command_timeout" not in vars(types["panel"])


def test_safe_values_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "safe.yaml"
    path.write_text(
        "arm:\n  device_id: 40\n  command_timeout: 0.25\n  params:\n"
        "    - {name: grip, type: bool, writeable: true, safe: true}\n"
        "    - {name: speed, type: float, writeable: true, lower: -.inf, upper: 5, safe: -7.5}\n"
    )
    raw = catalog.load_raw(path)
    assert raw["arm"]["command_timeout"] == 0.25
    assert [param["safe"] for param in raw["arm"]["params"]] == [True, -7.5]
    arm = catalog.load(path)["arm"]
    assert (arm.params["grip"].safe, arm.params["speed"].safe) == (True, -7.5)


# What only validate() refuses: an empty "safe:" (make_catalog reads None as "no safe value"), and a
# command_timeout on a plain buffer (make_catalog keeps it as an unused class attribute).
ONLY_VALIDATE_REFUSES = {"safe-none", "timeout-on-plain-buffer"}
AGREEING = [case for case in MISTAKES if case[0].startswith(("safe-", "timeout-"))]


@pytest.mark.parametrize(
    "mutate",
    [case[1] for case in AGREEING if case[0] not in ONLY_VALIDATE_REFUSES],
    ids=[case[0] for case in AGREEING if case[0] not in ONLY_VALIDATE_REFUSES],
)
def test_the_buffer_layer_refuses_what_validate_refuses(mutate: Mutation) -> None:
    """validate() says it first and better, but agrees with make_catalog on what is wrong."""
    buffer = buffer_module()
    raw = minimal()
    mutate(raw)
    with pytest.raises(buffer.DeviceBufferError):
        catalog.validate(raw)
    with pytest.raises(buffer.DeviceBufferError):
        buffer.BufferStore.make_catalog(raw)


def test_describe_type_and_schemas_carry_safe_values_and_command_timeout() -> None:
    buffer = buffer_module()
    from runtime import schema

    types = buffer.BufferStore.make_catalog(catalog.validate(with_safety()))
    described = schema.describe_type(types["motor"])
    assert described["command_timeout"] == 2.0
    safe = {param["name"]: param.get("safe", "absent") for param in described["params"]}
    assert safe == {"duty": 0.0, "flags": "absent", "on": False, "mode": 2, "trim": -300, "edge": -1.0}
    assert type(safe["mode"]) is int and type(safe["duty"]) is float
    json.dumps(described, allow_nan=False)  # plain JSON
    written = schema.write_schema(types["motor"])
    assert written["x-command-timeout"] == 2.0
    assert written["properties"]["duty"]["x-safe"] == 0.0
    assert written["properties"]["on"]["x-safe"] is False
    assert "x-safe" not in schema.buffer_schema(types["motor"])["properties"]["values"]["properties"]["flags"]
    panel = schema.describe_type(types["panel"])
    assert "command_timeout" not in panel and all("safe" not in param for param in panel["params"])
    assert "x-command-timeout" not in schema.write_schema(types["panel"])


def test_packaged_descriptions_name_the_safe_values() -> None:
    from runtime import schema

    types = catalog.load()
    described = schema.describe_catalog(types)
    found = {
        (name, param["name"])
        for name, entry in described.items()
        for param in entry["params"]
        if "safe" in param
    }
    assert found == ACTUATORS
    assert all("command_timeout" not in entry for entry in described.values())
    yogi = schema.write_schema(types["yogi-bear"])
    assert [name for name, value in yogi["properties"].items() if "x-safe" in value] == ["duty_cycle"]
    assert "x-command-timeout" not in yogi


def test_catalog_differences_ignore_safe_values() -> None:
    """A recording made before the catalog had safe values still matches; a real change does not."""
    from runtime import schema

    types = catalog.load()
    recorded = schema.describe_catalog(types, ["koala-bear"])
    for param in recorded["koala-bear"]["params"]:
        param.pop("safe", None)
    assert schema.catalog_differences(recorded, types) == []
    recorded["koala-bear"]["params"][0]["upper"] = 2.0
    assert schema.catalog_differences(recorded, types) == [
        "koala-bear: parameter duty_cycle_a: upper 2.0 in the recording, 1.0 in this catalog"
    ]


def run_catalog_command(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    from runtime.tools.cli import main

    assert main(["catalog", *argv]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    return captured.out


def test_catalog_command_shows_safe_values(capsys: pytest.CaptureFixture[str]) -> None:
    text = run_catalog_command(capsys)
    safe_lines = [line for line in text.splitlines() if line.startswith("safe values")]
    assert safe_lines == [
        "safe values (held when nobody commands them): servo0 = 0, servo1 = 0",
        "safe values (held when nobody commands them): duty_cycle = 0",
        "safe values (held when nobody commands them): duty_cycle = 0",
        "safe values (held when nobody commands them): duty_cycle_a = 0, duty_cycle_b = 0",
    ]
    assert "command timeout" not in text
    koala = text.split("koala-bear:")[1].splitlines()
    assert koala[1] == "safe values (held when nobody commands them): duty_cycle_a = 0, duty_cycle_b = 0"
    data = json.loads(run_catalog_command(capsys, "--json"))
    found = {
        (name, param["name"]): param["safe"]
        for name, entry in data["types"].items()
        for param in entry["params"]
        if "safe" in param
    }
    assert found == dict.fromkeys(ACTUATORS, 0.0)
    assert all("command_timeout" not in entry for entry in data["types"].values())


def test_catalog_command_shows_a_command_timeout(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "arm.yaml"
    path.write_text(
        "arm:\n  device_id: 40\n  command_timeout: 0.5\n  params:\n"
        "    - {name: grip, type: bool, writeable: true, safe: true}\n"
        "    - {name: mode, type: int8, writeable: true, safe: -3}\n"
        "    - {name: speed, type: float, writeable: true, safe: 0.25}\n"
        "    - {name: gain, type: float, writeable: true}\n"
    )
    text = run_catalog_command(capsys, "--catalog", str(path))
    lines = text.splitlines()
    assert lines[0] == "arm: device_id 40, sub 0.04 s, write 0.04 s, heartbeat 1 s, command timeout 0.5 s"
    assert lines[1] == "safe values (held when nobody commands them): grip = true, mode = -3, speed = 0.25"
    arm = json.loads(run_catalog_command(capsys, "--catalog", str(path), "--json"))["types"]["arm"]
    assert arm["command_timeout"] == 0.5
    assert [param.get("safe", "absent") for param in arm["params"]] == [True, -3, 0.25, "absent"]
    check = run_catalog_command(capsys, "--check", str(path))
    assert check == f"ok: {path}: 1 device type\n"


# -- units and descriptions: words for people, no part of a layout -------------------------------------


def test_every_packaged_parameter_of_the_spec_has_a_description_and_the_voltages_a_unit(
    raw: dict[str, dict[str, Any]],
) -> None:
    for name in FACTS:
        for param in raw[name]["params"]:
            assert param.get("description"), (name, param["name"])
    assert {p["name"]: p.get("unit") for p in raw["battery"]["params"] if p.get("unit")} == {
        "v_cell1": "V", "v_cell2": "V", "v_cell3": "V", "v_batt": "V", "dv_cell2": "V", "dv_cell3": "V",
    }  # fmt: skip
    motor = {p["name"]: p for p in raw["yogi-bear"]["params"]}
    assert (
        motor["motor_current"]["unit"] == "A" and "duty_cycle" in motor and "unit" not in motor["duty_cycle"]
    )


def test_units_and_descriptions_reach_the_types_and_schemas_but_not_the_layout() -> None:
    from runtime import schema

    raw = {
        "motor": {
            "device_id": 90,
            "params": [{"name": "speed", "type": "float", "writeable": True, "lower": -1, "upper": 1}],
        }
    }
    plain = catalog.make_catalog(catalog.validate(copy.deepcopy(raw)))["motor"]
    raw["motor"]["params"][0].update(unit="m/s", description="how fast it goes")
    worded = catalog.make_catalog(catalog.validate(raw))["motor"]
    speed = worded.params["speed"]
    assert (speed.unit, speed.description) == ("m/s", "how fast it goes")
    assert plain.params["speed"].unit is None and plain.params["speed"].description is None
    assert worded._fingerprint == plain._fingerprint  # words never change the segments' layout
    value = schema.buffer_schema(worded)["properties"]["values"]["properties"]["speed"]
    assert value["x-unit"] == "m/s" and value["description"] == "float, writeable, in m/s: how fast it goes"
    described = schema.describe_type(worded)["params"][0]
    assert (described["unit"], described["description"]) == ("m/s", "how fast it goes")
    # A recording made before (or with other words) still matches: words are not data.
    assert schema.catalog_differences({"motor": schema.describe_type(plain)}, {"motor": worded}) == []
    assert (
        schema.catalog_differences({"motor": described and schema.describe_type(worded)}, {"motor": plain})
        == []
    )


def test_catalog_command_shows_units_and_descriptions(capsys: pytest.CaptureFixture[str]) -> None:
    text = run_catalog_command(capsys, "battery")
    assert "  v_batt (V): voltage of the whole battery" in text.splitlines()
    data = json.loads(run_catalog_command(capsys, "--json", "battery"))
    v_batt = data["types"]["battery"]["params"][5]
    assert (v_batt["name"], v_batt["unit"], v_batt["description"]) == (
        "v_batt",
        "V",
        "voltage of the whole battery",
    )


def test_buffers_show_gives_units_and_descriptions(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from runtime.buffer import NAMESPACE_ENV, BufferStore, DeviceUID
    from runtime.tools.cli import main

    types = catalog.load()
    monkeypatch.setenv(NAMESPACE_ENV, f"rt-test-catalog-units-{os.getpid()}-{time.monotonic_ns():x}")
    key = f"battery:{int(DeviceUID(types['battery'].device_id, 9, 1)):#x}"
    with BufferStore(types) as store:
        try:
            battery: Any = store.get_or_open(("battery", int(key.partition(":")[2], 16)))
            battery.serve()  # the test plays the bridge
            battery.set("v_batt", 11.5)
            assert main(["buffers", "show", key]) == 0
            out = capsys.readouterr().out
            assert "11.5" in out and "  v_batt (V): voltage of the whole battery" in out.splitlines()
            assert main(["buffers", "show", key, "--json"]) == 0
            params = {p["name"]: p for p in json.loads(capsys.readouterr().out)["params"]}
            assert params["v_batt"]["unit"] == "V"
            assert params["v_batt"]["description"] == "voltage of the whole battery"
        finally:
            store.unlink_all()
