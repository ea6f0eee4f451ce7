"""The driver station over Zenoh: ``runtime zenoh``'s ``@mode`` and ``@input`` keys, the
:mod:`runtime.remote` driver API, and ``runtime drive`` in its script mode.

``runtime zenoh --listen tcp/127.0.0.1:PORT`` runs as a real process in a
namespace of each test's own (so that a mode or an input left by one test is
never seen by the next); the test reads the field, gamepad, keyboard buffers
locally with a :class:`BufferStore`, and plays ``runtime run`` by serving the
runner buffer itself.
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e import CATALOG, Children, children_fixture, namespace_fixture, wait_for
from test_zenoh import Raw, connect, free_port, raw, raw_sessions, start_robot, start_zenoh

from runtime import driver, remote
from runtime.buffer import Buffer, BufferStore, DeviceBufferError
from runtime.student import FIELD_KEY, GAMEPAD_KEY, KEYBOARD_KEY, RUNNER_KEY

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

__all__ = ["raw_sessions"]  # a fixture of test_zenoh's, used here

children = children_fixture()
DEADLINE = 10.0
"""Seconds within which the robot must take a mode or an input, or notice a client's death."""
LEASE_MS = 1000
"""The Zenoh lease of the killed driver station's session (a lost network is noticed after it)."""


namespace = namespace_fixture("rt-test-drive", scope="function")


@pytest.fixture
def store(namespace: str) -> Iterator[BufferStore]:
    with BufferStore(CATALOG) as buffers:
        yield buffers


def value(store: BufferStore, key: tuple[str, int], param: str) -> Any:
    """A parameter of a plain buffer of the namespace, or None when it does not exist or is invalid."""
    try:
        return store.get_or_open(key, create=False).get(param)
    except DeviceBufferError:
        return None


def buffer(store: BufferStore, key: tuple[str, int]) -> Buffer:
    return wait_for(f"the {key[0]} buffer", lambda: _try_open(store, key), timeout=DEADLINE)


def _try_open(store: BufferStore, key: tuple[str, int]) -> Buffer | None:
    try:
        return store.get_or_open(key, create=False)
    except DeviceBufferError:
        return None


def start_server(children: Children) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    return f"tcp/127.0.0.1:{port}", start_zenoh(children, port)


# ---- the mode ------------------------------------------------------------------------------------


def test_a_remote_client_sets_the_field_mode(
    children: Children, store: BufferStore, namespace: str, raw_sessions: list[Raw]
) -> None:
    endpoint, server = start_server(children)
    with connect(endpoint, namespace) as robot:
        wait_for("the robot online", lambda: robot.online)  # the session may open before the token
        assert robot.mode == "idle"  # no field buffer yet: a get on @mode answers idle
        assert robot.running is None
        for mode, number in (("teleop", 2), ("auto", 1), (2, 2), ("idle", 0)):
            robot.set_mode(mode)
            wait_for(f"the field's mode {number}", lambda n=number: value(store, FIELD_KEY, "mode") == n)
            wait_for(f"robot.mode {mode}", lambda n=number: robot.mode == ("idle", "auto", "teleop")[n])
        with pytest.raises(ValueError, match="a mode is one of idle, auto, teleop, not 'telop'"):
            robot.set_mode("telop")

        robot.set_mode("teleop")
        wait_for("teleop", lambda: value(store, FIELD_KEY, "mode") == 2)
        plain = raw(raw_sessions, endpoint)
        answer = plain.get(f"runtime/{namespace}/@mode")[f"runtime/{namespace}/@mode"]
        assert answer["mode"] == "teleop" and answer["running"] is None
        assert answer["driver"] == robot.client_id
        # Idle is safe: accepted at once from anyone, without a token.
        plain.put(f"runtime/{namespace}/@mode", json.dumps("idle"))
        wait_for("idle", lambda: value(store, FIELD_KEY, "mode") == 0)
    assert f"mode idle -> teleop, set by client {robot.client_id}" in children.log(server)


