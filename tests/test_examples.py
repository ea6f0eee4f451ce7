"""The programs in examples/ run, as users run them, against emulated devices and the bridge.

Each example runs as its own process (``python examples/NAME.py``) with the
environment of an emulated robot (:func:`runtime.testing.emulated_robot`: its
namespace), and must exit 0 with the expected output. ``test_my_robot.py`` is
copied to a directory of its own and run by pytest there, as a user who copied
it would.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime import catalog
from runtime.buffer import BufferStore
from runtime.student import FIELD_KEY, GAMEPAD_KEY
from runtime.testing import EmulatedRobot, emulated_robot, run_student_code

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]  # slow: the examples, against an emulated robot

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SWITCH_LINE = re.compile(r"^switch0=(pressed|free)  switch1=(pressed|free)  switch2=(pressed|free)$")


@pytest.fixture
def robot() -> Iterator[EmulatedRobot]:
    """A limit switch and a motor, served by a bridge, for one test."""
    with emulated_robot("limit-switch", "yogi-bear") as running:
        yield running


def run_example(robot: EmulatedRobot, name: str, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *arguments],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        env=robot.env,
        cwd=robot.directory,
    )


def test_every_example_is_tested() -> None:
    text = Path(__file__).read_text()
    for example in sorted(EXAMPLES.glob("*.py")):
        assert f'"{example.name}"' in text, f"{example.name} is not run by {Path(__file__).name}"


# ---- read_a_sensor.py ---------------------------------------------------------------------------


def test_read_a_sensor_finds_the_switch(robot: EmulatedRobot) -> None:
    done = run_example(robot, "read_a_sensor.py", "--count", "3", "--every", "0.05")
    assert done.returncode == 0, done.stderr
    first, *readings = done.stdout.splitlines()
    assert first == f"limit switch {robot.uid('limit-switch'):#x}"
    assert len(readings) == 3 and all(SWITCH_LINE.match(line) for line in readings), done.stdout


def test_read_a_sensor_by_uid(robot: EmulatedRobot) -> None:
    uid = robot.uid("limit-switch")
    done = run_example(robot, "read_a_sensor.py", f"{uid:#x}", "--count", "1", "--every", "0")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == f"limit switch {uid:#x}"
    assert SWITCH_LINE.match(done.stdout.splitlines()[1]), done.stdout


def test_read_a_sensor_says_when_there_is_no_bridge(robot: EmulatedRobot) -> None:
    robot.stop_bridge()
    uid = robot.uid("limit-switch")
    done = run_example(robot, "read_a_sensor.py", f"{uid:#x}", "--count", "2", "--every", "0")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1:] == ["not connected", "not connected"]
    with BufferStore.use_namespace(f"rt-test-examples-empty-{uuid.uuid4().hex[:8]}"):
        nothing = subprocess.run(
            [sys.executable, str(EXAMPLES / "read_a_sensor.py")], capture_output=True, text=True, timeout=30
        )
    assert nothing.returncode == 1 and "no limit switch found" in nothing.stderr


@pytest.fixture
def served_switch() -> Iterator[tuple[str, int]]:
    """A limit switch's buffer served by this process in a namespace of its own (the demo's, say)."""
    namespace = f"rt-test-examples-demo-{uuid.uuid4().hex[:8]}"
    uid = 0xC0FFEE  # device_id 0: a limit switch
    with BufferStore.use_namespace(namespace), BufferStore(catalog.load()) as store:
        try:
            store.get_or_open(uid).serve()
            yield namespace, uid
        finally:
            store.unlink_all()


@pytest.mark.parametrize("name", ["read_a_sensor.py", "student_code.py", "drive_a_motor.py"])
def test_an_example_in_an_empty_namespace_names_the_one_with_live_buffers(
    served_switch: tuple[str, int], name: str
) -> None:
    namespace, _ = served_switch
    empty = f"rt-test-examples-empty-{uuid.uuid4().hex[:8]}"
    path = str(EXAMPLES / name)
    done = subprocess.run(
        [sys.executable, path, "--seconds", "0"] if name == "student_code.py" else [sys.executable, path],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        env=dict(os.environ, RUNTIME_BUFFER_NAMESPACE=empty),
    )
    assert done.returncode == 1
    (line,) = [line for line in (done.stdout + done.stderr).splitlines() if "is the bridge running?" in line]
    assert namespace in line
    if "namespaces with live buffers" not in line:  # another suite's robot may run beside this one
        assert (
            f"RUNTIME_BUFFER_NAMESPACE={namespace} python {path}" in line
            and f"--namespace {namespace}" in line
        )


def test_read_a_sensor_takes_a_namespace(served_switch: tuple[str, int]) -> None:
    namespace, uid = served_switch
    done = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "read_a_sensor.py"),
            "--namespace",
            namespace,
            "--count",
            "1",
            "--every",
            "0",
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        env=dict(os.environ, RUNTIME_BUFFER_NAMESPACE="rt-test-examples-none"),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"limit switch {uid:#x}", "switch0=free  switch1=free  switch2=free"]


# ---- drive_a_motor.py ---------------------------------------------------------------------------


def test_drive_a_motor_turns_it_and_stops_it(robot: EmulatedRobot) -> None:
    done = run_example(robot, "drive_a_motor.py", "--speed", "0.5", "--seconds", "0.5")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"motor {robot.uid('yogi-bear'):#x} runs at duty cycle 0.5"
    moved = re.fullmatch(r"the encoder moved \+(\d+) ticks in 0\.5 s", lines[1])
    assert moved is not None, done.stdout
    assert 200 < int(moved[1]) < 1500  # 2000 ticks/s at full duty, emulated
    motor = robot.buffer("yogi-bear")
    robot.wait_for(lambda: motor.get("duty_cycle") == 0.0, what="the motor to stop")


def test_drive_a_motor_clamps_a_speed_out_of_bounds_and_still_stops(robot: EmulatedRobot) -> None:
    done = run_example(robot, "drive_a_motor.py", "--speed", "1.5", "--seconds", "0.2")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == f"motor {robot.uid('yogi-bear'):#x} runs at duty cycle 1"
    assert "clamped to 1" in done.stderr
    motor = robot.buffer("yogi-bear")
    robot.wait_for(lambda: motor.get("duty_cycle") == 0.0, what="the motor to stop")


# ---- student_code.py ----------------------------------------------------------------------------

STATES = ("driving", "stopped: a switch is pressed")


def test_student_code_drives_then_stops_its_motors(robot: EmulatedRobot) -> None:
    done = run_example(robot, "student_code.py", "--seconds", "1")
    assert done.returncode == 0, done.stderr
    first, *states, last = done.stdout.splitlines()
    assert first == "found 1 limit switch(es) and 1 motor(s)"
    assert states and all(state in STATES for state in states), done.stdout
    cycles = re.fullmatch(r"stopped after (\d+) cycles", last)
    assert cycles is not None and int(cycles[1]) >= 5, done.stdout
    motor = robot.buffer("yogi-bear")
    robot.wait_for(lambda: motor.get("duty_cycle") == 0.0, what="the motor to stop")  # left stopped


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_student_code_killed_leaves_no_motor_running(robot: EmulatedRobot, signum: int) -> None:
    student = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "student_code.py")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=dict(robot.env, PYTHONUNBUFFERED="1"),
    )
    motor = robot.buffer("yogi-bear")
    try:
        robot.wait_for(lambda: motor.get("duty_cycle") == 0.5, what="the motor driven")
        student.send_signal(signum)  # no finally block of the program runs
        student.wait(timeout=30)
        robot.wait_for(lambda: motor.commanders() == {}, what="the bridge to end the program's command")
        robot.wait_for(lambda: motor.get("duty_cycle") == 0.0, what="the motor to stop")
    finally:
        student.kill()
        student.wait()
        assert student.stdout is not None
        student.stdout.close()


class Lines:
    """A child's stdout, line by line, never waiting past a deadline."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        self.fd = process.stdout.fileno()
        self.buffered = b""
        self.seen: list[str] = []

    def next(self, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffered:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no line within {timeout} s; so far: {self.seen}"
            ready, _, _ = select.select([self.fd], [], [], remaining)
            if ready:
                chunk = os.read(self.fd, 4096)
                assert chunk, f"the program exited; it printed {self.seen + [self.buffered.decode()]}"
                self.buffered += chunk
        line, self.buffered = self.buffered.split(b"\n", 1)
        self.seen.append(line.decode())
        return self.seen[-1]


def test_student_code_waits_while_a_device_is_gone(robot: EmulatedRobot) -> None:
    """The bridge stops (every buffer invalid) and comes back: the program waits, then goes on."""
    student = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "student_code.py")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(robot.env, PYTHONUNBUFFERED="1"),
    )
    try:
        lines = Lines(student)
        assert lines.next() == "found 1 limit switch(es) and 1 motor(s)"
        assert lines.next() in STATES
        with robot.bridge_stopped():
            while (line := lines.next()) in STATES:  # the switch may toggle before the buffers turn invalid
                pass
            assert line == "waiting: a device is gone"
        assert lines.next() in STATES
        student.send_signal(signal.SIGINT)  # Ctrl-C
        out, err = student.communicate(timeout=15)
    finally:
        if student.poll() is None:
            student.kill()
            student.communicate()
    assert student.returncode == 0, err
    assert re.fullmatch(r"stopped after \d+ cycles", (lines.buffered + out).decode().splitlines()[-1])


