"""``runtime run`` and ``runtime mode`` as real processes, against an emulated robot (bridge + devices).

The student files are written by each test; the test plays the driver station
by serving the gamepad buffer itself, and switches modes with ``runtime mode``.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime import Buffer, DeviceBuffer
from runtime.student import FIELD_KEY, GAMEPAD_KEY, RUNNER_KEY, log_lines_since
from runtime.testing import EmulatedRobot, emulated_robot, run_student_code

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

WAIT = 30.0
"""Seconds any awaited line or value has (a busy machine is slow, never this slow)."""


@pytest.fixture(scope="module")
def robot() -> Iterator[EmulatedRobot]:
    with emulated_robot("yogi-bear") as robot:
        yield robot


@pytest.fixture
def motor(robot: EmulatedRobot) -> Iterator[DeviceBuffer]:
    """The yogi-bear's buffer; afterwards the robot enabled, the field idle and the motor at rest again."""
    motor = robot.buffer("yogi-bear")
    try:
        yield motor
    finally:
        robot.store.enable()
        robot.store.get_or_open(FIELD_KEY).set("mode", 0)
        motor.end_commands()


def student_file(tmp_path: Path, robot: EmulatedRobot, source: str) -> Path:
    path = tmp_path / "robot.py"
    path.write_text(f"MOTOR = {hex(robot.uid('yogi-bear'))!r}\n" + textwrap.dedent(source))
    return path


def mode(robot: EmulatedRobot, name: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "runtime", "mode", name],
        env=robot.env,
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def runner_buffer_of(robot: EmulatedRobot) -> Buffer:
    """This runner's buffer: a handle of its own (the robot's store keeps an earlier runner's, unlinked)."""
    (name,) = [name for kind, _, name in robot.store.find_segments() if kind == RUNNER_KEY[0]]
    return robot.store.catalog[RUNNER_KEY[0]].attach(name, create=False)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_student_code_drives_a_motor_from_the_gamepad_and_idle_stops_it(
    robot: EmulatedRobot, motor: DeviceBuffer, tmp_path: Path
) -> None:
    path = student_file(
        tmp_path,
        robot,
        """
        def teleop_main():
            Robot.set_value(MOTOR, "duty_cycle", Gamepad.get_value("joystick_left_y"))
        """,
    )
    gamepad = robot.store.get_or_open(GAMEPAD_KEY)
    gamepad.serve()  # the driver station's link, played by the test
    try:
        with run_student_code(robot, path) as runner:
            runner.wait_line("running robot.py")
            robot.wait_for(lambda: not robot.store.enabled, what="idle disables the robot")
            assert "the runner" in mode(robot, "teleop")
            runner.student_pid()
            gamepad.set("joystick_left_y", 0.5)
            robot.wait_for(lambda: motor.get("duty_cycle") == 0.5, what="the motor follows the joystick")
            assert robot.store.enabled
            gamepad.set("joystick_left_y", -0.25)
            robot.wait_for(lambda: motor.get("duty_cycle") == -0.25, what="the motor follows the joystick")
            mode(robot, "idle")
            runner.wait_line("idle: the robot is disabled")
            robot.wait_for(lambda: motor.get("duty_cycle") == 0.0, what="idle: the motor at its safe value")
            assert not robot.store.enabled
        assert runner.process.returncode == 0
    finally:
        gamepad.stop_serving()
    assert robot.store.enabled, "the runner enables the robot it disabled when it stops"
    assert ("runner", 0) not in dict.fromkeys((t, u) for t, u, _ in robot.store.find_segments())


