"""Bring-up on a robot: ``buffers write``, ``buffers clean``, the bridge's word when no device
connects, and the systemd unit and udev rule of docs/deploy.md.

The commands run in-process (``runtime.tools.cli.main``) in a namespace of the
test's own; the test serves buffers itself, as the bridge would. Producers that
die or stay alive are child processes (always killed and reaped in a finally).
The bridge runs in-process, on pseudo-terminals the test holds, with its report
delay shortened; one test runs the real command for its real 5 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fnmatch
import json
import logging
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from e2e import namespace_fixture, run, segment_exists

from runtime import catalog
from runtime.bridge import manager as bridge
from runtime.buffer import SHM_DIR, BufferStore, DeviceBuffer, DeviceUID
from runtime.messaging import DELIM, Message
from runtime.tools import cli

# slow: producers in child processes, the bridge on ptys, systemd-analyze
pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "docs" / "systemd" / "runtime-bridge.service"
RULES = ROOT / "docs" / "udev" / "99-runtime-smart-devices.rules"

YOGI = 10 << 72 | 0x0A << 64 | 0xC0FFEE
"""A yogi-bear motor controller (its ``duty_cycle`` is bounded to [-1, 1], ``pid_pos_kp`` to [0, inf])."""

BENCH_CATALOG = """\
bench-board:
  device_id: 70
  params:
    - {name: enabled, type: bool, writeable: true}
    - {name: mode, type: uint8, writeable: true}
    - {name: offset, type: int16, writeable: true, lower: -100, upper: 100}
    - {name: gains, type: 'float[3]', writeable: true}
    - {name: steps, type: 'int16[2][2]', writeable: true}
    - {name: label, type: 'char[8]', writeable: true}
    - {name: speed, type: double, writeable: true}
"""
BENCH = 70 << 72 | 0x0A << 64 | 0xBE7C


def one_line(text: str) -> str:
    lines = text.splitlines()
    assert len(lines) == 1, text
    return lines[0]


namespace = namespace_fixture("rt-test-bringup", scope="function", autouse=False)


@pytest.fixture
def store(namespace: str) -> Iterator[BufferStore]:
    with BufferStore(catalog.load()) as store:
        yield store


@pytest.fixture
def motor(store: BufferStore) -> DeviceBuffer:
    """A yogi-bear buffer the test serves, as the bridge would."""
    buffer = store.get_or_open(YOGI)
    buffer.serve()
    return buffer


def own_segments(namespace: str) -> list[str]:
    """The segments of the test's namespace, sorted."""
    return sorted(name for name in os.listdir(SHM_DIR) if name.startswith(namespace + "-"))


# ---- buffers write --------------------------------------------------------------------------------


def test_write_to_a_served_buffer(capsys: pytest.CaptureFixture[str], motor: DeviceBuffer) -> None:
    status, out, err = run(capsys, "buffers", "write", hex(YOGI), "duty_cycle=0.5", "pid_pos_kp=2")
    assert status == 0
    assert one_line(out) == (
        f"wrote yogi-bear:{YOGI:#x}: duty_cycle=0.5 pid_pos_kp=2.0 (the bridge sends it to the device)"
    )
    assert one_line(err) == (
        "runtime buffers: note: duty_cycle is a command: it ends (back to 0.0) when this command exits; "
        "use --hold to keep it until Ctrl-C"
    )
    # Run in this process, the command ended as it returned: the motor's safe value is what goes out.
    assert motor.pending_writes() == {"duty_cycle": 0.0, "pid_pos_kp": 2.0}


@pytest.mark.parametrize("key", [f"yogi-bear:{YOGI:#x}", str(YOGI), f"{YOGI:x}"])
def test_write_takes_the_keys_show_takes(
    capsys: pytest.CaptureFixture[str], motor: DeviceBuffer, key: str
) -> None:
    status, _, err = run(capsys, "buffers", "write", key, "deadband=-0.25")
    assert (status, err) == (0, "")
    assert motor.pending_writes() == {"deadband": -0.25}


def test_write_json(capsys: pytest.CaptureFixture[str], motor: DeviceBuffer, namespace: str) -> None:
    status, out, _ = run(capsys, "buffers", "write", hex(YOGI), "duty_cycle=0.1", "--json")
    assert status == 0
    assert json.loads(out) == {
        "key": f"yogi-bear:{YOGI:#x}",
        "segment": f"{namespace}-yogi-bear-{YOGI:x}",
        "written": {"duty_cycle": 0.1},
        "commands": ["duty_cycle"],
        "held": False,
    }


