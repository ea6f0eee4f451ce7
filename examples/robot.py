"""A robot program in PiE's student API: ``runtime run`` runs it, ``runtime mode`` picks the mode.

The runner gives it ``Robot``, ``Gamepad`` and ``Keyboard``. Its devices are
named in a robot file (YAML, a name to a UID as ``runtime buffers list`` shows
it), say ``robot.yaml``::

    motor: 0xa0a0000000000c0ffee
    switch: 0xa0000000000decade

Try it without a robot (each command in its own terminal, or with &):

    runtime emulate yogi-bear limit-switch --link /tmp/devices
    runtime bridge --glob '/tmp/devices/*'
    runtime buffers list                        # the UIDs, for robot.yaml
    runtime run examples/robot.py --devices robot.yaml
    runtime mode auto      # forward for 2 seconds, beside an idle main loop
    runtime mode teleop    # the gamepad drives (runtime drive); button A: a burst
    runtime mode idle      # everything stops, the motor at its safe value
"""
# ruff: noqa: F821 (Robot, Gamepad: the runner's globals are no module bindings)

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # what the runner gives a student file, for type checkers
    from runtime import student

    Robot: student.Robot
    Gamepad: student.Gamepad

MOTOR = "motor"
SWITCH = "switch"


def forward(seconds: float) -> None:
    """Drive forward, wait (only this function waits), stop."""
    Robot.set_value(MOTOR, "duty_cycle", 0.5)
    Robot.sleep(seconds)
    Robot.set_value(MOTOR, "duty_cycle", 0.0)
    print("autonomous: done")


def burst() -> None:
    Robot.set_value(MOTOR, "duty_cycle", 0.8)
    Robot.sleep(1.0)
    Robot.set_value(MOTOR, "duty_cycle", 0.0)


def autonomous_setup() -> None:
    print("autonomous: forward for 2 s")
    Robot.run(forward, 2.0)


def autonomous_main() -> None:
    pass  # forward() runs beside this loop


def teleop_setup() -> None:
    print("teleop: the left stick drives; button A: a burst; the limit switch stops the motor")


def teleop_main() -> None:
    if Robot.get_value(SWITCH, "switch0"):
        Robot.set_value(MOTOR, "duty_cycle", 0.0)
    elif Gamepad.get_value("button_a") and not Robot.is_running(burst):
        Robot.run(burst)
    elif not Robot.is_running(burst):
        Robot.set_value(MOTOR, "duty_cycle", -Gamepad.get_value("joystick_left_y"))