# ---- test_my_robot.py ---------------------------------------------------------------------------


def test_my_robot_passes_under_pytest(tmp_path: Path) -> None:
    """Copied into an empty directory (no conftest, no project settings), its tests pass."""
    shutil.copy(EXAMPLES / "test_my_robot.py", tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_my_robot.py"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=80,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"^3 passed in ", done.stdout, re.M), done.stdout
    assert "warning" not in done.stdout.lower(), done.stdout


# ---- robot.py (the student API, run by runtime run) -----------------------------------------------


def test_robot_drives_in_auto_then_from_the_gamepad(tmp_path: Path) -> None:
    with emulated_robot("limit-switch", "yogi-bear", still=True) as robot:  # the switch stays free
        drive_robot_example(robot, tmp_path)


def drive_robot_example(robot: EmulatedRobot, tmp_path: Path) -> None:
    names = tmp_path / "robot.yaml"
    names.write_text(f"motor: {robot.uid('yogi-bear'):#x}\nswitch: {robot.uid('limit-switch'):#x}\n")
    motor = robot.buffer("yogi-bear")
    gamepad = robot.store.get_or_open(GAMEPAD_KEY)
    gamepad.serve()  # the driver station, played by the test
    try:
        with run_student_code(robot, EXAMPLES / "robot.py", "--devices", str(names), "--mode", "auto") as run:
            run.wait_line("auto: autonomous: forward for 2 s")
            robot.wait_for(lambda: motor.get("duty_cycle") == 0.5, what="forward")
            run.wait_line("auto: autonomous: done")
            robot.wait_for(lambda: motor.get("duty_cycle") == 0.0, what="stopped after 2 s")
            gamepad.set("joystick_left_y", -0.4)
            robot.store.get_or_open(FIELD_KEY).set("mode", 2)  # runtime mode teleop
            run.wait_line("teleop: teleop: the left stick drives")
            robot.wait_for(lambda: motor.get("duty_cycle") == pytest.approx(0.4), what="the stick drives")
            robot.store.get_or_open(FIELD_KEY).set("mode", 0)
            run.wait_line("idle: the robot is disabled")
            robot.wait_for(lambda: motor.get("duty_cycle") == 0.0, what="idle stops the motor")
            assert "Traceback" not in "\n".join(run.lines)
        assert run.process.returncode == 0
    finally:
        gamepad.stop_serving()