def test_write_out_of_bounds_is_refused_with_the_bounds_never_clamped(
    capsys: pytest.CaptureFixture[str], motor: DeviceBuffer
) -> None:
    status, out, err = run(capsys, "buffers", "write", hex(YOGI), "duty_cycle=0.5", "current_thresh=30")
    assert (status, out) == (1, "")
    assert (
        one_line(err) == "runtime buffers: error: cannot write current_thresh=30: 30 is out of bounds [2, 10]"
    )
    assert motor.pending_writes() == {}  # the good value before it is not written either


@pytest.mark.parametrize(
    ("assignments", "complaint"),
    [
        (
            ["duty_cycle=0.5", "enc_vel=1"],
            "cannot write enc_vel=1: read-only: nothing writes it but its device",
        ),
        (["duty_cycle=nan"], "cannot write duty_cycle=nan: nan is not a finite number"),
        (["pid_pos_kp=-inf"], "cannot write pid_pos_kp=-inf: -inf is not a finite number"),
        (
            ["duty_cycle=0.5", "duty_cyle=1"],
            "cannot write duty_cyle=1: no such parameter of yogi-bear (did you mean 'duty_cycle'?)",
        ),
        (["duty_cycle=fast"], "cannot write duty_cycle=fast: 'fast' is not a number (float) in [-1, 1]"),
        (["duty_cycle="], "cannot write duty_cycle=: '' is not a number (float) in [-1, 1]"),
    ],
    ids=["read-only", "nan", "infinity", "typo", "wrong type", "empty"],
)
def test_refused_writes_exit_1_and_write_nothing(
    capsys: pytest.CaptureFixture[str], motor: DeviceBuffer, assignments: list[str], complaint: str
) -> None:
    status, out, err = run(capsys, "buffers", "write", hex(YOGI), *assignments)
    assert (status, out) == (1, "")
    line = one_line(err)
    assert line.startswith("runtime buffers: error: ")
    assert complaint in line
    assert motor.pending_writes() == {}  # all or nothing: the good assignment before it is not written


def test_write_to_a_buffer_nobody_serves_says_the_device_is_not_connected(
    capsys: pytest.CaptureFixture[str], store: BufferStore
) -> None:
    buffer = store.get_or_open(YOGI)  # opened before the bridge came: invalid
    status, out, err = run(capsys, "buffers", "write", hex(YOGI), "duty_cycle=0.5")
    assert (status, out) == (1, "")
    assert one_line(err) == (
        f"runtime buffers: error: yogi-bear:{YOGI:#x} is not connected: its buffer is invalid "
        "(no bridge serves it now); nothing written"
    )
    buffer.serve()
    assert buffer.pending_writes() == {}
    buffer.stop_serving()  # the device went away
    status, _, err = run(capsys, "buffers", "write", hex(YOGI), "duty_cycle=0.5")
    assert status == 1 and "is not connected" in one_line(err)


def test_write_to_a_device_without_a_buffer_says_it_is_not_connected(
    capsys: pytest.CaptureFixture[str], namespace: str
) -> None:
    status, out, err = run(capsys, "buffers", "write", hex(YOGI), "duty_cycle=0.5")
    assert (status, out) == (1, "")
    line = one_line(err)
    assert line.startswith(f"runtime buffers: error: yogi-bear:{YOGI:#x} is not connected: it has no buffer")
    assert repr(namespace) in line
    assert not segment_exists(f"{namespace}-yogi-bear-{YOGI:x}")  # writing never creates


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        ([hex(YOGI), "duty_cycle"], "bad assignment 'duty_cycle': write PARAM=VALUE"),
        ([hex(YOGI), "=0.5"], "bad assignment '=0.5'"),
        ([hex(YOGI), "duty_cycle=0.1", "duty_cycle=0.2"], "parameter 'duty_cycle' is given twice"),
        (
            ["yogi-beer:1", "duty_cycle=0.1"],
            "no device type 'yogi-beer' in the catalog (did you mean 'yogi-bear'?)",
        ),
        (["-5", "duty_cycle=0.1"], "bad UID '-5'"),
        ([hex(YOGI)], "required: PARAM=VALUE"),
    ],
)
def test_write_usage_errors_exit_2(
    capsys: pytest.CaptureFixture[str], motor: DeviceBuffer, argv: list[str], complaint: str
) -> None:
    status, out, err = run(capsys, "buffers", "write", *argv)
    assert (status, out) == (2, "")
    assert complaint in err
    assert motor.pending_writes() == {}


