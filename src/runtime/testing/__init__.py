"""Test your robot code without hardware: emulated Smart Devices, a fake serial device, a bridge fixture.

Three levels, from the whole robot down to single frames:

* :func:`emulated_robot` (a context manager) starts emulated devices and the
  bridge, as processes, in a buffer namespace of their own, and yields an
  :class:`EmulatedRobot` to reach their buffers; everything is stopped and
  unlinked at the end. With pytest, add
  ``pytest_plugins = ["runtime.testing.pytest_plugin"]`` to your
  ``conftest.py`` and take the ``runtime_robot`` fixture
  (see :mod:`runtime.testing.pytest_plugin`).
* :class:`FakeDevice`: a Smart Device your test plays in-process on a
  pseudo-terminal, for code that talks to serial ports (like pyserial's
  ``loop://``, but a real port the code under test opens by path).
* :func:`run_student_code`: ``runtime run`` on your student file against an
  emulated robot, its output lines at hand (:class:`StudentRun`).
* :func:`wait_for`: wait for a condition with a deadline (never a fixed sleep);
  :meth:`EmulatedRobot.bridge_stopped` stops a shared robot's bridge for a
  block and brings it back however the block ends.
* :class:`DeviceModel`: the device side of the protocol without I/O (what
  ``runtime emulate`` runs), and :class:`FaultInjector` for a flaky link.
* :class:`Emulator`: emulated devices on pseudo-terminals in this process (one
  :class:`PtyDevice` each), the engine of ``runtime emulate``
  (:mod:`runtime.testing.emulator`).
* :class:`Demo`: an emulated robot for people to look at, the engine of
  ``runtime demo`` (:mod:`runtime.testing.demo`): the emulator, the bridge and
  student code as processes, stopped in order and cleaned up however it ends.

>>> from runtime.testing import emulated_robot
>>> with emulated_robot("limit-switch") as robot:
...     switch = robot.buffer("limit-switch")
...     isinstance(switch.get("switch0"), bool)
True

The kit uses the library and runs the command-line tools as processes
(``python -m runtime.tools.emulate``, ``python -m runtime.tools.bridge``); the
library never imports it.
"""

from .demo import Demo, DemoDevice, DemoError, SignalGuard, robot_names
from .device import HEARTBEAT_INTERVAL, MOTOR_TICKS_PER_SECOND, DeviceModel, Simulator, random_uid
from .emulator import Emulator, EmulatorError, PtyDevice
from .faults import FAULT_KINDS, FaultCounts, FaultInjector, FaultRates
from .pty import FakeDevice, FakeSerialPort, dev_data, sub_res
from .robot import EmulatedDevice, EmulatedRobot, EmulationError, emulated_robot
from .student import StudentRun, run_student_code
from .waiting import wait_for

__all__ = [
    "FAULT_KINDS",
    "HEARTBEAT_INTERVAL",
    "MOTOR_TICKS_PER_SECOND",
    "Demo",
    "DemoDevice",
    "DemoError",
    "DeviceModel",
    "EmulatedDevice",
    "EmulatedRobot",
    "EmulationError",
    "Emulator",
    "EmulatorError",
    "FakeDevice",
    "FakeSerialPort",
    "FaultCounts",
    "FaultInjector",
    "FaultRates",
    "PtyDevice",
    "SignalGuard",
    "Simulator",
    "StudentRun",
    "dev_data",
    "emulated_robot",
    "random_uid",
    "robot_names",
    "run_student_code",
    "sub_res",
    "wait_for",
]
