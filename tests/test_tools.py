"""The command-line layer itself: one helper per job, and a program that starts without the world.

``runtime.tools._common`` holds what every command shares (UIDs, number
options, ``--catalog``, "did you mean", logging, tables); these tests check
that each command uses it, so that the same input is accepted, or refused with
the same message, everywhere. The program imports only the chosen command's
module: checked here through ``sys.modules`` of a fresh interpreter (never by
timing, which depends on the machine).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import logging
import os
import random
import subprocess
import sys
from collections.abc import Iterator

import pytest
from e2e import run

from runtime import catalog
from runtime.buffer import NAMESPACE_ENV, BufferStore
from runtime.report import BufferReport
from runtime.tools import _common, cli
from runtime.tools import emulate as emulator
from runtime.tools._views import list_table

YOGI_UID = 0xA0A0000000000C0FFEE


# ---- starting: only the chosen command is imported ------------------------------------------------

HEAVY = ("runtime.tools.bridge", "runtime.tools.demo", "runtime.tools.emulate", "rich", "serial", "asyncio")
"""What neither ``runtime --help`` nor ``runtime msg encode ping`` needs."""

IMPORTED = """\
import contextlib, io, json, sys
from runtime.tools import cli
out = io.StringIO()
with contextlib.redirect_stdout(out):
    status = cli.main(sys.argv[1:])
print(json.dumps({"status": status, "out": out.getvalue(), "modules": sorted(sys.modules)}))
"""


def imported_by(*argv: str) -> dict[str, object]:
    """Run the program's main in a fresh interpreter; its status, output and every module it imported."""
    done = subprocess.run(
        [sys.executable, "-c", IMPORTED, *argv], capture_output=True, text=True, timeout=60, check=True
    )
    result: dict[str, object] = json.loads(done.stdout)
    return result


@pytest.mark.parametrize("argv", [["--help"], ["msg", "encode", "ping"]], ids=" ".join)
def test_starting_imports_only_the_chosen_command(argv: list[str]) -> None:
    result = imported_by(*argv)
    assert result["status"] == 0
    modules = set(result["modules"])  # type: ignore[call-overload]
    loaded = sorted(name for name in modules if any(name == m or name.startswith(m + ".") for m in HEAVY))
    assert loaded == []
    tools = sorted(name for name in modules if name.startswith("runtime.tools."))
    expected = ["runtime.tools._common", "runtime.tools.cli"]
    assert tools == (expected if argv == ["--help"] else [*expected, "runtime.tools.msg"])


def test_help_lists_every_command_with_its_summary(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "--help")
    assert status == 0
    listing = out.split("\ncommands:\n", 1)[1].splitlines()
    for command in cli.COMMANDS:
        line = next(line for line in listing if line.startswith(f"    {command.name} "))
        assert command.summary.split()[0] in line  # argparse may wrap a long summary


@pytest.mark.parametrize("command", cli.COMMANDS, ids=lambda command: command.name)
def test_each_command_keeps_its_help_in_its_own_module(
    capsys: pytest.CaptureFixture[str], command: cli.Command
) -> None:
    assert command.module == f"runtime.tools.{command.name}"  # module names match the commands
    module = importlib.import_module(command.module)
    assert module.DESCRIPTION.strip() and "  $ runtime " + command.name in module.EPILOG
    status, out, _ = run(capsys, command.name, "--help")
    assert status == 0
    assert module.DESCRIPTION.splitlines()[0] in out
    assert module.EPILOG.splitlines()[1] in out


