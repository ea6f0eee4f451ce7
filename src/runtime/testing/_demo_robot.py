"""The student code of ``runtime demo``, written against the student API (``runtime run`` runs it).

It is a student file, not a module to import: ``Robot``, ``Gamepad`` and
``Keyboard`` are the globals the runner gives it. Its devices are the names of
the robot file the demo writes: each emulated device by its type, with ``_``
for ``-`` (``yogi_bear``, ``line_follower``, ``limit_switch``, ``battery``,
``servo_motor``...). A type the demo does not emulate today reads as absent.

* auto: cruise back and forth, steer by the line follower, and hold the motors
  while the limit switch is pressed or the battery is unsafe;
* teleop: the gamepad's left stick drives, the right stick steers (or the
  keyboard: w/s drive, a/d steer).

``runtime demo --student FILE`` runs yours instead.
"""

import math
import time
from typing import TYPE_CHECKING

# ruff: noqa: F821 (the runner's globals are no module bindings)
if TYPE_CHECKING:  # the runner's globals, declared for type checkers
    from runtime import student

    Robot: student.Robot
    Gamepad: student.Gamepad
    Keyboard: student.Keyboard

START = time.monotonic()


def value(device: str, param: str) -> float | None:
    """A sensor's value, or None when the demo does not emulate that device (or it went away)."""
    try:
        return float(Robot.get_value(device, param))
    except Exception:
        return None


def command(device: str, param: str, number: float) -> None:
    """Drive an actuator the demo emulates; others are skipped."""
    try:
        Robot.set_value(device, param, max(-1.0, min(1.0, number)))
    except Exception:
        pass


def drive(speed: float, steer: float) -> None:
    hold = bool(value("limit_switch", "switch0")) or bool(value("battery", "is_unsafe"))
    speed = 0.0 if hold else speed
    for motor in ("yogi_bear", "polar_bear"):
        command(motor, "duty_cycle", speed)
    command("koala_bear", "duty_cycle_a", speed + steer / 2)
    command("koala_bear", "duty_cycle_b", speed - steer / 2)
    command("servo_motor", "servo0", steer)
    command("servo_motor", "servo1", speed)


def autonomous_setup() -> None:
    print("autonomous: cruising; the limit switch or an unsafe battery holds the motors")


def autonomous_main() -> None:
    elapsed = time.monotonic() - START
    left, right = value("line_follower", "left"), value("line_follower", "right")
    if left is None or right is None:
        steer = 0.5 * math.cos(2 * math.pi * elapsed / 4)
    else:
        steer = right - left
    drive(0.6 * math.sin(2 * math.pi * elapsed / 6), steer)


def teleop_setup() -> None:
    print("teleop: the gamepad's left stick drives, the right one steers (keyboard: w/s, a/d)")


def teleop_main() -> None:
    speed = -Gamepad.get_value("joystick_left_y")
    steer = Gamepad.get_value("joystick_right_x")
    if Keyboard.get_value("w") or Keyboard.get_value("s"):
        speed = 0.5 if Keyboard.get_value("w") else -0.5
    if Keyboard.get_value("a") or Keyboard.get_value("d"):
        steer = -0.5 if Keyboard.get_value("a") else 0.5
    drive(speed, steer)