@pytest.fixture
def bench(namespace: str, tmp_path: Path) -> Iterator[tuple[str, DeviceBuffer]]:
    """A served buffer of a device type with every kind of value, and its catalog file."""
    path = tmp_path / "bench.yaml"
    path.write_text(BENCH_CATALOG)
    with BufferStore(catalog.load(path)) as store:
        buffer = store.get_or_open(BENCH)
        buffer.serve()
        yield str(path), buffer


def plain(value: Any) -> Any:
    """Lists for ctypes arrays."""
    return [plain(item) for item in value] if isinstance(value, ctypes.Array) else value


@pytest.mark.parametrize(
    ("assignment", "expected"),
    [
        ("enabled=true", True),
        ("enabled=FALSE", False),
        ("enabled=1", True),
        ("enabled=0", False),
        ("mode=7", 7),
        ("mode=0x10", 16),
        ("offset=-42", -42),
        ("gains=1,2.5,-3", [1.0, 2.5, -3.0]),
        ("gains=[1, 2.5, -3]", [1.0, 2.5, -3.0]),
        ("steps=[[1, 2], [3, -4]]", [[1, 2], [3, -4]]),
        ("label=hello", b"hello"),
        ("speed=1e3", 1000.0),
    ],
)
def test_write_parses_values_by_type(
    capsys: pytest.CaptureFixture[str], bench: tuple[str, DeviceBuffer], assignment: str, expected: Any
) -> None:
    path, buffer = bench
    status, out, err = run(capsys, "buffers", "write", "--catalog", path, hex(BENCH), assignment)
    assert (status, err) == (0, ""), err
    name = assignment.partition("=")[0]
    assert plain(buffer.pending_writes()[name]) == expected
    assert out.startswith(f"wrote bench-board:{BENCH:#x}: {name}=")


@pytest.mark.parametrize(
    ("assignment", "complaint"),
    [
        ("enabled=maybe", "cannot write enabled=maybe: 'maybe' is not true or false"),
        ("mode=1.5", "cannot write mode=1.5: '1.5' is not an integer (uint8) in [0, 255]"),
        ("gains=1,2", "cannot write gains=1,2: [1.0, 2.0] is not 3 numbers (float), as a comma list"),
        ("gains=[1, true, 3]", "cannot write gains=[1, true, 3]: gains[1]: True is not a number"),
        (
            "steps=1,2,3,4",
            "cannot write steps=1,2,3,4: '1,2,3,4' is not a 2x2 JSON list of lists of integers",
        ),
        ("steps=[[1, 2], [3]]", "cannot write steps=[[1, 2], [3]]: steps[1]: [3] is not 2 integers (int16)"),
        ("label=much too long", "cannot write label=much too long: 13 bytes of text do not fit 8"),
    ],
)
def test_write_refuses_values_of_the_wrong_type(
    capsys: pytest.CaptureFixture[str], bench: tuple[str, DeviceBuffer], assignment: str, complaint: str
) -> None:
    path, buffer = bench
    status, out, err = run(capsys, "buffers", "write", "--catalog", path, hex(BENCH), assignment)
    assert (status, out) == (1, "")
    assert complaint in one_line(err)
    assert buffer.pending_writes() == {}


@pytest.mark.parametrize(
    ("assignment", "complaint"),
    [
        ("offset=500", "cannot write offset=500: 500 is out of bounds [-100, 100]"),
        ("mode=300", "cannot write mode=300: 300 is out of bounds [0, 255]"),  # the type's range
        ("steps=[[1, 2], [3, 40000]]", "cannot write steps=[[1, 2], [3, 40000]]: steps[1][1]: 40000 is out"),
    ],
)
def test_write_refuses_integers_out_of_bounds_or_range(
    capsys: pytest.CaptureFixture[str], bench: tuple[str, DeviceBuffer], assignment: str, complaint: str
) -> None:
    path, buffer = bench
    status, out, err = run(
        capsys, "buffers", "write", "--catalog", path, hex(BENCH), "enabled=true", assignment
    )
    assert (status, out) == (1, "")
    assert one_line(err).startswith(f"runtime buffers: error: {complaint}")
    assert buffer.pending_writes() == {}


# ---- buffers clean --------------------------------------------------------------------------------

CHILD = """\
import sys, time
from runtime import BufferStore, load_catalog

store = BufferStore(load_catalog())
buffer = store.get_or_open(int(sys.argv[1]))
mode = sys.argv[2]
if mode.startswith("serve"):
    buffer.serve()
if mode == "serve-stop":
    buffer.stop_serving()
print("ready", flush=True)
if mode != "serve-exit":
    time.sleep(60)
"""
"""A child process that opens a Smart Device buffer: ``serve`` it (and stay), ``serve-stop`` (stop
serving, stay: a bridge whose device was unplugged), ``serve-exit`` (serve and exit), ``attach`` (stay)."""


