"""The ``runtime`` command line: output and exit status of every command.

Most tests run the program in-process through ``runtime.tools.cli.main`` and read
what it printed with ``capsys``; a few run ``python -m runtime`` as a real
process, end to end. The wire-format examples are the worked examples of the
protocol spec, over a catalog file holding the spec's device type.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e import namespace_fixture, run, runtime_process

from runtime import catalog
from runtime.buffer import NAMESPACE_ENV, Buffer, BufferStore, DeviceBuffer, Parameter
from runtime.messaging import ErrorCode, Message, MessageType
from runtime.tools import cli
from runtime.tools._common import log_level

SPEC_CATALOG = """\
# The device type of the protocol spec's worked examples.
spec-device:
  device_id: 60
  params:
    - {name: flag, type: bool, writeable: true, readable: false}
    - {name: duty_cycle, type: double}
    - {name: id, type: uint32, writeable: true}
# Wide values, to see DEV_WRITE split over several messages.
blob:
  device_id: 61
  params:
    - {name: text, type: 'char[200]', writeable: true}
    - {name: bytes, type: 'uint8[100]', writeable: true}
    - {name: small, type: int8, writeable: true, lower: -10, upper: 10}
"""

# (encoded frame, raw message) of the spec's worked examples.
DEV_DATA_EXAMPLE = "04 15 06 02 06 6d e7 fb bd dd"
DEV_READ_EXAMPLE = "04 13 02 06 02 17"
DEV_WRITE_EXAMPLE = "04 14 07 05 07 01 ef be ad de 35"

COMMAND_PATHS = [
    [],
    ["bridge"],
    ["emulate"],
    ["buffers"],
    ["buffers", "list"],
    ["buffers", "show"],
    ["buffers", "watch"],
    ["msg"],
    ["msg", "decode"],
    ["msg", "encode"],
    ["catalog"],
    ["demo"],
]


@pytest.fixture
def spec_catalog(tmp_path: Path) -> str:
    """A catalog file with the spec's device type (and a wide one)."""
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC_CATALOG)
    return str(path)


def run_json(capsys: pytest.CaptureFixture[str], *argv: str, status: int = 0) -> Any:
    code, out, err = run(capsys, *argv, "--json")
    assert code == status, err
    return json.loads(out)


# ---- the parser -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", COMMAND_PATHS, ids=lambda path: " ".join(path) or "runtime")
def test_help_explains_every_command_with_examples(
    capsys: pytest.CaptureFixture[str], path: list[str]
) -> None:
    status, out, _ = run(capsys, *path, "--help")
    assert status == 0
    assert out.startswith(f"usage: runtime {' '.join(path)}".rstrip())
    assert "example" in out


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        ([], "required: COMMAND"),
        (["fly"], "invalid choice: 'fly'"),
        (["buffers"], "required: ACTION"),
        (["buffers", "watch", "--count", "0"], "must be an integer from 1 to"),
        (["buffers", "watch", "--interval", "soon"], "not a number"),
        (["msg", "decode"], "required: HEX"),
        (["msg", "encode", "bogus"], "invalid choice: 'bogus'"),
        (["msg", "encode", "ping", "--typo"], "unrecognized arguments: --typo"),
        (["catalog", "--nope"], "unrecognized arguments: --nope"),
        (["demo", "--duration", "-1"], "must be a positive number"),
        (["--log-level", "LOUD", "catalog"], "invalid choice: 'LOUD'"),
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message(
    capsys: pytest.CaptureFixture[str], argv: list[str], complaint: str
) -> None:
    status, out, err = run(capsys, *argv)
    assert status == 2
    assert out == ""
    assert "usage: runtime" in err
    assert complaint in err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "--version")
    assert status == 0
    assert out.startswith("runtime ")


# ---- msg decode -----------------------------------------------------------------------------------


def test_decode_spec_dev_data(capsys: pytest.CaptureFixture[str], spec_catalog: str) -> None:
    [data] = run_json(
        capsys, "msg", "decode", "--catalog", spec_catalog, "--type", "spec-device", DEV_DATA_EXAMPLE
    )
    assert data["type"] == "DEV_DATA"
    assert data["type_code"] == 0x15
    assert data["payload"] == "02 00 6d e7 fb bd"
    assert data["params"] == 0b010
    assert data["param_names"] == ["duty_cycle"]
    assert data["values"] == {"duty_cycle": -0.123}


def test_decode_spec_dev_read(capsys: pytest.CaptureFixture[str], spec_catalog: str) -> None:
    [data] = run_json(
        capsys, "msg", "decode", "--catalog", spec_catalog, "--type", "spec-device", DEV_READ_EXAMPLE
    )
    assert (data["type"], data["params"], data["param_names"]) == ("DEV_READ", 0b110, ["duty_cycle", "id"])