def test_modes_run_their_functions_and_robot_run_beside_the_main_loop(
    robot: EmulatedRobot, motor: DeviceBuffer, tmp_path: Path
) -> None:
    path = student_file(
        tmp_path,
        robot,
        """
        calls = 0

        def worker(seconds):
            print("worker starts")
            Robot.sleep(seconds)
            print("worker ends")

        def autonomous_setup():
            print("autonomous setup")
            Robot.run(worker, 0.2)

        def autonomous_main():
            global calls
            calls += 1
            if calls == 1:
                print("main, worker running:", Robot.is_running(worker))
            if calls > 1 and not Robot.is_running(worker) and calls < 1000:
                print("main, worker done after", calls > 2)
                calls = 1000

        def teleop_setup():
            print("teleop setup")
        """,
    )
    with run_student_code(robot, path, "--mode", "auto") as runner:
        runner.wait_line(r"auto: autonomous setup")
        runner.wait_line(r"auto: worker starts")
        runner.wait_line(r"auto: main, worker running: True")
        runner.wait_line(r"auto: worker ends")
        runner.wait_line(r"auto: main, worker done after True")
        mode(robot, "teleop")
        runner.wait_line(r"^\d\d:\d\d:\d\d\.\d{3} teleop: teleop setup$")
        assert not any("autonomous" in line for line in runner.lines if "teleop:" in line)
        log = runner_buffer_of(robot)
        lines, lost = log_lines_since(0, log.get("lines"), log.get("log"))
        assert lost == 0 and any(line.endswith("auto: worker ends") for line in lines), lines
    assert runner.process.returncode == 0


def test_an_exception_stops_the_mode_with_the_student_s_frames_only(
    robot: EmulatedRobot, motor: DeviceBuffer, tmp_path: Path
) -> None:
    path = student_file(
        tmp_path,
        robot,
        """
        import json

        def teleop_setup():
            Robot.set_value(MOTOR, "duty_cycle", 0.5)

        def teleop_main():
            if Robot.get_value(MOTOR, "duty_cycle") == 0.5:
                json.loads("{")
        """,
    )
    with run_student_code(robot, path, "--mode", "teleop") as runner:
        runner.wait_line(r"teleop: json.decoder.JSONDecodeError")
        runner.wait_line(r"teleop stopped by the error above")
        traceback = [line for line in runner.lines if " teleop: " in line]
        assert any(f'File "{path}", line 10, in teleop_main' in line for line in traceback), traceback
        assert not any("json/" in line or "runtime/" in line for line in traceback), traceback
        robot.wait_for(lambda: motor.get("duty_cycle") == 0.0, what="the motor at its safe value")
        field = robot.store.get_or_open(FIELD_KEY)  # the runner says it stopped, then sets the mode idle
        robot.wait_for(lambda: field.get("mode") == 0, what="the field's mode idle: the next mode awaited")
        assert runner.process.poll() is None
        mode(robot, "teleop")  # and runs it
        runner.wait_line(r"teleop stopped by the error above", count=2)
    assert runner.process.returncode == 0


def test_a_hung_main_is_stopped_and_its_motor_made_safe(
    robot: EmulatedRobot, motor: DeviceBuffer, tmp_path: Path
) -> None:
    path = student_file(
        tmp_path,
        robot,
        """
        def teleop_setup():
            Robot.set_value(MOTOR, "duty_cycle", 0.5)

        def teleop_main():
            while Robot.get_value(MOTOR, "duty_cycle") == 0.5:
                pass
        """,
    )
    with run_student_code(robot, path, "--mode", "teleop", "--timeout", "0.5") as runner:
        pid = runner.student_pid()
        runner.wait_line(r"teleop stopped: a call \(teleop_main or _setup.*did not return within 0.5 s")
        robot.wait_for(lambda: motor.get("duty_cycle") == 0.0, what="the motor at its safe value")
        robot.wait_for(lambda: gone(pid), what="the hung student process killed")
        assert runner.process.poll() is None
    assert runner.process.returncode == 0


def test_a_runner_killed_outright_takes_its_student_code_along(
    robot: EmulatedRobot, motor: DeviceBuffer, tmp_path: Path
) -> None:
    path = student_file(
        tmp_path,
        robot,
        """
        def teleop_main():
            Robot.set_value(MOTOR, "duty_cycle", 0.75)
        """,
    )
    try:
        with run_student_code(robot, path, "--mode", "teleop") as runner:
            pid = runner.student_pid()
            robot.wait_for(lambda: motor.get("duty_cycle") == 0.75, what="driven")
            runner.process.kill()
            robot.wait_for(lambda: gone(pid), what="the student process dies with its runner")
            robot.wait_for(lambda: motor.get("duty_cycle") == 0.0, what="the motor at its safe value")
    finally:
        for type_name, uid, name in robot.store.find_segments():
            if (type_name, uid) == RUNNER_KEY:  # nobody was left to unlink it
                DeviceBuffer.unlink(name)