class Children:
    """Child processes of the test, killed and reaped at the end whatever happens."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[str]] = []

    def start(self, uid: int, mode: str) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(uid), mode],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.processes.append(process)
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 20)
        assert ready and process.stdout.readline() == "ready\n", "the child did not get ready"
        if mode == "serve-exit":
            assert process.wait(timeout=20) == 0
        return process

    def kill(self, process: subprocess.Popen[str]) -> None:
        """SIGKILL, and reap (a zombie would still count as a live process)."""
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGKILL)
        process.wait(timeout=20)

    def kill_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                self.kill(process)


@pytest.fixture
def children(namespace: str) -> Iterator[Children]:
    processes = Children()
    try:
        yield processes
    finally:
        processes.kill_all()


def uid_of(type_name: str, number: int) -> int:
    buffer_type: Any = catalog.load()[type_name]
    return int(DeviceUID(buffer_type.device_id, 0x0A, number))


def segment(namespace: str, type_name: str, uid: int) -> str:
    return f"{namespace}-{type_name}-{uid:x}"


def test_clean_removes_the_segment_of_a_producer_that_was_killed(
    capsys: pytest.CaptureFixture[str], children: Children, namespace: str
) -> None:
    uid = uid_of("yogi-bear", 1)
    name = segment(namespace, "yogi-bear", uid)
    process = children.start(uid, "serve")
    with BufferStore(catalog.load()) as store:
        assert store.stale_segments() == []  # served by a live producer
        children.kill(process)
        assert store.stale_segments() == [("yogi-bear", uid, name, process.pid)]

    status, out, err = run(capsys, "buffers", "clean", "--dry-run")
    assert (status, err) == (0, "")
    assert out.splitlines() == [
        f"would remove yogi-bear:{uid:#x} (segment {name}, last served by pid {process.pid}, gone)",
        f"would remove 1 stale segment in namespace {namespace!r}",
    ]
    assert segment_exists(name)

    status, out, err = run(capsys, "buffers", "clean")
    assert (status, err) == (0, "")
    assert out.splitlines()[-1] == f"removed 1 stale segment in namespace {namespace!r}"
    assert not segment_exists(name)
    status, out, _ = run(capsys, "buffers", "clean")
    assert (status, out) == (0, f"no stale segments in namespace {namespace!r}; it has no segments\n")


def test_clean_removes_the_segment_of_a_producer_that_exited(
    capsys: pytest.CaptureFixture[str], children: Children, namespace: str
) -> None:
    uid = uid_of("servo-motor", 2)
    children.start(uid, "serve-exit")
    status, out, _ = run(capsys, "buffers", "clean", "--json")
    assert status == 0
    report = json.loads(out)
    assert report["namespace"] == namespace and report["dry_run"] is False
    [removed] = report["removed"]
    assert (removed["type"], removed["uid"], removed["segment"]) == (
        "servo-motor",
        uid,
        segment(namespace, "servo-motor", uid),
    )
    assert not segment_exists(removed["segment"])


def test_clean_keeps_what_is_served_never_served_or_in_use(
    capsys: pytest.CaptureFixture[str], children: Children, store: BufferStore, namespace: str
) -> None:
    served_here = store.get_or_open(uid_of("yogi-bear", 3))
    served_here.serve()  # a live producer: this process
    children.start(uid_of("yogi-bear", 4), "serve")  # a live producer: another process
    store.get_or_open(uid_of("limit-switch", 5))  # student code, before the bridge came: never served
    store.get_or_open(("gamepad", 0))  # a plain buffer a program uses on its own
    children.start(uid_of("battery", 6), "attach")  # never served, and its creator is alive
    children.kill(children.start(uid_of("potentiometer", 7), "attach"))  # its creator is gone; never served
    unplugged = uid_of("servo-motor", 8)
    bridge_alive = children.start(unplugged, "serve-stop")  # a bridge whose device was unplugged
    held = uid_of("team-flag", 9)
    dead = children.start(held, "serve")
    reader = children.start(held, "attach")  # student code still holding it
    children.kill(dead)
    before = own_segments(namespace)
    assert store.stale_segments() == []

    status, out, _ = run(capsys, "buffers", "clean")
    assert status == 0
    assert (
        out == f"no stale segments in namespace {namespace!r}; 8 kept (served, never served, or still open)\n"
    )
    assert own_segments(namespace) == before  # (only its own: another suite may run beside this one)

    children.kill(bridge_alive)  # the bridge stopped: its unplugged device's segment is stale now
    children.kill(reader)  # nobody holds the killed producer's segment any more
    stale = {name for _, _, name, _ in store.stale_segments()}
    assert stale == {segment(namespace, "servo-motor", unplugged), segment(namespace, "team-flag", held)}
    status, out, _ = run(capsys, "buffers", "clean")
    assert status == 0
    assert out.splitlines()[-1] == (
        f"removed 2 stale segments in namespace {namespace!r}; 6 kept (served, never served, or still open)"
    )
    assert not any(segment_exists(name) for name in stale)
    assert segment_exists(served_here.name) and served_here.valid


def test_clean_touches_only_its_namespace(
    capsys: pytest.CaptureFixture[str], children: Children, namespace: str
) -> None:
    uid = uid_of("yogi-bear", 10)
    children.kill(children.start(uid, "serve"))
    name = segment(namespace, "yogi-bear", uid)
    status, out, _ = run(capsys, "buffers", "clean", "--namespace", namespace + "-other")
    assert (status, out) == (
        0,
        f"no stale segments in namespace {namespace + '-other'!r}; it has no segments\n",
    )
    assert segment_exists(name)
    status, out, _ = run(capsys, "buffers", "--namespace", namespace, "clean", "--dry-run")
    assert status == 0 and name in out


def test_a_process_local_store_has_no_stale_segments(namespace: str) -> None:
    assert BufferStore(catalog.load(), shared=False).stale_segments() == []


# ---- the bridge says what it found when no device connects ---------------------------------------

REPORT = "no Smart Device connected for"


@pytest.fixture
def fast_bridge(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> pytest.LogCaptureFixture:
    """The bridge scans every 50 ms and reports after 0.3 s; its log lines are captured."""
    monkeypatch.setattr(bridge, "POLL_INTERVAL", 0.05)
    monkeypatch.setattr(bridge, "NO_DEVICE_REPORT_DELAY", 0.3)
    caplog.set_level(logging.INFO, logger=bridge.logger.name)
    return caplog


def run_bridge(
    store: BufferStore,
    seconds: float,
    *,
    ports: Sequence[str] = (),
    globs: Sequence[str] = (),
    during: Callable[[], Coroutine[Any, Any, None]] | None = None,
) -> None:
    """Run a bridge in this process for ``seconds`` (and ``during()`` beside it)."""

    async def main() -> None:
        stop = asyncio.Event()
        serving = asyncio.create_task(bridge.Bridge(store, ports, globs).serve(stop))
        helper = asyncio.create_task(during()) if during is not None else None
        await asyncio.sleep(seconds)
        stop.set()
        done, _ = await asyncio.wait({serving}, timeout=10.0)  # it needs milliseconds
        assert serving in done, "the bridge did not finish within 10 s of stop"
        serving.result()
        if helper is not None:
            helper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await helper

    asyncio.run(main())


def reports(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if REPORT in record.getMessage()]


@contextlib.contextmanager
def pty_pair() -> Iterator[tuple[int, str]]:
    """A pseudo-terminal: (the test's master end, the path the bridge opens)."""
    master, slave = os.openpty()
    try:
        os.set_blocking(master, False)
        yield master, os.ttyname(slave)
    finally:
        os.close(master)
        os.close(slave)


def answer_pings(master: int, uid: int) -> Callable[[], Coroutine[Any, Any, None]]:
    """A device that answers whatever it gets with the SUB_RES of ``uid`` (a PING's answer)."""
    parts = DeviceUID.from_int(uid)
    reply = Message.make_sub_res(0, 0, parts.device_id, parts.year, parts.random).encode() + DELIM

    async def device() -> None:
        while True:
            try:
                if os.read(master, 4096):
                    os.write(master, reply)
            except BlockingIOError:
                pass
            await asyncio.sleep(0.02)

    return device


def test_a_glob_that_matches_nothing_is_reported_once(
    fast_bridge: pytest.LogCaptureFixture, store: BufferStore, tmp_path: Path
) -> None:
    pattern = str(tmp_path / "ports" / "ttyACM*")
    run_bridge(store, 1.0, globs=[pattern])
    [record] = reports(fast_bridge)
    assert record.levelno == logging.WARNING
    assert record.getMessage() == (
        f"bridge: no Smart Device connected for 0.3 s; watching {pattern}: nothing matches {pattern}"
    )


def test_a_port_that_never_answers_ping_is_reported_once(
    fast_bridge: pytest.LogCaptureFixture, store: BufferStore, tmp_path: Path
) -> None:
    ports = tmp_path / "ports"
    ports.mkdir()
    with pty_pair() as (_, path):
        (ports / "ttyACM0").symlink_to(path)
        run_bridge(store, 1.0, globs=[str(ports / "*")])
    [record] = reports(fast_bridge)
    assert record.getMessage().endswith(f"watching {ports}/*: {ports}/ttyACM0: no answer to PING")


def test_the_report_comes_again_when_the_picture_changes(
    fast_bridge: pytest.LogCaptureFixture, store: BufferStore, tmp_path: Path
) -> None:
    ports = tmp_path / "ports"
    ports.mkdir()
    missing = str(tmp_path / "ttyUSB9")
    unknown = 999 << 72 | 0x0A << 64 | 0x1234  # a device type the catalog lacks
    with pty_pair() as (_, path), pty_pair() as (master, unknown_path):

        async def plug_in_later() -> None:
            await asyncio.sleep(0.6)
            (ports / "ttyACM0").symlink_to(path)
            await asyncio.sleep(0.6)
            (ports / "ttyACM1").symlink_to(unknown_path)
            await answer_pings(master, unknown)()

        run_bridge(store, 2.0, ports=[missing], globs=[str(ports / "*")], during=plug_in_later)
    messages = [record.getMessage().partition("; ")[2] for record in reports(fast_bridge)]
    watched = f"watching {missing}, {ports}/*"
    assert messages == [
        f"{watched}: nothing matches {ports}/*; {missing} does not exist",
        f"{watched}: {missing} does not exist; {ports}/ttyACM0: no answer to PING",
        f"{watched}: {missing} does not exist; {ports}/ttyACM0: no answer to PING; "
        f"{ports}/ttyACM1: a device of unknown type (device id 999, uid {unknown:#x}), not in the catalog",
    ]


def test_a_connected_device_silences_the_report(
    fast_bridge: pytest.LogCaptureFixture, store: BufferStore, tmp_path: Path
) -> None:
    ports = tmp_path / "ports"
    ports.mkdir()
    with pty_pair() as (master, path), pty_pair() as (_, silent):
        (ports / "ttyACM0").symlink_to(path)
        (ports / "ttyACM1").symlink_to(silent)  # would be reported, were no device connected
        run_bridge(
            store, 1.0, globs=[str(ports / "*")], during=answer_pings(master, uid_of("limit-switch", 11))
        )
    assert any(
        "connected" in record.getMessage() and "limit-switch" in record.getMessage()
        for record in fast_bridge.records
    )
    assert reports(fast_bridge) == []


def test_the_real_bridge_reports_after_5_seconds(namespace: str, tmp_path: Path) -> None:
    pattern = str(tmp_path / "none" / "ttyACM*")
    process = subprocess.Popen(
        [sys.executable, "-m", "runtime", "bridge", "--glob", pattern],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(bridge.NO_DEVICE_REPORT_DELAY + 2.0)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err
    lines = [line for line in err.splitlines() if REPORT in line]
    assert len(lines) == 1, err
    assert lines[0].endswith(
        f"WARNING runtime.bridge: bridge: no Smart Device connected for 5 s; "
        f"watching {pattern}: nothing matches {pattern}"
    )


# ---- help -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["write", "clean"])
def test_help_of_the_new_actions_has_examples(capsys: pytest.CaptureFixture[str], action: str) -> None:
    status, out, _ = run(capsys, "buffers", action, "--help")
    assert status == 0
    epilog = out.partition("examples:\n")[2]
    examples = [line for line in epilog.splitlines() if line.startswith("  $ runtime ")]
    assert examples and all(f"  $ runtime buffers {action}" in line for line in examples)
    for line in examples:  # they parse (tests/test_cli_errors.py runs them)
        argv = shlex.split(line.removeprefix("  $ "), comments=True)[1:]
        args = cli._parse(cli.build_parser(), argv)
        assert args.action == action


# ---- the systemd unit -----------------------------------------------------------------------------


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """A systemd unit file: ``{section: [(key, value), ...]}`` (keys may repeat); strict about syntax."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    lines = iter(text.splitlines())
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        while stripped.endswith("\\"):  # a continued line
            stripped = stripped[:-1] + " " + next(lines).strip()
        header = re.fullmatch(r"\[([A-Za-z]+)\]", stripped)
        if header:
            assert header[1] not in sections, f"line {number}: section [{header[1]}] twice"
            current = sections.setdefault(header[1], [])
            continue
        entry = re.fullmatch(r"([A-Za-z][A-Za-z0-9]*)\s*=\s*(.*)", stripped)
        assert entry, f"line {number}: not KEY=VALUE: {line!r}"
        assert current is not None, f"line {number}: a key before any section"
        current.append((entry[1], entry[2]))
    return sections


UNIT_KEYS = {
    "Unit": {"Description", "Documentation", "After", "Wants", "Requires", "Before"},
    "Service": {
        "Type",
        "User",
        "Group",
        "SupplementaryGroups",
        "RuntimeDirectory",
        "RuntimeDirectoryMode",
        "ExecStartPre",
        "ExecStart",
        "KillSignal",
        "TimeoutStopSec",
        "Restart",
        "RestartSec",
        "StandardOutput",
        "StandardError",
        "Environment",
    },
    "Install": {"WantedBy"},
}


def unit_values(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    return [value for name, value in unit[section] if name == key]


def test_the_unit_runs_the_bridge_as_the_robot_user_and_restarts_it() -> None:
    unit = parse_unit(UNIT.read_text())
    assert set(unit) == set(UNIT_KEYS)
    for section, entries in unit.items():
        unknown = {key for key, _ in entries} - UNIT_KEYS[section]
        assert not unknown, f"[{section}] has keys this test does not know: {unknown}"
    [start] = unit_values(unit, "Service", "ExecStart")
    argv = shlex.split(start)
    assert os.path.isabs(argv[0]) and argv[0].endswith("/runtime")
    assert argv[1:] == ["bridge", "--glob", "/dev/ttyACM*", "--stats", "/run/runtime/bridge.json"]
    args = cli._parse(cli.build_parser(), argv[1:])  # the real parser takes it
    assert (args.command, args.glob, args.stats) == ("bridge", ["/dev/ttyACM*"], "/run/runtime/bridge.json")
    assert unit_values(unit, "Service", "RuntimeDirectory") == ["runtime"]  # makes /run/runtime
    [user] = unit_values(unit, "Service", "User")
    assert user not in ("", "root")
    assert unit_values(unit, "Service", "Restart") == ["on-failure"]
    [after] = unit_values(unit, "Unit", "After")
    assert "systemd-udev-trigger.service" in after.split()
    assert unit_values(unit, "Install", "WantedBy") == ["multi-user.target"]
    for pre in unit_values(unit, "Service", "ExecStartPre"):
        pre_argv = shlex.split(pre.removeprefix("-"))
        assert pre_argv[0] == argv[0]
        assert cli._parse(cli.build_parser(), pre_argv[1:]).action == "clean"


def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("no systemd-analyze on this machine (the unit is parsed by the test above)")
    program = shutil.which("runtime") or str(Path(sys.executable).with_name("runtime"))
    if not os.access(program, os.X_OK):
        pytest.skip("no runtime program to put in ExecStart")
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/runtime", program))
    done = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )
    about_it = [line for line in (done.stdout + done.stderr).splitlines() if UNIT.name in line]
    assert not about_it, "\n".join(about_it)
    if done.returncode != 0:
        pytest.skip(f"systemd-analyze cannot verify units here: {done.stderr.strip()}")


# ---- the udev rule --------------------------------------------------------------------------------

UDEV_PAIR = re.compile(
    r'\s*(?P<key>[A-Z_]+)(?:\{(?P<attr>[^}]+)\})?\s*(?P<op>==|!=|\+=|-=|:=|=)\s*"(?P<value>[^"]*)"\s*(?:,|$)'
)
UDEV_MATCH_KEYS = {
    "ACTION",
    "SUBSYSTEM",
    "SUBSYSTEMS",
    "KERNEL",
    "KERNELS",
    "ATTR",
    "ATTRS",
    "DRIVERS",
    "ENV",
}
UDEV_ASSIGN_KEYS = {"GROUP", "OWNER", "MODE", "SYMLINK", "TAG", "ENV", "RUN", "NAME"}


def parse_rules(text: str) -> list[list[tuple[str, str | None, str, str]]]:
    """udev rules: each rule a list of ``(key, attribute, operator, value)``; strict about syntax."""
    rules = []
    for number, line in enumerate(text.replace("\\\n", " ").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        pairs, position = [], 0
        while position < len(line):
            match = UDEV_PAIR.match(line, position)
            assert match, f"line {number}: cannot read from {line[position:]!r}"
            pairs.append((match["key"], match["attr"], match["op"], match["value"]))
            position = match.end()
        rules.append(pairs)
    return rules


def test_the_udev_rule_gives_smart_devices_to_the_robot_group() -> None:
    rules = parse_rules(RULES.read_text())
    assert rules
    unit = parse_unit(UNIT.read_text())
    [group] = unit_values(unit, "Service", "Group")
    for rule in rules:
        values: dict[str, list[str]] = {}
        for key, attr, op, value in rule:
            if op in ("==", "!="):
                assert key in UDEV_MATCH_KEYS or key == "TAG", f"{key} cannot be matched"
            else:
                assert key in UDEV_ASSIGN_KEYS, f"{key} cannot be assigned"
                assert op in (
                    ("=", "+=", "-=", ":=") if key in ("SYMLINK", "TAG", "RUN", "ENV") else ("=", ":=")
                )
            values.setdefault(key if attr is None else f"{key}{{{attr}}}", []).append(f"{op}{value}")
        assert values["SUBSYSTEM"] == ["==tty"]
        [kernel] = values["KERNEL"]
        assert kernel.startswith("==") and fnmatch.fnmatch("ttyACM0", kernel[2:])
        for attr in ("ATTRS{idVendor}", "ATTRS{idProduct}"):
            [match] = values[attr]
            assert re.fullmatch(r"==[0-9a-f]{4}", match), f"{attr}{match}: four lowercase hex digits"
        assert values["GROUP"] == [f"={group}"]
        assert values["MODE"] == ["=0660"]
        for link in values.get("SYMLINK", []):
            assert link.startswith("+=") and not link[2:].startswith("/")
            assert fnmatch.fnmatch("/dev/" + link[2:].replace("%k", "ttyACM0"), "/dev/smart-devices/*")


def test_udevadm_verifies_the_rule() -> None:
    udevadm = shutil.which("udevadm")
    if udevadm is None:
        pytest.skip("no udevadm on this machine (the rule is parsed by the test above)")
    done = subprocess.run([udevadm, "verify", "--help"], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        pytest.skip("this udevadm has no 'verify' (systemd 254 and later)")
    done = subprocess.run([udevadm, "verify", str(RULES)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr


# ---- watching for ports ---------------------------------------------------------------------------


@pytest.fixture
def slow_scans(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """The bridge's periodic scans come every minute: a port found sooner was found through inotify."""
    monkeypatch.setattr(bridge, "POLL_INTERVAL", 60.0)
    monkeypatch.setattr(bridge, "SAFETY_SCAN_INTERVAL", 60.0)
    caplog.set_level(logging.INFO, logger=bridge.logger.name)
    return caplog


def plug_in_later(link: Path, target: str, plugged: list[float]) -> Callable[[], Coroutine[Any, Any, None]]:
    """After 0.3 s, make ``link`` (and its directory) lead to ``target``; note when in ``plugged``."""

    async def plug_in() -> None:
        await asyncio.sleep(0.3)
        plugged.append(time.time())
        link.parent.mkdir(exist_ok=True)
        link.symlink_to(target)

    return plug_in


def opened_after(caplog: pytest.LogCaptureFixture, path: str, since: float) -> list[float]:
    return [
        r.created - since
        for r in caplog.records
        if r.getMessage() == f"port {path}: opened; waiting for a Smart Device to answer PING"
    ]


@pytest.mark.parametrize("how", ["glob", "port"])
def test_a_port_that_appears_is_seen_at_once_without_polling(
    slow_scans: pytest.LogCaptureFixture, store: BufferStore, tmp_path: Path, how: str
) -> None:
    ports = tmp_path / "ports"
    ports.mkdir()
    link = ports / "ttyACM0"
    plugged: list[float] = []
    with pty_pair() as (_, path):
        if how == "glob":
            run_bridge(store, 2.0, globs=[str(ports / "*")], during=plug_in_later(link, path, plugged))
        else:
            run_bridge(store, 2.0, ports=[str(link)], during=plug_in_later(link, path, plugged))
    [delay] = opened_after(slow_scans, str(link), plugged[0])
    assert 0 <= delay < 1.0  # the next scan was a minute away


def test_where_inotify_cannot_tell_the_bridge_polls(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, store: BufferStore, tmp_path: Path
) -> None:
    monkeypatch.setattr(bridge, "POLL_INTERVAL", 0.1)
    monkeypatch.setattr(bridge, "SAFETY_SCAN_INTERVAL", 60.0)
    caplog.set_level(logging.INFO, logger=bridge.logger.name)
    link = tmp_path / "later" / "ttyACM0"  # its directory does not exist yet: nothing to watch
    plugged: list[float] = []
    with pty_pair() as (_, path):
        run_bridge(store, 2.0, ports=[str(link)], during=plug_in_later(link, path, plugged))
    [delay] = opened_after(caplog, str(link), plugged[0])
    assert 0 <= delay < 1.0  # polled every 0.1 s (the safety scan was a minute away)