def test_decode_spec_dev_write(capsys: pytest.CaptureFixture[str], spec_catalog: str) -> None:
    [data] = run_json(
        capsys, "msg", "decode", "--catalog", spec_catalog, "--type", "spec-device", DEV_WRITE_EXAMPLE
    )
    assert (data["type"], data["params"], data["param_names"]) == ("DEV_WRITE", 0b101, ["flag", "id"])
    assert data["values"] == {"flag": True, "id": 0xDEADBEEF}


def test_decode_text_output(capsys: pytest.CaptureFixture[str], spec_catalog: str) -> None:
    status, out, _ = run(
        capsys,
        "msg",
        "decode",
        "--catalog",
        spec_catalog,
        "--type",
        "spec-device",
        *DEV_WRITE_EXAMPLE.split(),
    )
    assert status == 0
    assert "DEV_WRITE (0x14), payload 7 bytes" in out
    assert "params: 0x0005 = flag, id" in out
    assert "flag = true" in out
    assert f"id = {0xDEADBEEF}" in out


@pytest.mark.parametrize(
    "words",
    [
        ["04150602066de7fbbddd"],
        ["04150602066de7fbbddd00"],
        ["04 15 06 02 06 6d e7 fb bd dd 00"],
        ["0x04150602066de7fbbddd"],
        ["04:15:06:02:06:6d:e7:fb:bd:dd"],
        DEV_DATA_EXAMPLE.split() + ["00"],
        ["04 15 06", "02066D", "E7FBBDDD"],
    ],
)
def test_decode_accepts_hex_in_any_spacing(capsys: pytest.CaptureFixture[str], words: list[str]) -> None:
    [data] = run_json(capsys, "msg", "decode", *words)
    assert data["frame"] == DEV_DATA_EXAMPLE
    assert data["type"] == "DEV_DATA"


def test_decode_without_type_shows_bitmap_and_raw_values(capsys: pytest.CaptureFixture[str]) -> None:
    [data] = run_json(capsys, "msg", "decode", DEV_DATA_EXAMPLE)
    assert data["params"] == 2
    assert "param_names" not in data
    assert data["value_bytes"] == "6d e7 fb bd"
    status, out, _ = run(capsys, "msg", "decode", DEV_DATA_EXAMPLE)
    assert status == 0
    assert "give --type to decode them" in out


def test_decode_several_frames_separated_by_delimiters(capsys: pytest.CaptureFixture[str]) -> None:
    frames = run_json(capsys, "msg", "decode", "02 10 02 10 00", DEV_READ_EXAMPLE, "00", "05 17 01 07 11")
    assert [frame["type"] for frame in frames] == ["PING", "DEV_READ", "HB_REQ"]
    assert frames[2]["heartbeat_id"] == 7


def test_decode_names_the_device_type_of_a_subscription_response(capsys: pytest.CaptureFixture[str]) -> None:
    uid = 10 << 72 | 0x0A << 64 | 0xC0FFEE
    frame = Message.make_sub_res(0b11, 40, 10, 0x0A, 0xC0FFEE).encode().hex()
    [data] = run_json(capsys, "msg", "decode", frame)
    assert data["device_type"] == "yogi-bear"
    assert data["param_names"] == ["duty_cycle", "pid_pos_setpoint"]
    assert data["uid"]["uid"] == uid
    assert data["uid"]["hex"] == hex(uid)
    assert data["interval_ms"] == 40


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("04 15 06 02 06 6d e7 fb bd de", ErrorCode.BAD_CHECKSUM),  # last byte changed
        ("02 10", ErrorCode.UNEXPECTED_DELIMITER),  # one byte: shorter than any message
        ("05 15 06 02", ErrorCode.UNEXPECTED_DELIMITER),  # COBS block runs past the end
        ("02 99 02 99", ErrorCode.INVALID_TYPE),  # raw 99 00 99
        ("02 ff 02 ff", ErrorCode.GENERIC_ERROR),  # raw ff 00 ff: an ERROR without its code byte
    ],
)
def test_decode_errors_name_the_protocol_error_code(
    capsys: pytest.CaptureFixture[str], frame: str, code: ErrorCode
) -> None:
    status, out, _ = run(capsys, "msg", "decode", frame)
    assert status == 1
    assert f"[{code.name} {int(code):#04x}]" in out
    [data] = run_json(capsys, "msg", "decode", frame, status=1)
    assert data["error_code"] == code.name
    assert data["error_code_value"] == int(code)
    assert data["error"]