def test_a_mode_other_than_idle_without_a_token_is_refused(
    children: Children, store: BufferStore, namespace: str, raw_sessions: list[Raw]
) -> None:
    endpoint, _ = start_server(children)
    plain = raw(raw_sessions, endpoint)
    plain.subscribe(f"runtime/{namespace}/@mode/error")
    mode_key = f"runtime/{namespace}/@mode"
    wait_for("runtime zenoh answering", lambda: mode_key in plain.get(mode_key))
    plain.put(mode_key, json.dumps({"mode": "teleop"}))
    plain.put(mode_key, json.dumps({"mode": "fast"}))
    errors = wait_for("two refusals", lambda: _at_least(plain.received("data PUT"), 2), timeout=DEADLINE)
    assert errors[0]["error"].startswith("mode teleop needs a driver station")
    assert f"runtime/{namespace}/@client/<id>" in errors[0]["error"]
    assert errors[0]["request"] == {"mode": "teleop"} and errors[0]["client"] is None
    assert "a mode is one of idle, auto, teleop, not 'fast'" in errors[1]["error"]
    assert value(store, FIELD_KEY, "mode") in (None, 0)

    # A client with a token is a driver; its refusals come back to it too.
    with connect(endpoint, namespace) as robot:
        robot.set_mode("auto")
        wait_for("auto", lambda: value(store, FIELD_KEY, "mode") == 1)
        robot._put(mode_key, json.dumps({"mode": None}))
        refusals = wait_for("the robot's refusal", robot.refusals, timeout=DEADLINE)
        assert refusals[0]["client"] == robot.client_id and "not None" in refusals[0]["error"]
        assert robot.last_mode_error == refusals[0]
    wait_for("the raw client's copy", lambda: _at_least(plain.received("data PUT"), 3), timeout=DEADLINE)


def _at_least(items: list[Any], count: int) -> list[Any] | None:
    return items if len(items) >= count else None


# ---- the inputs ----------------------------------------------------------------------------------


def test_inputs_reach_the_local_buffers_checked_all_or_none_and_end_with_their_client(
    children: Children, store: BufferStore, namespace: str, raw_sessions: list[Raw]
) -> None:
    endpoint, server = start_server(children)
    with connect(endpoint, namespace) as robot:
        robot.send_gamepad({"button_a": True, "joystick_left_x": 0.5})
        gamepad = buffer(store, GAMEPAD_KEY)
        wait_for("button_a pressed", lambda: value(store, GAMEPAD_KEY, "button_a") is True)
        assert gamepad.valid and gamepad.producer_pid == server.pid
        assert gamepad.get("joystick_left_x") == 0.5

        # Checked here first, as the robot checks it.
        with pytest.raises(ValueError, match=r"joystick_left_x: 1.5 is out of bounds \[-1, 1\]"):
            robot.send_gamepad({"joystick_left_x": 1.5})
        with pytest.raises(DeviceBufferError, match="did you mean 'button_a'"):
            robot.send_gamepad({"buton_a": True})
        with pytest.raises(ValueError, match="button_b: 1 is not true or false"):
            robot.send_gamepad({"button_b": 1})

        # What the robot refuses (from a client that skips the checks) changes nothing: all or none.
        robot._put(
            remote.input_key(namespace, "gamepad"), json.dumps({"button_a": False, "joystick_left_x": -1.5})
        )
        refusals = wait_for("the refusal", robot.refusals, timeout=DEADLINE)
        assert refusals[0]["error"] == ("joystick_left_x: -1.5 is out of bounds [-1, 1]")
        assert refusals[0]["param"] == "joystick_left_x"
        assert refusals[0]["key"] == f"runtime/{namespace}/@input/gamepad"
        robot.send_gamepad({"joystick_left_y": -0.25})  # after the refusal, in order
        wait_for("joystick_left_y", lambda: value(store, GAMEPAD_KEY, "joystick_left_y") == -0.25)
        assert gamepad.get("button_a") is True and gamepad.get("joystick_left_x") == 0.5

        # The keyboard, by key or parameter name; one producer at a time.
        keyboard = store.get_or_open(KEYBOARD_KEY)
        keyboard.serve()  # another driver station, here
        robot.send_keyboard({"a": True})
        refusals = wait_for("the keyboard refused", robot.refusals, timeout=DEADLINE)
        assert refusals[0]["error"].startswith(f"the keyboard is fed by another process (pid {os.getpid()})")
        keyboard.stop_serving()
        robot.send_keyboard({"a": True, ",": True, "digit_1": True})
        wait_for("a pressed", lambda: value(store, KEYBOARD_KEY, "a") is True)
        assert keyboard.get("comma") is True and keyboard.get("digit_1") is True
        assert keyboard.producer_pid == server.pid

        # A raw client without a token feeds nothing.
        plain = raw(raw_sessions, endpoint)
        plain.subscribe(f"runtime/{namespace}/@input/*/error")
        plain.put(remote.input_key(namespace, "keyboard"), json.dumps({"b": True}))
        (error,) = wait_for("the raw refusal", lambda: plain.received("data PUT"), timeout=DEADLINE)
        assert error["error"].startswith("the keyboard needs a driver station")
        assert keyboard.get("b") is False
    # The client is gone: its inputs are neutral, and nobody serves them.
    wait_for("the gamepad invalid", lambda: not gamepad.valid, timeout=DEADLINE)
    wait_for("the keyboard invalid", lambda: not keyboard.valid, timeout=DEADLINE)
    assert gamepad.producer_pid is None and keyboard.producer_pid is None
    keyboard.serve()  # to read what it holds
    assert keyboard.get("a") is False and keyboard.get("comma") is False
    keyboard.stop_serving()
    assert "the gamepad is back to neutral and no longer served" in children.log(server)


