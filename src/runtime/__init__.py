"""Peripheral data storage and sharing on a robot.

Each peripheral (a Smart Device on USB serial, a gamepad, the field-control
link) gets a *buffer*: a ctypes structure in POSIX shared memory, guarded by a
robust process-shared mutex. See ``runtime.buffer`` for the API.
"""

__version__ = "0.1.0"