def test_decode_values_that_do_not_fit_the_type_are_an_error(
    capsys: pytest.CaptureFixture[str], spec_catalog: str
) -> None:
    # A DEV_DATA flagging parameter 2 (uint32) with only 2 value bytes.
    frame = Message(MessageType.DEV_DATA, bytes([0b100, 0, 1, 2])).encode().hex()
    status, out, _ = run(capsys, "msg", "decode", "--catalog", spec_catalog, "--type", "spec-device", frame)
    assert status == 1
    assert "does not match" in out
    assert "GENERIC_ERROR" in out


def test_decode_one_bad_frame_among_good_ones(capsys: pytest.CaptureFixture[str]) -> None:
    frames = run_json(capsys, "msg", "decode", DEV_READ_EXAMPLE, "00", "02 10", status=1)
    assert frames[0]["type"] == "DEV_READ"
    assert frames[1]["error_code"] == "UNEXPECTED_DELIMITER"


@pytest.mark.parametrize(
    ("words", "complaint"),
    [(["04 1g"], "not hexadecimal"), (["041"], "odd number"), (["00 00"], "no frame")],
)
def test_decode_bad_hex_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], words: list[str], complaint: str
) -> None:
    status, _, err = run(capsys, "msg", "decode", *words)
    assert status == 2
    assert complaint in err


def test_decode_unknown_or_plain_type_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "msg", "decode", "--type", "yogi-baer", DEV_READ_EXAMPLE)
    assert status == 2
    assert "did you mean 'yogi-bear'" in err
    status, _, err = run(capsys, "msg", "decode", "--type", "gamepad", DEV_READ_EXAMPLE)
    assert status == 2
    assert "not a Smart Device" in err


# ---- msg encode -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (["dev-data", "duty_cycle=-0.123"], DEV_DATA_EXAMPLE),
        (["dev-read", "duty_cycle", "id"], DEV_READ_EXAMPLE),
        (["dev-write", "flag=true", "id=0xDEADBEEF"], DEV_WRITE_EXAMPLE),
    ],
)
def test_encode_spec_examples(
    capsys: pytest.CaptureFixture[str], spec_catalog: str, fields: list[str], expected: str
) -> None:
    status, out, err = run(
        capsys, "msg", "encode", "--catalog", spec_catalog, "--type", "spec-device", *fields
    )
    assert status == 0, err
    assert out == expected + "\n"


def test_encode_options_may_come_anywhere(capsys: pytest.CaptureFixture[str], spec_catalog: str) -> None:
    status, out, _ = run(
        capsys,
        "msg",
        "encode",
        "dev-read",
        "duty_cycle",
        "--type",
        "spec-device",
        "id",
        "--catalog",
        spec_catalog,
    )
    assert status == 0
    assert out.strip() == DEV_READ_EXAMPLE


def test_encode_json_gives_raw_and_encoded(capsys: pytest.CaptureFixture[str], spec_catalog: str) -> None:
    [data] = run_json(
        capsys,
        "msg",
        "encode",
        "--catalog",
        spec_catalog,
        "-t",
        "spec-device",
        "dev-read",
        "duty_cycle",
        "id",
    )
    assert data == {"type": "DEV_READ", "raw": "13 02 06 00 17", "encoded": DEV_READ_EXAMPLE}


ROUND_TRIPS: list[tuple[list[str], dict[str, Any]]] = [
    (["ping"], {"type": "PING"}),
    (["dev-disable"], {"type": "DEV_DISABLE"}),
    (["sub-req", "--params", "0x3", "--interval", "40"], {"type": "SUB_REQ", "params": 3, "interval_ms": 40}),
    (["sub-req", "--params", "0", "--interval", "0"], {"type": "SUB_REQ", "params": 0, "interval_ms": 0}),
    (
        ["sub-req", "--type", "rfid"],
        {"type": "SUB_REQ", "params": 0b11, "param_names": ["id", "tag_detect"], "interval_ms": 100},
    ),
    (
        ["dev-read", "--type", "yogi-bear", "duty_cycle", "enc_pos"],
        {"type": "DEV_READ", "params": 1 | 1 << 10, "param_names": ["duty_cycle", "enc_pos"]},
    ),
    (["dev-read", "--params", "0xffff"], {"type": "DEV_READ", "params": 0xFFFF}),
    (["hb-req", "7"], {"type": "HB_REQ", "heartbeat_id": 7}),
    (["hb-res", "0xff"], {"type": "HB_RES", "heartbeat_id": 255}),
    (["error", "bad-checksum"], {"type": "ERROR", "error_code": "BAD_CHECKSUM"}),
    (["error", "0xfa"], {"type": "ERROR", "error_code": "BACKOFF"}),
    (
        ["dev-write", "--type", "servo-motor", "servo0=0.5"],
        {"type": "DEV_WRITE", "params": 1, "values": {"servo0": 0.5}},
    ),
    (
        ["dev-write", "--type", "koala-bear", "motor_enabled_b=on", "drive_mode_a=3", "duty_cycle_b=-1"],
        {
            "type": "DEV_WRITE",
            "param_names": ["drive_mode_a", "duty_cycle_b", "motor_enabled_b"],
            "values": {"drive_mode_a": 3, "duty_cycle_b": -1.0, "motor_enabled_b": True},
        },
    ),
    (
        ["dev-data", "--type", "battery", "is_unsafe=1", "v_batt=11.1"],
        {"type": "DEV_DATA", "values": {"is_unsafe": True, "v_batt": 11.1}},
    ),
    (
        ["sub-res", "--type", "encoder", "--uid", "0x3010000000000000001", "--interval", "50"],
        {"type": "SUB_RES", "params": 1, "interval_ms": 50, "device_type": "encoder"},
    ),
]


