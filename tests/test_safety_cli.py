"""``runtime disable``, ``runtime enable`` and the commands of ``runtime buffers write``, on the command line.

A write of an actuator (a parameter with a safe value) is a command of the
writing process: ``buffers write`` ends it as it exits, unless ``--hold`` keeps
it until Ctrl-C. ``runtime disable`` stops every actuator and refuses their
writes until ``runtime enable``; the listings say which state the robot is in.

The first tests run the program in-process (fast); the others run it as real
processes (``python -m runtime``), against buffers this test serves, or against
an emulated robot (a real bridge and emulated devices). Every wait is on a
condition, with a timeout; every namespace is removed at the end.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from e2e import namespace_fixture, run, runtime_process

from runtime import catalog
from runtime.buffer import BufferStore, DeviceBuffer, DeviceBufferError
from runtime.testing import emulated_robot, wait_for

T = TypeVar("T")

TIMEOUT = 20.0
"""Seconds any awaited condition has to come true."""


# ---- helpers --------------------------------------------------------------------------------------


def start_runtime(*argv: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start ``python -m runtime ARGV...`` (a long-running one: ``buffers write --hold``)."""
    return subprocess.Popen(
        [sys.executable, "-m", "runtime", *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env if env is not None else dict(os.environ),
    )


def stop(process: subprocess.Popen[str]) -> None:
    """Make sure a process started by a test is gone (killed if it still runs)."""
    if process.poll() is None:
        process.kill()
    process.communicate(timeout=TIMEOUT)


def holding(motor: DeviceBuffer, process: subprocess.Popen[str]) -> bool:
    """Whether ``process`` commands the motor's duty_cycle (its ``--hold`` is under way)."""
    if process.poll() is not None:
        raise AssertionError(f"the holding process exited ({process.returncode}): {process.communicate()}")
    return motor.commanders().get("duty_cycle") == process.pid


def one_error_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


# ---- a motor this test serves, as the bridge would ---------------------------------------------------


namespace = namespace_fixture("rt-test-safety", scope="function", autouse=False)


@pytest.fixture
def motor(namespace: str) -> Iterator[DeviceBuffer]:
    """A yogi-bear buffer served by this test (valid, as when its device is connected)."""
    uid = 10 << 72 | 0x0A << 64 | random.getrandbits(48)
    with BufferStore(catalog.load()) as store:
        buffer = store.get_or_open(uid)
        buffer.serve()
        yield buffer


def key(buffer: DeviceBuffer) -> str:
    return f"yogi-bear:{buffer.uid:#x}"


# ---- in-process ---------------------------------------------------------------------------------


def test_disable_and_enable_say_what_they_did(
    capsys: pytest.CaptureFixture[str], namespace: str, motor: DeviceBuffer
) -> None:
    status, out, err = run(capsys, "disable")
    assert (status, err) == (0, "")
    assert out == (
        f"robot disabled (namespace {namespace}): 1 device stopped; "
        "writes of actuators are refused until 'runtime enable'\n"
    )
    assert BufferStore(catalog.load()).enabled is False
    assert motor.disabled
    with pytest.raises(DeviceBufferError, match="^the robot is disabled"):
        motor.write("duty_cycle", 0.5)
    status, out, _ = run(capsys, "disable")
    assert status == 0 and f"(namespace {namespace}; it already was)" in out

    status, out, err = run(capsys, "enable")
    assert (status, err) == (0, "")
    assert out == (
        f"robot enabled (namespace {namespace}; 1 device released): nothing moves until a new command\n"
    )
    assert BufferStore(catalog.load()).enabled is True
    assert not motor.disabled
    motor.write("duty_cycle", 0.5)
    status, out, _ = run(capsys, "enable")
    assert status == 0 and f"(namespace {namespace}; it already was)" in out


def test_disable_of_an_empty_namespace(capsys: pytest.CaptureFixture[str], namespace: str) -> None:
    status, out, _ = run(capsys, "disable")
    assert status == 0
    assert out.startswith(f"robot disabled (namespace {namespace}): no devices to stop now;")
    assert BufferStore({}).enabled is False
    # The robot's state alone does not make the namespace one "with buffers".
    status, out, _ = run(capsys, "buffers", "--namespace", namespace + "-other", "list")
    assert status == 0 and namespace not in out.replace(namespace + "-other", "")


def test_the_listings_say_whether_the_robot_is_enabled(
    capsys: pytest.CaptureFixture[str], namespace: str, motor: DeviceBuffer
) -> None:
    status, out, _ = run(capsys, "buffers", "list")
    assert status == 0
    assert out.splitlines()[-1] == "robot: enabled"
    status, out, err = run(capsys, "buffers", "list", "--json")
    assert (status, err) == (0, "")  # enabled: nothing said on stderr
    assert [report["uid"] for report in json.loads(out)] == [motor.uid]

    assert run(capsys, "disable")[0] == 0
    status, out, _ = run(capsys, "buffers", "list")
    assert out.splitlines()[-1] == "robot: DISABLED (runtime enable to enable)"
    status, out, err = run(capsys, "buffers", "list", "--json")
    [report] = json.loads(out)  # stdout stays the list of buffers
    assert report["disabled"] is True
    assert err == "robot: DISABLED (runtime enable to enable)\n"
    status, out, _ = run(capsys, "buffers", "show", key(motor))
    assert status == 0 and "robot: DISABLED (runtime enable to enable)" in out
    status, out, err = run(capsys, "buffers", "watch", "--count", "2", "--interval", "0.01", "--json")
    assert status == 0 and len(out.splitlines()) == 2
    assert err.count("robot: DISABLED") == 1  # said once, not at every refresh
    status, out, _ = run(capsys, "buffers", "watch", "--count", "1")
    assert "robot: DISABLED (runtime enable to enable)" in out


def test_show_and_list_name_the_commander(
    capsys: pytest.CaptureFixture[str], namespace: str, motor: DeviceBuffer
) -> None:
    status, out, _ = run(capsys, "buffers", "show", key(motor))
    assert "commands: none (every actuator at its safe value)" in out
    motor.write("duty_cycle", 0.25)  # this process commands it now
    status, out, _ = run(capsys, "buffers", "show", key(motor))
    assert status == 0
    assert f"commands: duty_cycle by pid {os.getpid()}" in out
    # Run in this process, the command closed its handle, which ended this process's commands.
    assert motor.commanders() == {}
    motor.write("duty_cycle", 0.25)
    [report] = json.loads(run(capsys, "buffers", "list", "--json")[1])
    assert report["commanders"] == {"duty_cycle": os.getpid()}
    assert report["disabled"] is False
    gamepad = BufferStore(catalog.load()).get_or_open(("gamepad", 1))
    try:
        reports = {r["type"]: r for r in json.loads(run(capsys, "buffers", "list", "--json")[1])}
        assert "commanders" not in reports["gamepad"]  # a plain buffer: no actuators, no new keys
    finally:
        gamepad.close()


def test_write_says_that_a_command_ends_as_it_exits(
    capsys: pytest.CaptureFixture[str], motor: DeviceBuffer
) -> None:
    status, out, err = run(capsys, "buffers", "write", key(motor), "duty_cycle=0.5", "pid_pos_kp=2")
    assert status == 0
    assert out == f"wrote {key(motor)}: duty_cycle=0.5 pid_pos_kp=2.0 (the bridge sends it to the device)\n"
    assert err == (
        "runtime buffers: note: duty_cycle is a command: it ends (back to 0.0) when this command exits; "
        "use --hold to keep it until Ctrl-C\n"
    )
    # Run in this process, the command ended as the command's store closed: the safe value is pending.
    assert motor.commanders() == {}
    assert motor.pending_writes() == {"duty_cycle": 0.0, "pid_pos_kp": 2.0}
    data = json.loads(run(capsys, "buffers", "write", key(motor), "duty_cycle=0.5", "--json")[1])
    assert (data["commands"], data["held"]) == (["duty_cycle"], False)
    status, out, err = run(capsys, "buffers", "write", key(motor), "pid_pos_kp=1")  # no command: no note
    assert (status, err) == (0, "")


def test_the_json_of_a_write_names_its_commands(
    capsys: pytest.CaptureFixture[str], motor: DeviceBuffer
) -> None:
    status, out, _ = run(capsys, "buffers", "write", key(motor), "pid_pos_kp=1", "--json")
    data: dict[str, Any] = json.loads(out)
    assert status == 0
    assert (data["commands"], data["held"], data["written"]) == ([], False, {"pid_pos_kp": 1.0})


def test_write_hold_without_a_command_returns_at_once(
    capsys: pytest.CaptureFixture[str], motor: DeviceBuffer
) -> None:
    status, out, err = run(capsys, "buffers", "write", key(motor), "pid_pos_kp=1", "--hold")
    assert status == 0
    assert out.startswith(f"wrote {key(motor)}: pid_pos_kp=1.0")
    assert "nothing to hold" in err


def test_a_disabled_robot_refuses_the_write_whole(
    capsys: pytest.CaptureFixture[str], namespace: str, motor: DeviceBuffer
) -> None:
    assert run(capsys, "disable")[0] == 0
    before = motor.pending_writes()
    status, out, err = run(capsys, "buffers", "write", key(motor), "pid_pos_kp=3", "duty_cycle=0.5")
    assert (status, out) == (1, "")
    line = one_error_line(err)
    assert line.startswith(
        f"runtime buffers: error: cannot write duty_cycle to {key(motor)}: the robot is disabled"
    )
    assert "'runtime enable'" in line and "nothing written" in line
    assert motor.pending_writes() == before  # not even pid_pos_kp: all or none
    status, _, _ = run(capsys, "buffers", "write", key(motor), "pid_pos_kp=3")  # configuration: allowed
    assert status == 0
    assert run(capsys, "enable")[0] == 0
    assert run(capsys, "buffers", "write", key(motor), "duty_cycle=0.5")[0] == 0


# ---- real processes: the state is the namespace's, for everyone -------------------------------------


@pytest.mark.slow
def test_disable_and_enable_from_another_process(namespace: str, motor: DeviceBuffer) -> None:
    done = runtime_process("disable")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"robot disabled (namespace {namespace}): 1 device stopped;")
    assert BufferStore(catalog.load()).enabled is False and motor.disabled
    done = runtime_process("buffers", "write", key(motor), "duty_cycle=0.5")
    assert done.returncode == 1
    assert "the robot is disabled" in one_error_line(done.stderr) and "'runtime enable'" in done.stderr
    done = runtime_process("enable")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"robot enabled (namespace {namespace}; 1 device released)")
    assert BufferStore(catalog.load()).enabled is True and not motor.disabled
    done = runtime_process("buffers", "write", key(motor), "duty_cycle=0.5")
    assert done.returncode == 0, done.stderr
    assert "duty_cycle is a command: it ends (back to 0.0) when this command exits" in done.stderr
    # The writer exited: its command ended, and the safe value waits for the bridge.
    assert motor.commanders() == {} and motor.pending_writes()["duty_cycle"] == 0.0