def test_a_command_that_cannot_be_imported_breaks_only_itself(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = cli.Command("broken", "runtime.tools.no_such_module", "a command still being written")
    monkeypatch.setattr(cli, "COMMANDS", (*cli.COMMANDS, broken))
    status, _, err = run(capsys, "broken", "anything")
    assert status == 1
    assert err.startswith("runtime broken: error: the broken command is not available: ModuleNotFoundError")
    assert run(capsys, "catalog", "--check")[0] == 0


# ---- one UID parser -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["0xa0a0000000000c0ffee", "0XA0A0000000000C0FFEE", "a0a0000000000c0ffee", str(YOGI_UID)]
)
def test_a_uid_is_read_the_same_way_everywhere(text: str) -> None:
    types = catalog.load()
    assert _common.parse_uid(text) == YOGI_UID
    assert emulator.parse_device(f"yogi-bear:{text}", types).uid == YOGI_UID
    args = cli.build_parser().parse_args(["msg", "encode", "sub-res", "--type", "yogi-bear", "--uid", text])
    from runtime.messaging import TypeLayout
    from runtime.tools.msg import encode_messages

    [message] = encode_messages(args, TypeLayout.of(types["yogi-bear"]))  # type: ignore[arg-type]
    assert message.read_sub_res()[2] == (10, 0x0A, 0xC0FFEE)


def test_decimal_digits_are_decimal_and_a_letter_makes_hex() -> None:
    assert _common.parse_uid("10") == 10
    assert _common.parse_uid("1f") == 0x1F
    assert _common.parse_uid("0x10") == 16


@pytest.mark.parametrize("text", ["", "-5", "0xzz", "seven", "0x", "1.5", "0b1g"])
def test_a_bad_uid_gets_one_message_from_every_command(capsys: pytest.CaptureFixture[str], text: str) -> None:
    with pytest.raises(ValueError) as caught:
        _common.parse_uid(text)
    message = str(caught.value)
    assert message.startswith(f"bad UID {text!r}: it must be an integer, {_common.UID_FORMS}")
    status, _, err = run(capsys, "buffers", "show", f"gamepad:{text}")
    assert status == 2
    assert f"bad UID {text!r} in 'gamepad:{text}': it must be an integer" in err
    if text:  # "yogi-bear:" is a yogi-bear with a random UID
        with pytest.raises(ValueError, match="it must be an integer"):
            emulator.parse_device(f"yogi-bear:{text}", catalog.load())
    status, _, err = run(capsys, "msg", "encode", "sub-res", "--params", "0x1", "--uid", text)
    assert status == 2
    assert f"--uid: bad UID {text!r}: it must be an integer" in err


# ---- one number checker ---------------------------------------------------------------------------

NUMBER_OPTIONS = [
    ["demo", "--duration"],
    ["demo", "--interval"],
    ["emulate", "yogi-bear", "--disconnect-every"],
    ["emulate", "yogi-bear", "--disconnect-for"],
    ["buffers", "watch", "--interval"],
    ["buffers", "watch", "--count"],
]


@pytest.mark.parametrize("option", NUMBER_OPTIONS, ids=" ".join)
@pytest.mark.parametrize("value", ["1e308", "inf", "nan", "-1", "lots"])
def test_number_options_refuse_what_is_out_of_range(
    capsys: pytest.CaptureFixture[str], option: list[str], value: str
) -> None:
    status, out, err = run(capsys, *option, value)
    assert (status, out) == (2, "")
    assert f"error: argument {option[-1]}: " in err
    assert repr(value) in err
    assert "Traceback" not in err


def test_the_number_checker_says_what_it_takes() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="^must be an integer from 1 to 10, not '11'$"):
        _common.bounded(int, 1, 10)("11")
    with pytest.raises(
        argparse.ArgumentTypeError, match="^must be a positive number of seconds, at most 60, "
    ):
        _common.bounded(float, 0.0, 60.0, above=True, unit="seconds")("0")
    with pytest.raises(argparse.ArgumentTypeError, match="^not a number: 'soon'$"):
        _common.bounded(float, 0.0, 1.0)("soon")
    assert _common.bounded(float, 0.0, 60.0)("60") == 60.0
    with pytest.raises(ValueError, match="finite range"):
        _common.bounded(float, 0.0, float("inf"))