@pytest.mark.parametrize(
    ("fields", "expected"), ROUND_TRIPS, ids=lambda value: " ".join(value) if isinstance(value, list) else ""
)
def test_encode_then_decode_round_trips(
    capsys: pytest.CaptureFixture[str], fields: list[str], expected: dict[str, Any]
) -> None:
    status, out, err = run(capsys, "msg", "encode", *fields)
    assert status == 0, err
    frames = out.split("\n")[:-1]
    assert len(frames) == 1
    type_option = fields[fields.index("--type") : fields.index("--type") + 2] if "--type" in fields else []
    [data] = run_json(capsys, "msg", "decode", *type_option, frames[0])
    assert {key: data.get(key) for key in expected} == expected


def test_encode_splits_values_too_wide_for_one_payload(
    capsys: pytest.CaptureFixture[str], spec_catalog: str
) -> None:
    text = "x" * 199
    status, out, err = run(
        capsys, "msg", "encode", "--catalog", spec_catalog, "--type", "blob", "dev-write",
        f"text={text}", "bytes=" + ",".join(["7"] * 100), "small=-3",
    )  # fmt: skip
    assert status == 0, err
    frames = out.split()
    messages = out.strip().split("\n")
    assert len(messages) == 2 and frames
    decoded = [
        run_json(capsys, "msg", "decode", "--catalog", spec_catalog, "--type", "blob", message)[0]
        for message in messages
    ]
    values: dict[str, Any] = {}
    for data in decoded:
        assert data["type"] == "DEV_WRITE"
        values.update(data["values"])
    assert values == {"text": text, "bytes": [7] * 100, "small": -3}


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        (
            ["dev-read", "--type", "yogi-bear", "duty_cycel"],
            "no parameter 'duty_cycel' (did you mean 'duty_cycle'?)",
        ),
        (["dev-read", "duty_cycle"], "need --type"),
        (["dev-read"], "give --params BITMAP"),
        (["dev-read", "--type", "yogi-bear", "pid_pos_kp"], "not readable"),
        (["dev-write", "--type", "yogi-bear", "enc_vel=1"], "enc_vel: read-only"),
        (["dev-write", "--type", "servo-motor", "servo0=1.5"], "servo0: 1.5 is out of bounds [-1, 1]"),
        (["dev-write", "--type", "servo-motor", "servo0=fast"], "not a number"),
        (["dev-write", "--type", "servo-motor", "servo0"], "NAME=VALUE"),
        (["dev-write", "--type", "servo-motor"], "give the values"),
        (["dev-write", "servo0=0.5"], "needs --type"),
        (["dev-write", "--type", "team-flag", "blue=maybe"], "blue: 'maybe' is not true or false"),
        (
            ["dev-write", "--type", "koala-bear", "drive_mode_a=256"],
            "drive_mode_a: 256 is out of bounds [0, 255]",
        ),
        (["hb-req"], "takes one field"),
        (["hb-req", "256"], "0..255"),
        (["ping", "extra"], "takes no fields"),
        (["error", "oops"], "unknown error code"),
        (["sub-req", "--params", "0x10000"], "0..65535"),
        (["sub-res", "--params", "1"], "needs --uid"),
        (["sub-res", "--type", "yogi-bear", "--uid", "0x5"], "has device_id 0"),
        (["ping", "--interval", "40"], "--interval applies"),
        (["ping", "--params", "1"], "--params applies"),
        (["ping", "--uid", "1"], "--uid applies"),
    ],
)
def test_encode_mistakes_are_usage_errors(
    capsys: pytest.CaptureFixture[str], fields: list[str], complaint: str
) -> None:
    status, out, err = run(capsys, "msg", "encode", *fields)
    assert status == 2
    assert out == ""
    assert complaint in err


