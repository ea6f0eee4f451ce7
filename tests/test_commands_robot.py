"""A command never outlives its commander: end to end, through the real bridge and emulated devices.

Each test runs "student code" as a real process that writes a motor's duty
cycle, ends it one way or another, and watches what the emulated device
itself reports (its DEV_DATA), so that the whole path counts: the segment's
commander word, the bridge's pidfd watch, the DEV_WRITE on the pty, the
device.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.buffer import DeviceBuffer, DeviceBufferError
from runtime.testing import EmulatedRobot, emulated_robot

pytestmark = pytest.mark.slow

STUDENT = textwrap.dedent(
    """
    import os, sys, time
    from runtime import BufferStore, load_catalog

    store = BufferStore(load_catalog())
    motor = store.get_or_open(int(sys.argv[1]))
    for assignment in sys.argv[3:]:
        name, value = assignment.split("=")
        motor.write(name, float(value))
    print("written", flush=True)
    how = sys.argv[2]
    command = sys.stdin.readline().strip()  # the test says when (and sometimes how) to end
    if command == "close":
        motor.close()
        print("closed", flush=True)
        sys.stdin.readline()
    elif how == "exit":
        sys.exit(0)  # the store is never closed: only the process's end ends the command
    elif how == "raise":
        raise RuntimeError("student code crashed")
    elif how == "exit-no-cleanup":
        os._exit(3)
    """
)


class Student:
    """Student code in a process of its own, writing ``assignments`` to the motor ``uid``."""

    def __init__(self, robot: EmulatedRobot, uid: int, *assignments: str, how: str = "exit") -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", STUDENT, str(uid), how, *assignments],
            env=robot.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert self.readline() == "written"

    @property
    def pid(self) -> int:
        return self.process.pid

    def readline(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.readline().decode().strip()

    def tell(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()

    def end(self) -> int:
        """Let it go on to its end; its exit status."""
        self.tell("end")
        return self.process.wait(timeout=60)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=60)
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture(scope="module")
def robot() -> Iterator[EmulatedRobot]:
    with emulated_robot("yogi-bear", still=True) as robot:
        yield robot


@pytest.fixture
def motor(robot: EmulatedRobot) -> Iterator[DeviceBuffer]:
    """The robot's motor, reporting duty_cycle 0.0 (safe) at the start and again at the end."""
    motor = robot.buffer("yogi-bear")
    students: list[Student] = []
    motor.students = students  # type: ignore[attr-defined]
    try:
        robot.wait_for(lambda: reported(motor) == 0.0, what="the motor at rest")
        yield motor
    finally:
        for student in students:
            student.stop()
        if not robot.store.enabled:
            robot.store.enable()
        if not robot.bridge_running:
            robot.start_bridge()


def bridge_log(robot: EmulatedRobot) -> str:
    return (robot.directory / "bridge.log").read_text(errors="replace")


def reported(motor: DeviceBuffer) -> float | None:
    """The duty cycle the device last reported (None while the buffer is invalid)."""
    try:
        return float(motor.get("duty_cycle"))
    except DeviceBufferError:
        return None


def student(robot: EmulatedRobot, motor: DeviceBuffer, *assignments: str, how: str = "exit") -> Student:
    started = Student(robot, robot.uid("yogi-bear"), *assignments, how=how)
    motor.students.append(started)  # type: ignore[attr-defined]
    robot.wait_for(lambda: reported(motor) == 0.5 or reported(motor) == -0.5, what="the command taken")
    return started


@pytest.mark.parametrize("how", ["sigkill", "exit", "raise", "exit-no-cleanup", "sigterm"])
def test_the_motor_stops_when_its_commander_ends(robot: EmulatedRobot, motor: DeviceBuffer, how: str) -> None:
    code = student(robot, motor, "duty_cycle=0.5", "deadband=0.25", how=how)
    assert motor.commanders() == {"duty_cycle": code.pid}
    if how == "sigkill":
        code.process.kill()
    elif how == "sigterm":
        code.process.terminate()
    else:
        status = code.end()
        assert status == {"exit": 0, "raise": 1, "exit-no-cleanup": 3}[how]
    robot.wait_for(lambda: reported(motor) == 0.0, what="the motor stopped")
    assert motor.commanders() == {}
    assert motor.get("deadband") == 0.25  # configuration keeps its value
    assert f"commander pid {code.pid} ended; duty_cycle back to 0" in bridge_log(robot)


def test_closing_the_handle_ends_the_command(robot: EmulatedRobot, motor: DeviceBuffer) -> None:
    code = student(robot, motor, "duty_cycle=0.5")
    code.tell("close")
    assert code.readline() == "closed"
    robot.wait_for(lambda: reported(motor) == 0.0, what="the motor stopped")
    assert code.process.poll() is None  # the process lives on; its command did not


