"""The student code of ``runtime demo``: a robot program in miniature, run as its own process.

``python -m runtime.tools._student [--catalog F] [--stats F] [--rate HZ] TYPE:UID ...``

It is what a student's program does on the robot: it knows its devices by UID,
opens their buffers (waiting until the bridge has made them), then in a loop
reads the sensors (line follower, limit switch, battery), decides, and writes
motor duty cycles and servo positions, which the bridge sends to the devices.
A device that goes away (an invalid buffer) is skipped until it comes back.

It lives in the package, not in ``examples/``, so that ``runtime demo`` runs it
from an installed wheel too; ``examples/student_code.py`` is the short version
to copy. It runs until SIGTERM/SIGINT, or until its parent (the demo) is gone,
then writes its counters (cycles, reads, writes, errors) as JSON to ``--stats``.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any

from ..buffer import BufferStore, DeviceBuffer, DeviceBufferError
from ..exception import RuntimeBaseException
from ..jsonio import write_json_atomically
from ._common import CommandError, add_catalog_option, bounded, load_catalog

__all__ = ["StudentCode", "main"]


class StudentCode:
    """Sensors in, motor commands out, through the buffers: one :meth:`step` per control cycle.

    It knows devices only by UID, as robot code does, and retries opening the
    buffers the bridge has not made yet. Devices that come and go (invalid
    buffers) are skipped until they are valid again.
    """

    def __init__(self, store: BufferStore, uids: Sequence[int]) -> None:
        self.store = store
        self.pending = list(uids)
        self.buffers: dict[str, DeviceBuffer] = {}
        self.counts = {"cycles": 0, "reads": 0, "writes": 0, "errors": 0, "devices_opened": 0}
        self.start = time.monotonic()

    def open_pending(self) -> None:
        """Try to open the buffers the bridge has not created yet."""
        for uid in list(self.pending):
            try:
                buffer = self.store.get_or_open(uid, create=False)
            except DeviceBufferError:
                continue  # not served yet: retry next cycle
            self.pending.remove(uid)
            self.buffers[buffer.type_name] = buffer
            self.counts["devices_opened"] += 1

    def read(self, type_name: str, *names: str) -> list[Any] | None:
        """Values of one device's parameters, read together; None if it has none or it went away."""
        buffer = self.buffers.get(type_name)
        if buffer is None:
            return None
        try:
            with buffer.transaction():
                values = [buffer.get(name) for name in names]
        except RuntimeBaseException:
            self.counts["errors"] += 1  # the device went away: its buffer is invalid
            return None
        self.counts["reads"] += len(values)
        return values

    def write(self, buffer: DeviceBuffer, name: str, value: float) -> None:
        """Ask the device to take ``value`` (clamped to the parameter's bounds), if it can."""
        param = buffer.params.get(name)
        if param is None or not param.writeable:
            return
        value = min(max(value, param.lower), param.upper)
        try:
            buffer.write(name, value)
        except RuntimeBaseException:
            self.counts["errors"] += 1
            return
        self.counts["writes"] += 1

    def step(self) -> None:
        """One control cycle: read the sensors, decide, write the actuators."""
        self.open_pending()
        elapsed = time.monotonic() - self.start
        cruise = 0.6 * math.sin(2 * math.pi * elapsed / 6)
        line = self.read("line-follower", "left", "center", "right")
        steer = float(line[2] - line[0]) if line else 0.5 * math.cos(2 * math.pi * elapsed / 4)
        switches = self.read("limit-switch", "switch0")
        battery = self.read("battery", "is_unsafe")
        hold = bool(switches and switches[0]) or bool(battery and battery[0])
        speed = 0.0 if hold else cruise
        for buffer in self.buffers.values():
            if "duty_cycle" in buffer.params:
                self.write(buffer, "duty_cycle", speed)
            for channel, sign in (("a", 1.0), ("b", -1.0)):
                if f"duty_cycle_{channel}" in buffer.params:
                    self.write(buffer, f"duty_cycle_{channel}", speed + sign * steer / 2)
            if "servo0" in buffer.params:
                self.write(buffer, "servo0", steer)
                self.write(buffer, "servo1", cruise)
        self.counts["cycles"] += 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the student code until SIGTERM/SIGINT or until the parent is gone; 0 on a clean stop."""
    parser = argparse.ArgumentParser(
        prog="python -m runtime.tools._student",
        description="The demo's student code: read sensors, write motors, through the buffers.",
    )
    parser.add_argument(
        "devices", nargs="+", metavar="TYPE:UID", help="the devices, as the demo emulates them"
    )
    add_catalog_option(parser)
    parser.add_argument("--stats", metavar="FILE", help="write the counters here as JSON at exit")
    parser.add_argument(
        "--rate",
        type=bounded(float, 0.1, 1000.0),
        default=20.0,
        metavar="HZ",
        help="control cycles per second",
    )
    args = parser.parse_args(argv)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    parent = os.getppid()
    try:
        catalog = load_catalog(args.catalog)
    except CommandError as exc:
        print(f"student code: {exc.message}", file=sys.stderr)
        return 1
    uids = [int(spec.rpartition(":")[2], 0) for spec in args.devices]
    period = 1.0 / args.rate
    with BufferStore(catalog) as store:
        code = StudentCode(store, uids)
        while not stop.is_set() and os.getppid() == parent:
            code.step()
            stop.wait(period)
        if args.stats:
            try:
                write_json_atomically(args.stats, code.counts)
            except OSError as exc:
                print(f"student code: cannot write {args.stats}: {exc.strerror or exc}", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