def test_the_encode_engine_is_the_library_s() -> None:
    from runtime.frames import KINDS, FrameError, encode
    from runtime.messaging import TypeLayout

    layout = TypeLayout.of(catalog.load()["yogi-bear"])
    [typed] = encode("sub-req", ["duty_cycle"], layout=layout, params="0x400", interval="0x28")
    [given] = encode(MessageType.SUB_REQ, ["duty_cycle"], layout=layout, params=1 << 10, interval=40)
    assert typed.encode() == given.encode() and given.read_sub_req() == (1 | 1 << 10, 40)
    [sub_res] = encode("sub-res", layout=layout, uid=0xA0A0000000000C0FFEE)
    assert sub_res.read_sub_res()[2] == (10, 0x0A, 0xC0FFEE)
    [error] = encode("error", ["bad-checksum"])
    assert error.read_error() == ErrorCode.BAD_CHECKSUM
    assert set(KINDS.values()) == set(MessageType)
    with pytest.raises(FrameError, match=r"^servo0: 1.5 is out of bounds \[-1, 1\]$") as caught:
        encode("dev-write", ["servo0=1.5"], layout=TypeLayout.of(catalog.load()["servo-motor"]))
    assert isinstance(caught.value, ValueError) and caught.value.context == {"param": "servo0"}
    with pytest.raises(FrameError, match="--interval applies to sub-req and sub-res only"):
        encode("ping", interval=40)
    with pytest.raises(FrameError, match="the heartbeat id must be in 0..255"):
        encode("hb-req", ["256"])
    with pytest.raises(FrameError, match="unknown kind 'pong' \\(did you mean 'ping'\\?\\)"):
        encode("pong")


# ---- catalog --------------------------------------------------------------------------------------


def test_catalog_lists_types_and_parameters(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "catalog")
    assert status == 0
    assert "yogi-bear: device_id 10, sub 0.04 s, write 0.04 s, heartbeat 1 s" in out
    assert "rfid: device_id 11, sub 0.1 s" in out
    assert "gamepad: plain buffer" in out
    assert "current_thresh" in out and "[2, 10]" in out


def test_catalog_json(capsys: pytest.CaptureFixture[str]) -> None:
    data = run_json(capsys, "catalog")
    assert set(data["types"]) == set(catalog.load_raw())
    yogi = data["types"]["yogi-bear"]
    assert yogi["device_id"] == 10
    assert yogi["params"][0] == {
        "name": "duty_cycle",
        "id": 0,
        "type": "float",
        "readable": True,
        "writeable": True,
        "subscribed": True,
        "lower": -1.0,
        "upper": 1.0,
        "safe": 0.0,
        "description": "motor power: -1 full reverse, 0 stopped, 1 full forward",
    }
    assert "device_id" not in data["types"]["field"]
    assert data["types"]["field"]["params"][2]["type"] == "uint8[4096]"


def test_catalog_of_a_file_filtered_by_type(capsys: pytest.CaptureFixture[str], spec_catalog: str) -> None:
    data = run_json(capsys, "catalog", "--catalog", spec_catalog, "spec-device")
    assert list(data["types"]) == ["spec-device"]
    flag, duty_cycle, id_ = data["types"]["spec-device"]["params"]
    assert (flag["readable"], flag["writeable"]) == (False, True)
    assert duty_cycle["type"] == "double"
    assert (id_["id"], id_["readable"], id_["writeable"]) == (2, True, True)
    status, _, err = run(capsys, "catalog", "--catalog", spec_catalog, "spec-devise")
    assert status == 1
    assert "did you mean 'spec-device'" in err


def test_catalog_check_ok(capsys: pytest.CaptureFixture[str], spec_catalog: str) -> None:
    assert run(capsys, "catalog", "--check") == (0, "ok: the packaged catalog: 15 device types\n", "")
    status, out, _ = run(capsys, "catalog", "--check", spec_catalog)
    assert (status, out) == (0, f"ok: {spec_catalog}: 2 device types\n")
    assert run(capsys, "catalog", "--catalog", spec_catalog, "--check")[:2] == (0, out)
    assert run_json(capsys, "catalog", "--check", spec_catalog) == {
        "ok": True,
        "source": spec_catalog,
        "types": 2,
    }