@pytest.mark.slow
def test_the_namespace_option_chooses_the_robot(namespace: str) -> None:
    other = f"{namespace}-other"
    done = runtime_process("disable", "--namespace", other)
    try:
        assert done.returncode == 0, done.stderr
        assert f"(namespace {other})" in done.stdout
        assert BufferStore({}).enabled is True  # not this namespace's robot
        with BufferStore.use_namespace(other):
            assert BufferStore({}).enabled is False
        done = runtime_process("enable", "--namespace", other)
        assert done.returncode == 0 and f"(namespace {other}; 0 devices released)" in done.stdout
    finally:
        with BufferStore.use_namespace(other):
            BufferStore({}).unlink_all()


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=lambda signum: signum.name)
def test_hold_keeps_the_command_until_a_signal(motor: DeviceBuffer, signum: signal.Signals) -> None:
    process = start_runtime("buffers", "write", key(motor), "duty_cycle=0.5", "--hold")
    try:
        wait_for(lambda: holding(motor, process), TIMEOUT, "the command to be held")
        assert motor.get("duty_cycle") == 0.0  # only the device's data changes it: no bridge here
        process.send_signal(signum)
        out, err = process.communicate(timeout=TIMEOUT)
    finally:
        stop(process)
    assert process.returncode == 0, err
    assert out.splitlines() == [
        f"wrote {key(motor)}: duty_cycle=0.5 (the bridge sends it to the device)",
        f"holding duty_cycle on {key(motor)} until Ctrl-C; then it ends (back to 0.0)",
        f"ended duty_cycle on {key(motor)} (back to 0.0)",
    ]
    assert motor.commanders() == {} and motor.pending_writes()["duty_cycle"] == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("how", ["invalid", "disabled", "taken over"])