def test_one_runner_per_namespace(robot: EmulatedRobot, motor: DeviceBuffer, tmp_path: Path) -> None:
    path = student_file(tmp_path, robot, "")
    with run_student_code(robot, path) as first:
        first.wait_line("running robot.py")
        second = subprocess.run(
            [sys.executable, "-m", "runtime", "run", str(path)],
            env=robot.env,
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
        assert second.returncode == 1
        assert re.search(
            r"runtime run: error: another runner \(pid \d+\) runs in namespace \S+: stop it first\n$",
            second.stderr,
        )
    assert first.process.returncode == 0


def test_reload_takes_a_changed_file_at_the_next_idle(
    robot: EmulatedRobot, motor: DeviceBuffer, tmp_path: Path
) -> None:
    path = student_file(tmp_path, robot, "def teleop_setup():\n    print('version 1')\n")
    with run_student_code(robot, path, "--reload") as runner:
        runner.wait_line("running robot.py")
        mode(robot, "teleop")
        runner.wait_line("teleop: version 1")
        path.write_text("def teleop_setup(:\n")
        os.utime(path, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
        mode(robot, "idle")
        runner.wait_line(r"not reloaded: the student file is not valid Python: line 1")
        path.write_text("def teleop_setup():\n    print('version 2')\n")
        os.utime(path, ns=(time.time_ns() + 2 * 10**9, time.time_ns() + 2 * 10**9))
        runner.wait_line("reloaded robot.py")
        mode(robot, "teleop")
        runner.wait_line("teleop: version 2")
    assert runner.process.returncode == 0


def test_an_overrun_is_counted_and_warned_about_once_in_a_while(
    robot: EmulatedRobot, motor: DeviceBuffer, tmp_path: Path
) -> None:
    path = student_file(
        tmp_path,
        robot,
        """
        import time

        slow = True

        def calm_down():
            global slow
            Robot.sleep(0.3)
            slow = False  # the mode's functions see what a Robot.run function sets

        def teleop_setup():
            Robot.run(calm_down)

        def teleop_main():
            if slow:
                time.sleep(0.05)  # longer than the period
            elif not Robot.is_running(calm_down):
                print("calm")
        """,
    )
    with run_student_code(robot, path, "--mode", "teleop", "--period", "0.02") as runner:
        warning = runner.wait_line(r"teleop_main overran its period of 0.02 s \((\d+) times in this mode\)")
        assert int(warning[1]) >= 1
        runner.wait_line("teleop: calm")
        runner_buffer = runner_buffer_of(robot)
        robot.wait_for(lambda: runner_buffer.get("overruns") >= 2, what="the overruns counted")
        robot.wait_for(lambda: runner_buffer.get("cycles") > 10, what="the main calls counted")
        warnings = [line for line in runner.lines if "overran" in line]
        stamps = [seconds_of_day(line) for line in warnings]
        assert all(b - a >= 4.99 for a, b in itertools.pairwise(stamps)), warnings  # at most one per 5 s


def seconds_of_day(line: str) -> float:
    """The time a runner's line is stamped with (``HH:MM:SS.mmm``), in seconds."""
    hours, minutes, seconds = line.split()[0].split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def test_runtime_disable_while_a_mode_runs_stops_it(
    robot: EmulatedRobot, motor: DeviceBuffer, tmp_path: Path
) -> None:
    source = 'def teleop_main():\n    Robot.set_value(MOTOR, "duty_cycle", 0.5)\n'
    path = student_file(tmp_path, robot, source)
    with run_student_code(robot, path, "--mode", "teleop") as runner:
        pid = runner.student_pid()
        robot.wait_for(lambda: motor.get("duty_cycle") == 0.5, what="driven")
        done = subprocess.run(
            [sys.executable, "-m", "runtime", "disable"], env=robot.env, capture_output=True, timeout=WAIT
        )
        assert done.returncode == 0, done.stderr
        runner.wait_line("the robot was disabled: teleop stopped, idle")
        robot.wait_for(lambda: gone(pid), what="the student process stopped")
        robot.wait_for(lambda: motor.get("duty_cycle") == 0.0, what="the motor at its safe value")
        field = robot.store.get_or_open(FIELD_KEY)  # the runner says it stopped, then sets the mode idle
        robot.wait_for(lambda: field.get("mode") == 0, what="the field's mode idle")
    assert runner.process.returncode == 0
    assert not robot.store.enabled, "a disable that was not the runner's stays"


def test_prints_of_two_threads_never_mix_within_a_line(
    robot: EmulatedRobot, motor: DeviceBuffer, tmp_path: Path
) -> None:
    source = """
        def chatter(name):
            for count in range(300):
                print(name, count, "end")
            print(name, "done")

        def left():
            chatter("left")

        def right():
            chatter("right")

        def autonomous_setup():
            Robot.run(left)
            Robot.run(right)
        """
    with run_student_code(robot, student_file(tmp_path, robot, source), "--mode", "auto") as runner:
        runner.wait_line("auto: left done")
        runner.wait_line("auto: right done")
        said = [line.split(" auto: ", 1)[1] for line in runner.lines if " auto: " in line]
        assert len(said) == 602
        assert all(re.fullmatch(r"(left|right) (\d+ end|done)", line) for line in said), said


def test_a_field_that_turns_invalid_means_idle(tmp_path: Path) -> None:
    """A field producer that stops: its mode cannot be trusted; the runner idles and says so once."""
    with emulated_robot("yogi-bear") as robot:  # its own: the field is left invalid
        motor = robot.buffer("yogi-bear")
        source = 'def teleop_main():\n    Robot.set_value(MOTOR, "duty_cycle", 0.5)\n'
        field = robot.store.get_or_open(FIELD_KEY)
        with run_student_code(robot, student_file(tmp_path, robot, source), "--mode", "teleop") as runner:
            pid = runner.student_pid()
            robot.wait_for(lambda: motor.get("duty_cycle") == 0.5, what="driven")
            field.serve()  # a field controller comes...
            field.stop_serving()  # ...and goes: the field is invalid
            runner.wait_line(r"cannot read the field's mode \(.*\): idle until it can be read")
            robot.wait_for(lambda: gone(pid), what="the student process stopped")
            robot.wait_for(lambda: motor.get("duty_cycle") == 0.0, what="the motor at its safe value")
            field.serve()  # back, in teleop
            field.set("mode", 2)
            runner.student_pid(count=2)
            assert len([line for line in runner.lines if "cannot read the field" in line]) == 1
            field.stop_serving()
        assert runner.process.returncode == 0


def test_the_counters_are_written_once_a_second_while_they_count_and_last_as_the_mode_ends(
    robot: EmulatedRobot, motor: DeviceBuffer, tmp_path: Path
) -> None:
    # Each write is a change every watcher of the runner's buffer publishes: not at every look (0.1 s).
    path = student_file(tmp_path, robot, "def teleop_main():\n    pass\n")
    stats = tmp_path / "runner.json"
    arguments = ["--mode", "teleop", "--period", "0.01", "--stats", str(stats)]
    with run_student_code(robot, path, *arguments) as runner:
        robot.wait_for(
            lambda: any(kind == RUNNER_KEY[0] for kind, _, _ in robot.store.find_segments()),
            timeout=WAIT,
            what="the runner's buffer",
        )
        runner_buffer = runner_buffer_of(robot)
        robot.wait_for(lambda: runner_buffer.get("cycles") > 0, timeout=WAIT, what="the first counts")
        seen = set()
        start = time.monotonic()

        def watched_two_seconds() -> bool:
            seen.add(runner_buffer.get("cycles"))
            return time.monotonic() - start >= 2.0

        robot.wait_for(watched_two_seconds, timeout=WAIT, what="two seconds of counts")
        assert 1 <= len(seen) <= 4, sorted(seen)  # about 2 (one write a second); 20 at every look
        mode(robot, "idle")
        runner.wait_line("idle")
        last = runner_buffer.get("cycles")
    # The last write holds the mode's last count: what the runner's own counters say at its end.
    total = robot.wait_for(lambda: stats.exists() and json.loads(stats.read_text())["cycles"], timeout=WAIT)
    assert last == total, (last, total)