SEVENTEEN = "\n".join(f"    - {{name: p{index}, type: uint8}}" for index in range(17))
BROKEN_CATALOGS = {
    "typo-in-type": (
        "motor:\n  device_id: 1\n  params:\n    - {name: speed, type: flaot}\n",
        "did you mean 'float'",
    ),
    "duplicate-device-id": (
        "a:\n  device_id: 1\n  params: []\nb:\n  device_id: 1\n  params: []\n",
        "device_id 1 is already used by device type 'a'",
    ),
    "bad-yaml": ("motor:\n  params: [\n", "invalid YAML"),
    "bounds-on-bool": (
        "motor:\n  params:\n    - {name: lit, type: bool, lower: 0}\n",
        "parameter 'lit': bounds (lower/upper) apply to numeric scalar types only",
    ),
    "too-many-params": (f"motor:\n  device_id: 1\n  params:\n{SEVENTEEN}\n", "at most 16 parameters"),
    "unknown-key": ("motor:\n  device_id: 1\n  parms: []\n", "did you mean 'params'"),
}


@pytest.mark.parametrize("name", list(BROKEN_CATALOGS))
def test_catalog_check_reports_the_mistake(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str
) -> None:
    text, complaint = BROKEN_CATALOGS[name]
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    status, out, err = run(capsys, "catalog", "--check", str(path))
    assert status == 1
    assert out == ""
    assert err.startswith("runtime catalog: error: ")
    assert str(path) in err
    assert complaint in err
    data = run_json(capsys, "catalog", "--check", str(path), status=1)
    assert data["ok"] is False
    assert complaint in data["error"]


def test_catalog_check_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status, _, err = run(capsys, "catalog", "--check", str(tmp_path / "nope.yaml"))
    assert status == 1
    assert "cannot read device catalog" in err


def test_catalog_file_given_twice_differently(capsys: pytest.CaptureFixture[str], spec_catalog: str) -> None:
    status, _, err = run(capsys, "catalog", "--catalog", spec_catalog, "--check", spec_catalog + ".other")
    assert status == 2
    assert "give the file once" in err


def test_commands_report_a_broken_catalog(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("motor: 3\n")
    for argv in (["buffers", "list"], ["msg", "encode", "ping"], ["demo"]):
        status, _, err = run(capsys, *argv, "--catalog", str(path))
        assert status == 1, argv
        assert "a device type must be a mapping" in err


# ---- buffers --------------------------------------------------------------------------------------


namespace = namespace_fixture("rt-test-cli", scope="function", autouse=False)


class LiveBuffers:
    """Buffers made by a test, as the bridge would make them."""

    def __init__(self) -> None:
        self.store = BufferStore(catalog.load())
        suffix = random.getrandbits(48)
        self.motor_uid = 10 << 72 | 0x0A << 64 | suffix
        self.switch_uid = 0 << 72 | 0x0A << 64 | suffix
        self.motor = self.store.get_or_open(self.motor_uid)
        self.motor.serve()  # the test is the motor's producer, as the bridge would be
        self.motor.set("enc_pos", 1200.5)
        self.motor.set("duty_cycle", -0.123)
        self.motor.write("pid_pos_kp", 2.0)
        self.switch = self.store.get_or_open(self.switch_uid)  # never served: invalid, as when unplugged
        self.gamepad = self.store.get_or_open(("gamepad", 3))
        self.gamepad.set("joystick_left_x", 0.25)


@pytest.fixture
def live(namespace: str) -> Iterator[LiveBuffers]:
    buffers = LiveBuffers()
    try:
        yield buffers
    finally:
        buffers.store.close()


def test_buffers_list(capsys: pytest.CaptureFixture[str], live: LiveBuffers, namespace: str) -> None:
    status, out, _ = run(capsys, "buffers", "list")
    assert status == 0
    assert f"buffers in namespace '{namespace}'" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[3:] if line.strip()}
    assert rows["yogi-bear"][1:4] == [hex(live.motor_uid), "valid", "never"]
    assert rows["limit-switch"][1:3] == [hex(live.switch_uid), "invalid"]
    assert rows["gamepad"][1:3] == ["0x3", "valid"]


def test_buffers_list_json(capsys: pytest.CaptureFixture[str], live: LiveBuffers, namespace: str) -> None:
    reports = {report["type"]: report for report in run_json(capsys, "buffers", "list")}
    assert set(reports) == {"yogi-bear", "limit-switch", "gamepad"}
    motor = reports["yogi-bear"]
    assert motor["uid"] == live.motor_uid
    assert motor["uid_hex"] == hex(live.motor_uid)
    assert motor["segment"] == f"{namespace}-yogi-bear-{live.motor_uid:x}"
    assert motor["valid"] is True
    assert motor["values"]["enc_pos"] == 1200.5
    assert motor["values"]["duty_cycle"] == -0.123
    assert "pid_pos_kp" not in motor["values"]  # write-only
    switch = reports["limit-switch"]
    assert (switch["valid"], switch["values"], switch["error"]) == (False, None, None)
    assert reports["gamepad"]["smart_device"] is False


