"""The command line never shows a traceback, and every example of its help runs.

Hostile or mistaken input (a catalog nested a thousand levels deep, a device
file, a huge file, an option out of range, a file where a directory belongs)
must end in one line saying what is wrong and exit status 2 (usage) or 1,
never a traceback nor a run that eats the machine. The help texts mark their
examples with ``$ runtime ...`` lines; each one is run here (or, when it needs
hardware or runs for seconds, at least parsed by the real parser). Files the
tools write never follow a symlink planted next to them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import selectors
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e import run, runtime_process

from runtime import catalog
from runtime.buffer import NAMESPACE_ENV, BufferStore
from runtime.jsonio import write_json_atomically
from runtime.tools import cli, demo
from runtime.tools import emulate as emulator
from runtime.tools._common import load_catalog

DEEP_CATALOG = "[" * 1000 + "]" * 1000 + "\n"
"""A YAML catalog of 1000 nested lists: deeper than Python's recursion limit lets PyYAML go."""


def error_line(stderr: str) -> str:
    """The one error line of a failed command's stderr (after argparse's usage, if any)."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    assert lines, "nothing on stderr"
    if lines[0].startswith("usage: "):  # argparse: the usage, then one error line
        assert lines[-1].startswith("runtime ") and ": error: " in lines[-1], stderr
        assert sum(": error: " in line for line in lines) == 1, stderr
        return lines[-1]
    assert len(lines) == 1, stderr
    return lines[0]


# ---- catalogs that used to crash or run away ----------------------------------------------------

CATALOG_COMMANDS = [
    ["catalog", "--check"],
    ["catalog", "--catalog"],
    ["catalog", "--file"],  # the deprecated name, kept for old scripts
    ["buffers", "list", "--catalog"],
    ["buffers", "--catalog"],  # before the action: the file goes here, the action after it
    ["msg", "encode", "ping", "--catalog"],
    ["msg", "decode", "02 10 02 10", "--catalog"],
    ["demo", "--catalog"],
    ["bridge", "--catalog"],
    ["emulate", "yogi-bear", "--catalog"],
]


def _with_file(argv: list[str], path: Path) -> list[str]:
    if argv == ["buffers", "--catalog"]:
        return [*argv, str(path), "list"]
    return [*argv, str(path)]


@pytest.mark.slow  # a subprocess per case
@pytest.mark.parametrize("argv", CATALOG_COMMANDS, ids=" ".join)
def test_a_catalog_nested_1000_deep_is_one_error_line(tmp_path: Path, argv: list[str]) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text(DEEP_CATALOG)
    done = runtime_process(*_with_file(argv, path), cwd=tmp_path)
    assert done.returncode in (1, 2), done.stderr
    line = error_line(done.stderr)
    assert str(path) in line
    assert f"nested more than {catalog.MAX_NESTING} levels deep" in line


@pytest.mark.slow  # a subprocess per case
@pytest.mark.parametrize("argv", CATALOG_COMMANDS, ids=" ".join)
def test_a_catalog_larger_than_the_cap_is_refused_unread(tmp_path: Path, argv: list[str]) -> None:
    path = tmp_path / "huge.yaml"
    with open(path, "wb") as file:
        file.truncate(50_000_000)  # sparse: 50 MB that cost no disk space
    started = time.monotonic()
    done = runtime_process(*_with_file(argv, path), cwd=tmp_path)
    assert time.monotonic() - started < 5
    assert done.returncode in (1, 2), done.stderr
    line = error_line(done.stderr)
    assert f"{path}: the catalog file is too large: 50000000 bytes" in line
    assert f"the limit is {catalog.MAX_CATALOG_SIZE} bytes" in line


@pytest.mark.parametrize("kind", ["device", "pipe", "directory"])
def test_catalog_check_refuses_what_is_not_a_regular_file(tmp_path: Path, kind: str) -> None:
    path = {"device": Path("/dev/zero"), "pipe": tmp_path / "fifo", "directory": tmp_path}[kind]
    if kind == "pipe":
        os.mkfifo(path)  # no writer: opening it for reading must not wait for one
    done = runtime_process("catalog", "--check", str(path))
    assert done.returncode == 1
    line = error_line(done.stderr)
    assert line.startswith(f"runtime catalog: error: {path}: cannot read device catalog: ")
    assert "not a regular file" in line or "Is a directory" in line


def test_catalog_check_json_reports_the_cap_too(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    with open(path, "wb") as file:
        file.truncate(catalog.MAX_CATALOG_SIZE + 1)
    status, out, err = run(capsys, "catalog", "--check", str(path), "--json")
    assert (status, err) == (1, "")
    data = json.loads(out)
    assert data["ok"] is False
    assert f"{catalog.MAX_CATALOG_SIZE + 1} bytes" in data["error"]


# ---- options out of range -------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["1e308", "inf", "-inf", "nan", "0", "-1", "0.001", "3601", "soon"])
def test_watch_interval_out_of_range_is_a_usage_error(capsys: pytest.CaptureFixture[str], value: str) -> None:
    status, out, err = run(capsys, "buffers", "watch", f"--interval={value}")
    assert (status, out) == (2, "")
    line = error_line(err)
    assert line.startswith("runtime buffers watch: error: argument --interval: ")
    assert repr(value) in line


@pytest.mark.parametrize("value", ["0.01", "0.5", "3600"])
def test_watch_interval_in_range_is_accepted(value: str) -> None:
    args = cli.build_parser().parse_args(["buffers", "watch", "--interval", value])
    assert args.interval == float(value)


def test_emulate_link_to_a_file_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "not-a-directory"
    path.write_text("")
    done = runtime_process("emulate", "yogi-bear", "--link", str(path))
    assert done.returncode == 2
    assert f"argument --link: {str(path)!r} exists and is not a directory" in error_line(done.stderr)
    assert done.stdout == ""
    assert path.read_text() == ""


def test_emulate_link_that_cannot_be_made_is_one_error_line(tmp_path: Path) -> None:
    path = tmp_path / "a-file"
    path.write_text("")
    done = runtime_process("emulate", "yogi-bear", "--link", str(path / "devices"))
    assert done.returncode == 2
    line = error_line(done.stderr)
    assert line == f"runtime emulate: cannot make the --link directory {path / 'devices'}: Not a directory"


# ---- every example of every --help runs ---------------------------------------------------------

SHELL_OPERATORS = frozenset({"|", "||", "&&", ";", ">", ">>", "<", "2>", "&"})


def _parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[str, str]]:
    """``(command path, help text)`` of the parser and of every subcommand below it."""
    yield " ".join(("runtime", *path)), parser.format_help()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, subparser in action.choices.items():
                yield from _parsers(subparser, (*path, name))


HELPS = dict(_parsers(cli.build_parser(load_all=True)))
EXAMPLE_LINE = re.compile(r"^\s+\$ (runtime\s.*)$")


def _examples(text: str) -> list[str]:
    return [match[1] for match in map(EXAMPLE_LINE.match, text.splitlines()) if match]


def _argv(example: str) -> list[str]:
    """The arguments of an example's ``runtime`` command: comments and what a pipe or redirect feeds, off."""
    words = shlex.split(example, comments=True)
    assert words[0] == "runtime"
    cut = next((index for index, word in enumerate(words) if word in SHELL_OPERATORS), len(words))
    return words[1:cut]