def test_hold_stops_when_the_command_cannot_stand(motor: DeviceBuffer, how: str) -> None:
    where = key(motor)
    process = start_runtime("buffers", "write", where, "duty_cycle=0.5", "--hold")
    try:
        wait_for(lambda: holding(motor, process), TIMEOUT, "the command to be held")
        if how == "invalid":
            motor.stop_serving()  # the device is unplugged, or the bridge stopped
        elif how == "disabled":
            assert runtime_process("disable").returncode == 0
        else:
            motor.write("duty_cycle", -0.5)  # this process commands it now
        _, err = process.communicate(timeout=TIMEOUT)
    finally:
        stop(process)
    assert process.returncode == 1
    line = one_error_line(err)
    expected = {
        "invalid": f"{where} is not connected any more (its buffer turned invalid)",
        "disabled": "the robot was disabled",
        "taken over": f"duty_cycle on {where}: no longer this command's (taken over by pid {os.getpid()})",
    }[how]
    assert expected in line
    if how == "disabled":
        assert "'runtime enable'" in line


# ---- an emulated robot: what the device itself reports ----------------------------------------------


def reported(motor: DeviceBuffer, value: float) -> Callable[[], bool]:
    """Whether the device reports (in its data, through the bridge) this duty_cycle."""
    return lambda: abs(motor.get("duty_cycle") - value) < 1e-6