def test_buffers_list_recent_update_age(capsys: pytest.CaptureFixture[str], live: LiveBuffers) -> None:
    data = Message.make_dev_data(1 << 10, *_enc_pos_layout(1.5))
    live.motor.update(data)
    [motor] = [r for r in run_json(capsys, "buffers", "list") if r["type"] == "yogi-bear"]
    assert motor["values"]["enc_pos"] == 1.5
    assert 0 <= motor["age"] < 5


def _enc_pos_layout(value: float) -> tuple[Any, bytearray]:
    from runtime.messaging import ParamLayout

    entries = [(0, 0)] * 10 + [(0, 4)]
    return ParamLayout(entries), bytearray(bytes(ctypes.c_float(value)))


def test_buffers_list_empty_namespace(capsys: pytest.CaptureFixture[str], namespace: str) -> None:
    status, out, _ = run(capsys, "buffers", "list")
    assert status == 0
    assert "(none)" in out
    assert run_json(capsys, "buffers", "list") == []


def test_buffers_namespace_option(
    capsys: pytest.CaptureFixture[str], live: LiveBuffers, namespace: str
) -> None:
    assert run_json(capsys, "buffers", "--namespace", namespace + "-other", "list") == []
    assert len(run_json(capsys, "buffers", "list", "--namespace", namespace)) == 3
    assert os.environ[NAMESPACE_ENV] == namespace


@pytest.mark.parametrize("key", ["UID", "HEXUID", "DECIMAL", "yogi-bear:UID"])
def test_buffers_show_keys(capsys: pytest.CaptureFixture[str], live: LiveBuffers, key: str) -> None:
    text = (
        key.replace("HEXUID", f"{live.motor_uid:x}")
        .replace("DECIMAL", str(live.motor_uid))
        .replace("UID", hex(live.motor_uid))
    )
    report = run_json(capsys, "buffers", "show", text)
    assert report["uid"] == live.motor_uid


def test_buffers_show(capsys: pytest.CaptureFixture[str], live: LiveBuffers) -> None:
    status, out, _ = run(capsys, "buffers", "show", hex(live.motor_uid))
    assert status == 0
    assert f"yogi-bear:{live.motor_uid:#x}" in out
    assert "state: valid" in out
    rows = {line.split()[1]: line.split() for line in out.splitlines() if line.strip()[:1].isdigit()}
    assert len(rows) == 14
    assert rows["duty_cycle"][2:] == ["float", "-0.123", "r", "w", "[-1,", "1]"]
    assert rows["enc_pos"][3] == "1200.5"
    assert rows["pid_pos_kp"][3:] == ["(write-only)", "no-r", "w", "[0,", "inf]"]
    assert rows["enc_vel"][3:] == ["0.0", "r"]


def test_buffers_show_json(capsys: pytest.CaptureFixture[str], live: LiveBuffers) -> None:
    report = run_json(capsys, "buffers", "show", f"yogi-bear:{live.motor_uid:#x}")
    params = {param["name"]: param for param in report["params"]}
    assert params["current_thresh"] == {
        "name": "current_thresh",
        "id": 9,
        "type": "float",
        "value": None,
        "readable": False,
        "writeable": True,
        "subscribed": True,
        "lower": 2.0,
        "upper": 10.0,
        "unit": "A",
        "description": "current above which the controller limits the motor",
    }
    assert params["enc_pos"]["value"] == 1200.5
    assert params["deadband"]["lower"] is None  # unbounded: JSON has no infinity


def test_buffers_show_invalid_buffer(capsys: pytest.CaptureFixture[str], live: LiveBuffers) -> None:
    status, out, _ = run(capsys, "buffers", "show", hex(live.switch_uid))
    assert status == 0
    assert "state: invalid" in out
    assert out.count("(unavailable)") == 3
    report = run_json(capsys, "buffers", "show", hex(live.switch_uid))
    assert report["valid"] is False
    assert [param["value"] for param in report["params"]] == [None, None, None]


def test_buffers_show_plain_buffer(capsys: pytest.CaptureFixture[str], live: LiveBuffers) -> None:
    report = run_json(capsys, "buffers", "show", "gamepad:3")
    assert report["values"]["joystick_left_x"] == 0.25
    assert len(report["params"]) == 21


def test_buffers_show_missing_buffer(capsys: pytest.CaptureFixture[str], live: LiveBuffers) -> None:
    status, _, err = run(capsys, "buffers", "show", hex(live.motor_uid ^ 0xFFFF))  # no typo: 4 digits off
    assert status == 1
    assert "no buffer yogi-bear:" in err
    status, _, err = run(capsys, "buffers", "show", hex(live.motor_uid ^ 1))  # a typo: one digit off
    assert status == 2
    assert f"did you mean {live.motor_uid:#x}?" in err