EXAMPLES = sorted({shlex.join(_argv(example)) for text in HELPS.values() for example in _examples(text)})
"""Every example's arguments, once each (as a shell would split them again)."""


def test_examples_are_collected_from_every_help() -> None:
    assert {"runtime", "runtime buffers watch", "runtime msg decode", "runtime demo"} <= set(HELPS)
    assert len(EXAMPLES) > 25
    for path, text in HELPS.items():
        assert _examples(text), f"'{path} --help' shows no '$ runtime ...' example"
        unmarked = [line for line in text.splitlines() if re.match(r"\s+runtime\s", line)]
        assert not unmarked, f"'{path} --help' has examples not marked with '$': {unmarked}"


YOGI_UID = 0xA0A0000000000C0FFEE
"""The UID of the help texts' yogi-bear."""


@pytest.fixture
def example_setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """What the examples expect: catalog files in the working directory, and live buffers."""
    packaged = Path(catalog.__file__).with_name("catalog.yaml")
    for name in ("my.yaml", "my-catalog.yaml"):
        shutil.copyfile(packaged, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(NAMESPACE_ENV, f"rt-test-examples-{os.getpid()}-{random.getrandbits(32):x}")
    store = BufferStore(catalog.load())
    try:
        motor = store.get_or_open(YOGI_UID)
        motor.serve()  # the test is its producer, as the bridge would be
        motor.set("enc_pos", 12.5)
        store.get_or_open(("gamepad", 0))
        student = "def teleop_main():\n    Robot.set_value('left_motor', 'duty_cycle', 0)\n"
        (tmp_path / "robot.py").write_text(student)
        (tmp_path / "robot.yaml").write_text(f"left_motor: {YOGI_UID:#x}\n")
        yield tmp_path
    finally:
        store.close()
        BufferStore({}).unlink_all()


def _how(argv: list[str]) -> str:
    """``run`` it here, ``interrupt`` it (it runs until Ctrl-C), or only ``parse`` it (and why)."""
    args = cli._parse(cli.build_parser(), argv)
    if args.command == "bridge":
        return "parse: it serves serial devices"
    if args.command == "demo":
        return "parse: it runs emulator, bridge and student code for seconds"
    if args.command == "zenoh":
        return "parse: it serves the buffers on the network until stopped"
    if args.command == "emulate":
        return "parse: it writes --link outside the test's directory" if args.link else "interrupt"
    if args.command == "buffers" and args.action in ("watch", "hz") and args.count is None:
        return "interrupt"
    if args.command == "buffers" and args.action == "echo":
        return "parse: it waits for changes of a buffer (tests/test_rates.py runs it)"
    if args.command == "foxglove":
        return "parse: it listens on a TCP port (tests/test_foxglove.py runs it)"
    if args.command == "replay":
        return "parse: it needs a recording (tests/test_record.py runs it)"
    if args.command == "record" and args.duration is None:
        return "interrupt"
    if args.command == "run":
        return "interrupt"
    if args.command == "mode" and args.namespace:
        return "parse: it would leave a field buffer in another namespace than the test's"
    if args.command == "drive":
        return "parse: it needs a robot's runtime zenoh (tests/test_drive.py runs it)"
    return "run"


CTRL_C_DELAY = 0.3
"""Seconds between a long-running example's first line of output and its Ctrl-C."""


def _first_output_then_ctrl_c(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Start ``runtime ARGV``, wait for its first line of output, press Ctrl-C; return what it did.

    Ctrl-C comes a moment after the first line, once the command is at work
    (the emulator prints its devices just before it starts its event loop).
    """
    process = subprocess.Popen(
        [sys.executable, "-m", "runtime", *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**env, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            assert selector.select(timeout=10), "no output within 10 s"
        first = process.stdout.readline()
        time.sleep(CTRL_C_DELAY)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return subprocess.CompletedProcess(process.args, process.returncode, first + out, err)


@pytest.mark.slow  # a subprocess per case
@pytest.mark.parametrize("example", EXAMPLES)
def test_every_help_example_runs(
    capsys: pytest.CaptureFixture[str], example_setup: Path, example: str
) -> None:
    argv = shlex.split(example)
    how = _how(argv)
    if how == "run":
        status, out, err = run(capsys, *argv)
        assert status == 0, err
        assert out and "Traceback" not in err
    elif how == "interrupt":
        done = _first_output_then_ctrl_c(argv, dict(os.environ))
        assert done.returncode == 0, done.stderr
        assert done.stdout and "Traceback" not in done.stderr
    else:  # at least what the command would check first: its devices and catalog
        args = cli._parse(cli.build_parser(), argv)
        types = load_catalog(getattr(args, "catalog", None))
        if args.command == "emulate":
            for device in args.devices:
                emulator.parse_device(device, types)
        if args.command == "demo":
            assert demo._choose_devices(args, types)


# ---- files the tools write ------------------------------------------------------------------------


def test_atomic_write_does_not_follow_a_planted_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    path = tmp_path / "stats.json"
    # The temporary name the writer used to take: predictable, so anyone could plant a link there.
    os.symlink(victim, f"{path}.tmp{os.getpid()}")
    write_json_atomically(path, {"frames": 3})
    assert victim.read_text() == "precious\n"
    assert json.loads(path.read_text()) == {"frames": 3}
    assert not path.is_symlink()
    assert sorted(entry.name for entry in tmp_path.iterdir()) == [
        "stats.json",
        f"stats.json.tmp{os.getpid()}",
        "victim",
    ]


def test_atomic_write_replaces_a_symlink_at_the_destination(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    path = tmp_path / "stats.json"
    os.symlink(victim, path)
    write_json_atomically(path, [1, 2])
    assert victim.read_text() == "precious\n"
    assert not path.is_symlink()
    assert json.loads(path.read_text()) == [1, 2]


def test_atomic_write_gives_the_usual_mode_and_cleans_up_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "stats.json"
    old_umask = os.umask(0o022)
    try:
        write_json_atomically(str(path), {"ok": True})
    finally:
        os.umask(old_umask)
    assert path.stat().st_mode & 0o777 == 0o644
    with pytest.raises(ValueError):
        write_json_atomically(path, {"bad": float("nan")})
    assert json.loads(path.read_text()) == {"ok": True}  # the old file stays whole
    assert [entry.name for entry in tmp_path.iterdir()] == ["stats.json"]  # no temporary left