# ---- a driver station that dies ------------------------------------------------------------------

DRIVER = """\
import sys, time
from runtime import remote

endpoint, namespace, config = sys.argv[1:]
deadline = time.monotonic() + 15
while True:  # runtime zenoh may not listen yet
    try:
        robot = remote.connect(endpoint, namespace=namespace, config=config, timeout=2.0)
        break
    except remote.RemoteError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.1)
robot.set_mode("teleop")
robot.send_keyboard({"w": True})
print(robot.client_id, flush=True)
time.sleep(600)
"""
"""A driver station in a process of its own: teleop, w held; prints its ID, then waits."""


def test_a_killed_driver_station_puts_the_robot_idle_and_its_keys_neutral(
    children: Children, store: BufferStore, namespace: str, tmp_path: Path
) -> None:
    endpoint, server = start_server(children)
    (tmp_path / "driver.py").write_text(DRIVER)
    config = tmp_path / "lease.json5"
    config.write_text(json.dumps({"transport": {"link": {"tx": {"lease": LEASE_MS, "keep_alive": 4}}}}))
    process = children.start("driver", endpoint, namespace, str(config), stdout=True)
    (client_id,) = children.read_lines(process, 1)
    wait_for("teleop", lambda: value(store, FIELD_KEY, "mode") == 2, timeout=DEADLINE)
    wait_for("w pressed", lambda: value(store, KEYBOARD_KEY, "w") is True, timeout=DEADLINE)
    process.kill()
    wait_for("idle", lambda: value(store, FIELD_KEY, "mode") == 0, timeout=LEASE_MS / 1000 + DEADLINE)
    keyboard = store.get_or_open(KEYBOARD_KEY, create=False)
    wait_for("the keyboard invalid", lambda: not keyboard.valid, timeout=DEADLINE)
    log = children.log(server)
    assert f"client {client_id}, the driver station, is gone: mode teleop -> idle" in log


# ---- the print lines -----------------------------------------------------------------------------


def serve_runner(store: BufferStore, mode: int, lines: int, log: bytes) -> Buffer:
    """Play ``runtime run``: its buffer, served by this process."""
    runner = store.get_or_open(RUNNER_KEY)
    runner.serve()
    with runner.transaction():
        runner.set("mode", mode)
        runner.set("lines", lines)
        runner.set("log", log)
    return runner


def print_lines(runner: Buffer, lines: int, log: bytes) -> None:
    with runner.transaction():
        runner.set("lines", lines)
        runner.set("log", log)


def test_log_lines_are_the_runner_s_new_lines(children: Children, store: BufferStore, namespace: str) -> None:
    endpoint, _ = start_server(children)
    runner = serve_runner(store, 2, 2, b"one\ntwo")
    try:
        with connect(endpoint, namespace) as robot:
            wait_for("the runner seen", lambda: robot.running == "teleop", timeout=DEADLINE)
            got: list[str] = []

            def collect(count: int) -> list[str] | None:
                got.extend(robot.log_lines())
                return got if len(got) >= count else None

            # What the runner still held at connection, then only what is new.
            assert wait_for("two lines", lambda: collect(2), timeout=DEADLINE) == ["one", "two"]
            print_lines(runner, 3, b"one\ntwo\nthree")
            assert wait_for("three lines", lambda: collect(3), timeout=DEADLINE) == ["one", "two", "three"]
            assert robot.log_lines() == [] and robot.log_lines_lost == 0
            # Printed faster than the buffer keeps them: those gone are counted.
            print_lines(runner, 10, b"nine\nten")
            assert wait_for("five lines", lambda: collect(5), timeout=DEADLINE)[3:] == ["nine", "ten"]
            assert robot.log_lines_lost == 5
            runner.stop_serving()
            wait_for("no runner", lambda: robot.running is None, timeout=DEADLINE)
    finally:
        runner.stop_serving()