# ---- one "did you mean" ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["catalog", "yogi-beer"],
        ["buffers", "show", "yogi-beer:1"],
        ["msg", "encode", "dev-read", "--type", "yogi-beer"],
    ],
    ids=" ".join,
)
def test_every_command_suggests_the_name_meant(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    status, _, err = run(capsys, *argv)
    assert status in (1, 2)
    assert "no device type 'yogi-beer' in " in err
    assert "(did you mean 'yogi-bear'?)" in err
    with pytest.raises(ValueError, match=r"\(did you mean 'yogi-bear'\?\)"):
        emulator.parse_device("yogi-beer", catalog.load())


# ---- one --catalog option -------------------------------------------------------------------------

CATALOG_READERS = [
    ["bridge"],
    ["emulate", "yogi-bear"],
    ["buffers", "list"],
    ["msg", "decode", "00"],
    ["msg", "encode", "ping"],
    ["catalog"],
    ["demo"],
]


@pytest.mark.parametrize("argv", CATALOG_READERS, ids=" ".join)
def test_every_command_that_reads_a_catalog_takes_catalog_file(argv: list[str]) -> None:
    args = cli.build_parser().parse_args([*argv, "--catalog", "my.yaml"])
    assert args.catalog == "my.yaml"
    assert cli.build_parser().parse_args(argv).catalog is None


def test_catalog_file_is_a_hidden_alias_of_catalog(capsys: pytest.CaptureFixture[str]) -> None:
    packaged = os.path.join(os.path.dirname(catalog.__file__), "catalog.yaml")
    assert run(capsys, "catalog", "--file", packaged, "--check")[:2] == (
        0,
        f"ok: {packaged}: 15 device types\n",
    )
    assert run(capsys, "catalog", "-f", packaged, "--check")[0] == 0
    status, out, _ = run(capsys, "catalog", "--help")
    assert "--catalog FILE" in out and "--file" not in out


# ---- one logging set-up ---------------------------------------------------------------------------


@contextlib.contextmanager
def bare_logging() -> Iterator[logging.Logger]:
    """The root logger without handlers (as in a fresh process), restored afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    root.handlers.clear()
    try:
        yield root
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)


def test_logging_is_set_up_one_way() -> None:
    verbose = logging.getLogger("runtime.tools.test-verbose")
    with bare_logging() as root:  # pytest gives the root logger handlers of its own for each phase
        _common.configure_logging(debug=[verbose.name])  # a command run on its own, with --verbose
        assert root.level == logging.INFO
        [handler] = root.handlers
        assert handler.formatter is not None and handler.formatter._fmt == _common.LOG_FORMAT
        assert verbose.level == logging.DEBUG
    verbose.setLevel(logging.NOTSET)
    with bare_logging() as root:
        _common.configure_logging(logging.ERROR)  # runtime --log-level error
        _common.configure_logging()  # then the command's own call keeps it
        assert root.level == logging.ERROR
        assert len(root.handlers) == 1


def test_child_processes_get_the_same_log_level() -> None:
    args = cli.build_parser().parse_args(["-v", "demo"])
    assert _common.log_level_arguments(args) == ["--log-level", "INFO"]
    args = cli.build_parser().parse_args(["bridge"])
    assert _common.log_level_arguments(args) == ["--log-level", "INFO"]


# ---- one table of buffers -------------------------------------------------------------------------


def test_the_table_of_buffers_has_the_same_columns_for_every_command() -> None:
    from rich.console import Console

    reports = [
        BufferReport(
            "yogi-bear", YOGI_UID, "rt-yogi-bear-x", smart=True, valid=True, values={"enc_pos": 1.5}
        ),
        BufferReport("battery", 0x2A, "rt-battery-2a", smart=True),  # not created yet
    ]
    table = list_table(reports, values=True, extra={"in/out/err": ["3/4/0", "-/-/-"]})
    assert [column.header for column in table.columns] == [
        "type",
        "uid",
        "state",
        "last update",
        "in/out/err",
        "values",
    ]
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(table)
    text = console.export_text()
    assert "waiting" in text and "enc_pos=1.5" in text and "3/4/0" in text
    assert [column.header for column in list_table([]).columns] == ["type", "uid", "state", "last update"]


# ---- an empty namespace says where the buffers are ------------------------------------------------


@pytest.fixture
def elsewhere(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str]]:
    """A namespace with one buffer, and an empty one (current); the buffer removed afterwards."""
    suffix = f"{os.getpid()}-{random.getrandbits(32):x}"
    full, empty = f"rt-test-tools-full-{suffix}", f"rt-test-tools-empty-{suffix}"
    monkeypatch.setenv(NAMESPACE_ENV, full)
    store = BufferStore(catalog.load())
    store.get_or_open(("gamepad", 1))
    monkeypatch.setenv(NAMESPACE_ENV, empty)
    try:
        yield full, empty
    finally:
        store.close()
        monkeypatch.setenv(NAMESPACE_ENV, full)
        BufferStore({}).unlink_all()


def test_watching_an_empty_namespace_names_those_with_buffers(
    capsys: pytest.CaptureFixture[str], elsewhere: tuple[str, str]
) -> None:
    full, empty = elsewhere
    status, out, _ = run(capsys, "buffers", "watch", "--count", "1")
    assert status == 0
    lines = [line for line in out.splitlines() if f"no buffers in namespace {empty!r}" in line]
    assert len(lines) == 1
    assert full in lines[0] and "--namespace" in lines[0]
    status, out, err = run(capsys, "buffers", "watch", "--count", "2", "--interval", "0.01", "--json")
    assert (status, out) == (0, "[]\n[]\n")  # stdout stays JSON
    assert err.count(f"no buffers in namespace {empty!r}") == 1 and full in err
    status, out, _ = run(capsys, "buffers", "--namespace", full, "watch", "--count", "1")
    assert "no buffers" not in out and "gamepad" in out


# ---- a mistyped UID names the devices of its type here --------------------------------------------

MOTOR_A, MOTOR_B = 0xA0A0000000000C0FFEE, 0xA0A00000000001234AB  # device_id 10: yogi-bear


@pytest.fixture
def two_motors(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Two yogi-bear buffers in a namespace of their own (another namespace has buffers too)."""
    suffix = f"{os.getpid()}-{random.getrandbits(32):x}"
    other, here = f"rt-test-tools-other-{suffix}", f"rt-test-tools-motors-{suffix}"
    monkeypatch.setenv(NAMESPACE_ENV, other)
    elsewhere = BufferStore(catalog.load())
    elsewhere.get_or_open(("gamepad", 1))
    monkeypatch.setenv(NAMESPACE_ENV, here)
    store = BufferStore(catalog.load())
    store.get_or_open(MOTOR_A)
    store.get_or_open(MOTOR_B)
    try:
        yield here
    finally:
        store.close()
        store.unlink_all()
        elsewhere.close()
        monkeypatch.setenv(NAMESPACE_ENV, other)
        BufferStore({}).unlink_all()


@pytest.mark.parametrize("action", [["show"], ["write"]], ids=["show", "write"])
def test_a_uid_one_digit_off_names_the_device_meant(
    capsys: pytest.CaptureFixture[str], two_motors: str, action: list[str]
) -> None:
    typo = MOTOR_A + 1  # ...c0ffef
    extra = ["duty_cycle=0.5"] if action == ["write"] else []
    for key in (f"yogi-bear:{typo:#x}", f"{typo:#x}"):
        status, out, err = run(capsys, "buffers", *action, key, *extra)
        assert (status, out) == (2, "")
        assert err.splitlines() == [
            f"runtime buffers: error: no yogi-bear {typo:#x} in namespace {two_motors!r}: did you mean "
            f"{MOTOR_A:#x}? (the yogi-bear devices here, closest first: {MOTOR_A:#x}, {MOTOR_B:#x})"
        ], err
        assert "rt-test-tools-other" not in err  # not the other namespaces' buffers


def test_an_unknown_uid_lists_the_devices_of_its_type_here_closest_first(
    capsys: pytest.CaptureFixture[str], two_motors: str
) -> None:
    far = 0xA0A0000000000FFFFFF  # far from both: no typo, but the same type's devices are listed
    status, _, err = run(capsys, "buffers", "show", f"yogi-bear:{far:#x}")
    assert status == 1
    (line,) = err.splitlines()
    assert (
        f"no buffer yogi-bear:{far:#x} in namespace {two_motors!r}; the yogi-bear devices in namespace "
        f"{two_motors!r}, closest first: {MOTOR_A:#x}, {MOTOR_B:#x}" in line
    ), line


def test_a_uid_of_another_type_names_its_type(capsys: pytest.CaptureFixture[str], two_motors: str) -> None:
    for action, extra in (("show", []), ("write", ["switch0=1"])):
        status, _, err = run(capsys, "buffers", action, f"limit-switch:{MOTOR_A:#x}", *extra)
        assert status == 2
        assert err.splitlines() == [
            f"runtime buffers: error: UID {MOTOR_A:#x} is a yogi-bear (device_id 10), not a limit-switch: "
            f"give yogi-bear:{MOTOR_A:#x}, or the UID alone"
        ], err


# ---- who serves and who commands each buffer ------------------------------------------------------


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """A yogi-bear buffer this process serves (as the bridge would), in a namespace of its own."""
    monkeypatch.setenv(NAMESPACE_ENV, f"rt-test-tools-who-{os.getpid()}-{random.getrandbits(32):x}")
    store = BufferStore(catalog.load())
    try:
        motor = store.get_or_open(YOGI_UID)
        motor.serve()
        yield motor
    finally:
        store.close()
        BufferStore({}).unlink_all()


def test_list_and_show_name_who_serves_and_who_commands_each_buffer(
    capsys: pytest.CaptureFixture[str], served: object
) -> None:
    from runtime.report import program_name

    me = os.getpid()
    name = program_name(me)
    assert name and "/" not in name  # this test runner: pytest, or the script that started it
    assert program_name(2**22 + 1) is None  # no such process (beyond pid_max's largest)
    motor = served
    motor.write("duty_cycle", 0.25)  # type: ignore[attr-defined]  # this process commands it
    status, out, _ = run(capsys, "buffers", "list", "--json")
    [report] = json.loads(out)
    assert status == 0 and report["producer_pid"] == me and report["producer_program"] == name
    assert report["commander_programs"] == {"duty_cycle": name}
    status, out, _ = run(capsys, "buffers", "list")
    assert status == 0 and "served by" in out and f"{me} {name}" in out
    motor.write("duty_cycle", 0.25)  # type: ignore[attr-defined]  # (the command's closed handle ended it)
    status, out, _ = run(capsys, "buffers", "show", f"yogi-bear:{YOGI_UID:#x}")
    assert status == 0
    assert f"served by: pid {me} ({name})" in out
    assert f"commands: duty_cycle by pid {me} ({name})" in out


# ---- buffers clean: a device buffer never served, whose maker is long gone ----------------------------


MAKE_BUFFERS = """
import sys
from runtime import catalog
from runtime.buffer import BufferStore
store = BufferStore(catalog.load())
for uid in sys.argv[1:]:
    store.get_or_open(int(uid))  # a mistyped UID: no bridge will ever serve it
"""


def test_clean_removes_a_device_buffer_never_served_whose_maker_is_long_gone(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    from runtime.buffer import SHM_DIR, DeviceUID

    namespace = f"rt-test-never-served-{os.getpid()}"
    monkeypatch.setenv(NAMESPACE_ENV, namespace)
    types = catalog.load()
    old, fresh = (int(DeviceUID(types["limit-switch"].device_id, 0x0A, n)) for n in (77, 78))
    paths = [os.path.join(SHM_DIR, f"{namespace}-limit-switch-{uid:x}") for uid in (old, fresh)]
    try:
        subprocess.run([sys.executable, "-c", MAKE_BUFFERS, str(old), str(fresh)], check=True, timeout=60)
        assert all(os.path.exists(path) for path in paths)
        aged = time.time() - 3600  # made, then left alone, an hour ago (longer than NEVER_SERVED_GRACE)
        os.utime(paths[0], (aged, aged))
        status, out, _ = run(capsys, "buffers", "clean")
        assert status == 0
        assert out.splitlines() == [
            f"removed limit-switch:{old:#x} (segment {os.path.basename(paths[0])}, "
            "never served, its maker gone)",
            f"removed 1 stale segment in namespace {namespace!r}; "
            "1 kept (served, never served, or still open)",
        ]
        assert not os.path.exists(paths[0]) and os.path.exists(paths[1])  # the fresh one: a bridge may come
    finally:
        with BufferStore(types) as store:
            store.unlink_all()
