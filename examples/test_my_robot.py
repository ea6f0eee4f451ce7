"""Test robot code without a robot: pytest and runtime's test kit.

Copy this file next to your code and run ``pytest test_my_robot.py``. For each
test, the ``runtime_robot`` fixture starts emulated Smart Devices and the
bridge (real processes, in a shared-memory namespace of their own), waits
until every device's buffer is valid, and stops and removes everything after
the test. The ``runtime_devices`` fixture says which devices: override it, as
here, for a file (or in a conftest.py, for a directory). With the plugin named
in your conftest.py, a marker can choose them per test and pass options on::

    @pytest.mark.runtime_devices("yogi-bear", still=True)   # still: sensor values stay put
    def test_something(runtime_robot): ...
"""

from __future__ import annotations

import pytest

from runtime.buffer import Buffer, DeviceBufferError
from runtime.testing import EmulatedRobot

pytest_plugins = ["runtime.testing.pytest_plugin"]  # or in your conftest.py, for every test file


@pytest.fixture
def runtime_devices() -> tuple[str, ...]:
    """The devices emulated for each test of this file: catalog types (or TYPE:UID)."""
    return ("limit-switch", "yogi-bear")


# ---- the robot code under test (in your project: imported from your own module) -----------------

SPEED = 0.5


def control(switch: Buffer, motor: Buffer) -> float:
    """Drive while the limit switch is free, stop while it is pressed; return the duty cycle written."""
    speed = 0.0 if switch.get("switch0") else SPEED
    motor.write("duty_cycle", speed)
    return speed


def read_or_none(buffer: Buffer, name: str) -> object:
    """A sensor's value, or None while its device is gone (never a stale value)."""
    try:
        return buffer.get(name)
    except DeviceBufferError:
        return None


# ---- the tests ----------------------------------------------------------------------------------


def test_the_motor_follows_the_switch(runtime_robot: EmulatedRobot) -> None:
    switch, motor = runtime_robot.buffer("limit-switch"), runtime_robot.buffer("yogi-bear")
    with switch.transaction():  # the emulated switch toggles now and then: not while we look
        pressed = switch.get("switch0")
        speed = control(switch, motor)
    assert speed == (0.0 if pressed else SPEED)
    runtime_robot.wait_for(lambda: motor.get("duty_cycle") == speed)  # the motor reports it took it


def test_the_motor_turns(runtime_robot: EmulatedRobot) -> None:
    motor = runtime_robot.buffer("yogi-bear")
    start = motor.get("enc_pos")
    motor.write("duty_cycle", 1.0)
    runtime_robot.wait_for(lambda: motor.get("enc_pos") > start + 500, timeout=5)


def test_a_lost_device_reads_as_none(runtime_robot: EmulatedRobot) -> None:
    switch = runtime_robot.buffer("limit-switch")
    assert read_or_none(switch, "switch0") in (True, False)
    runtime_robot.stop_bridge()  # as if the cable came loose: the buffer turns invalid
    assert read_or_none(switch, "switch0") is None
    runtime_robot.start_bridge()  # and back, in the same buffer
    assert read_or_none(switch, "switch0") in (True, False)