# ---- runtime drive -------------------------------------------------------------------------------


class Drive:
    """``runtime drive ENDPOINT`` with its stdin a pipe: line commands in, printed lines out."""

    def __init__(self, endpoint: str, namespace: str, log: Path) -> None:
        with open(log, "wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "runtime", "drive", endpoint, "--namespace", namespace],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
            )
        self.output = b""
        self.log = log

    def send(self, *lines: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("".join(f"{line}\n" for line in lines).encode())
        self.process.stdin.flush()

    def lines(self) -> list[str]:
        return self.output.decode().splitlines()

    def wait_line(self, line: str, timeout: float = DEADLINE) -> None:
        """Read the output until it has ``line``."""
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + timeout
        while line not in self.lines():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {line!r} in {self.lines()}; log: {self.log.read_text()}")
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise AssertionError(f"runtime drive exited: {self.lines()}; log: {self.log.read_text()}")
                self.output += chunk

    def finish(self, timeout: float = DEADLINE) -> int:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.close()
        self.output += self.process.stdout.read()
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(5)
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


def test_runtime_drive_script_drives_and_shows_the_print_lines(
    children: Children, store: BufferStore, namespace: str, tmp_path: Path
) -> None:
    endpoint, server = start_server(children)
    connect(endpoint, namespace).close()  # runtime zenoh listens
    runner: Buffer | None = None
    drive = Drive(endpoint, namespace, tmp_path / "drive.log")
    try:
        drive.send("# a comment", "mode teleop", "key a down", "gamepad joystick_left_y -0.5", "key ,")
        wait_for("teleop", lambda: value(store, FIELD_KEY, "mode") == 2, timeout=DEADLINE)
        wait_for("a pressed", lambda: value(store, KEYBOARD_KEY, "a") is True, timeout=DEADLINE)
        wait_for(
            "the joystick", lambda: value(store, GAMEPAD_KEY, "joystick_left_y") == -0.5, timeout=DEADLINE
        )
        drive.wait_line("mode: teleop (no runtime run on the robot)")

        runner = serve_runner(store, 2, 1, b"hello from the robot")
        drive.wait_line("mode: teleop (student code runs teleop)")
        drive.wait_line("log: hello from the robot")

        drive.send("key a up", "gamepad joystick_left_x 2", "jump")
        wait_for("a released", lambda: value(store, KEYBOARD_KEY, "a") is False, timeout=DEADLINE)
        drive.wait_line("error: line 7: joystick_left_x: 2 is out of bounds [-1, 1]")
        drive.send("quit")
        assert drive.finish() == 1  # a bad line (jump)
    finally:
        drive.kill()
        if runner is not None:
            runner.stop_serving()
    lines = drive.lines()
    assert lines[0].startswith(f"connected to runtime/{namespace} as ")
    assert lines[-1] == "quit: the robot is idle"
    assert any(line.startswith("error: line 8: not a command: 'jump'") for line in lines)
    assert value(store, FIELD_KEY, "mode") == 0
    keyboard = store.get_or_open(KEYBOARD_KEY, create=False)
    wait_for("the keyboard invalid", lambda: not keyboard.valid, timeout=DEADLINE)
    log = children.log(server)
    assert "mode teleop -> idle, set by client" in log  # the idle sent on the way out
    assert "Traceback" not in drive.log.read_text()


def test_runtime_drive_on_a_terminal_sends_keys_and_restores_the_terminal(
    children: Children, store: BufferStore, namespace: str, tmp_path: Path
) -> None:
    endpoint, server = start_server(children)
    connect(endpoint, namespace).close()  # runtime zenoh listens
    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    log = tmp_path / "drive.log"
    with open(log, "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "runtime", "drive", endpoint, "--namespace", namespace],
            stdin=slave,
            stdout=slave,
            stderr=stderr,
        )
    output = b""

    def read_until(text: bytes) -> None:
        nonlocal output
        deadline = time.monotonic() + DEADLINE
        while text not in output:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {text!r} in {output!r}; log: {log.read_text()}"
            if select.select([master], [], [], remaining)[0]:
                output += os.read(master, 4096)

    try:
        read_until(b"keys: space idle, Ctrl-A auto, Ctrl-T teleop")  # the terminal is raw now
        assert not termios.tcgetattr(slave)[3] & termios.ECHO
        os.write(master, b"\x14")  # Ctrl-T
        wait_for("teleop", lambda: value(store, FIELD_KEY, "mode") == 2, timeout=DEADLINE)
        read_until(b"mode: teleop")
        os.write(master, b"W\x1b[D")  # shift-w is w; the left arrow
        wait_for("w pressed", lambda: value(store, KEYBOARD_KEY, "w") is True, timeout=DEADLINE)
        pressed = time.monotonic()
        wait_for("left pressed", lambda: value(store, KEYBOARD_KEY, "left_arrow") is True, timeout=DEADLINE)
        # A terminal sees no release: the key counts as held a moment after its press only.
        wait_for("w released", lambda: value(store, KEYBOARD_KEY, "w") is False, timeout=DEADLINE)
        assert time.monotonic() - pressed >= driver.HOLD_FIRST / 2
        os.write(master, b" ")  # space: idle
        wait_for("idle", lambda: value(store, FIELD_KEY, "mode") == 0, timeout=DEADLINE)
        os.write(master, b"\x14")
        wait_for("teleop again", lambda: value(store, FIELD_KEY, "mode") == 2, timeout=DEADLINE)
        os.write(master, b"\x11")  # Ctrl-Q: quit (idle first)
        read_until(b"quit: the robot is idle")
        assert process.wait(DEADLINE) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
        restored = termios.tcgetattr(slave)
        os.close(slave)
        os.close(master)
    assert value(store, FIELD_KEY, "mode") == 0
    assert restored == before  # the terminal as it was
    assert "Traceback" not in log.read_text()


# ---- the whole way: driver station, runtime zenoh, runtime run, the bridge, a device -------------

STUDENT = """
def teleop_main():
    Robot.set_value(MOTOR, "duty_cycle", -Gamepad.get_value("joystick_left_y"))
"""

GAMEPAD_DRIVER = DRIVER.replace(
    'robot.send_keyboard({"w": True})', 'robot.send_gamepad({"joystick_left_y": -0.5})'
)
"""A driver station in a process of its own: teleop, the left stick pushed forward; then waits."""


def test_a_driver_station_drives_student_code_and_its_death_idles_the_robot(
    children: Children, store: BufferStore, namespace: str, tmp_path: Path
) -> None:
    endpoint, _, _ = start_robot(children, tmp_path, "yogi-bear")
    uid = wait_for(
        "the motor served",
        lambda: next((uid for kind, uid, _ in store.find_segments() if kind == "yogi-bear"), None),
        timeout=DEADLINE,
    )
    motor = store.get_or_open(uid, create=False)
    (tmp_path / "robot.py").write_text(f"MOTOR = {hex(uid)!r}\n{STUDENT}")
    children.start("runtime", "run", str(tmp_path / "robot.py"))
    wait_for("the runner idle", lambda: value(store, RUNNER_KEY, "pid") is not None, timeout=DEADLINE)
    (tmp_path / "gamepad_driver.py").write_text(GAMEPAD_DRIVER)
    config = tmp_path / "lease.json5"
    config.write_text(json.dumps({"transport": {"link": {"tx": {"lease": LEASE_MS, "keep_alive": 4}}}}))
    driver = children.start("gamepad_driver", endpoint, namespace, str(config), stdout=True)
    children.read_lines(driver, 1)
    wait_for("the runner in teleop", lambda: value(store, RUNNER_KEY, "mode") == 2, timeout=DEADLINE)
    wait_for("the stick drives the motor", lambda: motor.get("duty_cycle") == 0.5, timeout=DEADLINE)
    assert store.enabled
    driver.kill()  # the laptop is gone: the robot must not drive on
    wait_for("idle", lambda: value(store, RUNNER_KEY, "mode") == 0, timeout=LEASE_MS / 1000 + DEADLINE)
    wait_for("the motor at its safe value", lambda: motor.get("duty_cycle") == 0.0, timeout=DEADLINE)
    assert not store.enabled  # idle: disabled