@pytest.mark.slow
def test_disable_stops_the_motor_and_enable_lets_a_new_command_move_it() -> None:
    with emulated_robot("yogi-bear", still=True) as robot:
        motor = robot.buffer("yogi-bear")
        where = f"yogi-bear:{motor.uid:#x}"
        motor.write("duty_cycle", 0.4)  # this test's own command, as student code would write
        robot.wait_for(reported(motor, 0.4), what="the motor at 0.4")

        done = runtime_process("disable", env=robot.env)
        assert done.returncode == 0, done.stderr
        assert f"robot disabled (namespace {robot.namespace}): 1 device stopped" in done.stdout
        robot.wait_for(reported(motor, 0.0), what="the motor stopped by 'runtime disable'")
        done = runtime_process("buffers", "write", where, "duty_cycle=0.5", env=robot.env)
        assert done.returncode == 1 and "'runtime enable'" in one_error_line(done.stderr)
        with pytest.raises(DeviceBufferError, match="^the robot is disabled"):
            motor.write("duty_cycle", 0.4)

        done = runtime_process("enable", env=robot.env)
        assert done.returncode == 0, done.stderr
        assert "nothing moves until a new command" in done.stdout
        assert robot.store.enabled
        process = start_runtime("buffers", "write", where, "duty_cycle=0.5", "--hold", env=robot.env)
        try:
            robot.wait_for(reported(motor, 0.5), what="the motor at 0.5, held")
            assert process.poll() is None
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=TIMEOUT)
        finally:
            stop(process)
        assert process.returncode == 0, err
        assert f"ended duty_cycle on {where} (back to 0.0)" in out
        robot.wait_for(reported(motor, 0.0), what="the motor stopped after Ctrl-C")


@pytest.mark.slow
def test_a_write_without_hold_ends_its_command_as_it_exits() -> None:
    with emulated_robot("yogi-bear", still=True) as robot:
        motor = robot.buffer("yogi-bear")
        motor.write("duty_cycle", 0.3)  # not the safe value: the end of the next command shows
        robot.wait_for(reported(motor, 0.3), what="the motor at 0.3")
        done = runtime_process("buffers", "write", f"{motor.uid:#x}", "duty_cycle=0.5", env=robot.env)
        assert done.returncode == 0, done.stderr
        assert "duty_cycle is a command: it ends (back to 0.0) when this command exits" in done.stderr
        robot.wait_for(reported(motor, 0.0), what="the motor back to 0.0 after the writer exited")
        assert motor.commanders() == {}