def test_a_stopped_commander_still_commands(robot: EmulatedRobot, motor: DeviceBuffer) -> None:
    code = student(robot, motor, "duty_cycle=0.5")
    os.kill(code.pid, signal.SIGSTOP)
    try:
        for _ in range(5):  # several reports of the device, each still the command's
            assert motor.wait_update(timeout=10)
            assert reported(motor) == 0.5
        assert motor.commanders() == {"duty_cycle": code.pid}
    finally:
        os.kill(code.pid, signal.SIGCONT)


def test_two_commanders(robot: EmulatedRobot, motor: DeviceBuffer) -> None:
    older = student(robot, motor, "duty_cycle=0.5")
    newer = Student(robot, robot.uid("yogi-bear"), "duty_cycle=-0.5")
    motor.students.append(newer)  # type: ignore[attr-defined]
    robot.wait_for(lambda: reported(motor) == -0.5, what="the newer command")
    older.process.kill()
    older.process.wait(timeout=60)
    for _ in range(3):  # the older one's end changes nothing: the value in force is the newer one's
        assert motor.wait_update(timeout=10)
        assert reported(motor) == -0.5
    newer.process.kill()
    robot.wait_for(lambda: reported(motor) == 0.0, what="the motor stopped")


def test_disable_stops_everything_and_refuses_commands(robot: EmulatedRobot, motor: DeviceBuffer) -> None:
    code = student(robot, motor, "duty_cycle=0.5")
    robot.store.disable()
    robot.wait_for(lambda: reported(motor) == 0.0, what="the motor stopped by disable")
    with pytest.raises(DeviceBufferError, match="the robot is disabled"):
        motor.write("duty_cycle", 0.5)
    assert "the robot is disabled: DEV_DISABLE and safe values sent" in bridge_log(robot)
    robot.store.enable()
    for _ in range(3):  # enabling moves nothing
        assert motor.wait_update(timeout=10)
        assert reported(motor) == 0.0
    assert code.process.poll() is None
    motor.write("duty_cycle", 0.5)  # a new command moves it again
    robot.wait_for(lambda: reported(motor) == 0.5, what="the new command")
    motor.end_commands()
    robot.wait_for(lambda: reported(motor) == 0.0, what="the motor stopped")


def test_a_restarted_bridge_never_sends_a_dead_commanders_write(
    robot: EmulatedRobot, motor: DeviceBuffer
) -> None:
    os.kill(robot.pids["bridge"], signal.SIGSTOP)  # the bridge cannot send anything...
    try:
        code = Student(robot, robot.uid("yogi-bear"), "duty_cycle=0.5")  # ...so this write stays pending
        motor.students.append(code)  # type: ignore[attr-defined]
        code.process.kill()
        code.process.wait(timeout=60)
        assert motor.pending_writes() == {"duty_cycle": 0.5}
    finally:
        robot.stop_bridge(signal.SIGKILL)  # dies stopped: it never sent the write
    robot.start_bridge()
    robot.wait_for(lambda: motor.pending_writes() == {}, what="the pending write handled")
    for _ in range(3):
        assert motor.wait_update(timeout=10)
        assert reported(motor) == 0.0
    assert f"commander pid {code.pid} ended; duty_cycle back to 0" in bridge_log(robot)


def test_the_device_stops_by_itself_when_the_bridge_dies(robot: EmulatedRobot, motor: DeviceBuffer) -> None:
    student(robot, motor, "duty_cycle=0.5")
    log = Path(robot.directory, "emulator.log")
    with robot.bridge_stopped(signal.SIGKILL):  # no DEV_DISABLE, no safe values from the host
        robot.wait_for(
            lambda: "heard nothing from the host" in log.read_text(),
            timeout=30,
            what="the device stopping itself",
        )
    robot.wait_for(lambda: reported(motor) == 0.0, what="the stopped motor served again")


def test_command_timeout(tmp_path: Path) -> None:
    import runtime.catalog

    packaged = Path(runtime.catalog.__file__).with_name("catalog.yaml").read_text()
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(
        packaged.replace(
            "yogi-bear:\n  device_id: 10\n", "yogi-bear:\n  device_id: 10\n  command_timeout: 0.3\n"
        )
    )
    with emulated_robot("yogi-bear", still=True, catalog=catalog) as robot:
        motor = robot.buffer("yogi-bear")
        motor.write("duty_cycle", 0.5)  # this process lives on: only the timeout ends the command
        robot.wait_for(lambda: reported(motor) == 0.5, what="the command taken")
        robot.wait_for(lambda: reported(motor) == 0.0, what="the command timed out")
        assert "no command for 0.3 s (command_timeout): duty_cycle back to safe values" in bridge_log(robot)
        assert motor.commanders() == {}