@pytest.mark.parametrize(
    ("key", "complaint"),
    [
        ("0xzz", "bad UID"),
        ("-5", "bad UID"),
        (hex(99 << 72), "device_id 99, which is no Smart Device type"),
        ("gampad:3", "did you mean 'gamepad'"),
    ],
)
def test_buffers_show_bad_key(
    capsys: pytest.CaptureFixture[str], namespace: str, key: str, complaint: str
) -> None:
    status, _, err = run(capsys, "buffers", "show", key)
    assert status == 2
    assert complaint in err


def test_buffers_layout_mismatch_is_an_error_row(
    capsys: pytest.CaptureFixture[str], live: LiveBuffers
) -> None:
    """A segment made by another catalog for the same name: shown as an error, never a crash."""
    other = DeviceBuffer.make_type(
        "yogi-bear", [Parameter("speed", ctypes.c_int32, 0, writeable=True)], device_id=10
    )
    uid = live.motor_uid + 7
    with other.open(BufferStore.segment_name("yogi-bear", uid)):
        reports = [r for r in run_json(capsys, "buffers", "list") if r["uid"] == uid]
        assert len(reports) == 1
        assert "layout does not match" in reports[0]["error"]
        status, out, _ = run(capsys, "buffers", "list")
        assert status == 0
        assert "error: " in out
        status, out, _ = run(capsys, "buffers", "show", hex(uid))
        assert status == 1
        assert "layout does not match" in out
    Buffer.unlink(BufferStore.segment_name("yogi-bear", uid))


def test_buffers_watch_counts_refreshes(capsys: pytest.CaptureFixture[str], live: LiveBuffers) -> None:
    status, out, _ = run(capsys, "buffers", "watch", "--count", "3", "--interval", "0.01", "--json")
    assert status == 0
    samples = [json.loads(line) for line in out.splitlines()]
    assert len(samples) == 3
    assert all(len(sample) == 3 for sample in samples)
    status, out, _ = run(capsys, "buffers", "watch", "--count", "2", "--interval", "0.01")
    assert status == 0
    assert out.count("buffers in namespace") == 2
    assert "enc_pos=1200.5" in out


def test_buffers_watch_one_buffer(capsys: pytest.CaptureFixture[str], live: LiveBuffers) -> None:
    status, out, _ = run(
        capsys, "buffers", "watch", hex(live.motor_uid), "--count", "2", "--interval", "0.01"
    )
    assert status == 0
    assert out.count("state: valid") == 2
    sample = run_json(capsys, "buffers", "watch", "gamepad:3", "--count", "1")
    assert sample["values"]["joystick_left_x"] == 0.25


# ---- end to end -----------------------------------------------------------------------------------


def test_python_m_runtime_end_to_end(spec_catalog: str) -> None:
    done = runtime_process(
        "msg", "decode", "--catalog", spec_catalog, "--type", "spec-device", DEV_DATA_EXAMPLE
    )
    assert done.returncode == 0, done.stderr
    assert "duty_cycle = -0.123" in done.stdout
    done = runtime_process("msg", "decode", "04 15 06 02 06 6d e7 fb bd de")
    assert done.returncode == 1
    assert "BAD_CHECKSUM" in done.stdout
    done = runtime_process("frobnicate")
    assert done.returncode == 2
    assert "invalid choice: 'frobnicate'" in done.stderr


def test_buffers_seen_from_another_process(live: LiveBuffers, namespace: str) -> None:
    done = runtime_process("buffers", "list", "--json", env=dict(os.environ))
    assert done.returncode == 0, done.stderr
    reports = {report["type"]: report for report in json.loads(done.stdout)}
    assert reports["yogi-bear"]["values"]["enc_pos"] == 1200.5
    assert reports["limit-switch"]["valid"] is False
    # The inspecting process attached and left: the buffers are still there and still valid.
    assert live.motor.valid and live.motor.get("enc_pos") == 1200.5


def test_services_log_events_by_default_and_other_commands_warnings() -> None:
    parser = cli.build_parser()
    assert log_level(parser.parse_args(["bridge"])) == logging.INFO
    assert log_level(parser.parse_args(["emulate", "yogi-bear"])) == logging.INFO
    assert log_level(parser.parse_args(["catalog"])) == logging.WARNING
    assert log_level(parser.parse_args(["--log-level", "error", "bridge"])) == logging.ERROR
    assert log_level(parser.parse_args(["-v", "catalog"])) == logging.INFO
