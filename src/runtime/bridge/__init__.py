"""The bridge: the host side of the Smart Device protocol, serving serial ports into shared-memory buffers.

What ``runtime bridge`` runs (:mod:`runtime.tools.bridge` is the command):
``Bridge(store, ports, globs).serve(stop)`` watches the ports, identifies each
Smart Device, keeps its buffer in step with it and forwards what other
processes request through the buffer, until ``stop`` is set.

* :mod:`runtime.bridge.manager`: the :class:`Bridge` (the ports it owns, the
  device records, releasing unplugged devices' buffers, ``--stats``), and how
  the parts fit together;
* :mod:`runtime.bridge.connection`: one port's :class:`PortConnection`, and
  the :class:`DeviceRecord` and :class:`Counters` of its device;
* :mod:`runtime.bridge.watch`: where the ports are and when to look again.
"""

from __future__ import annotations

from .connection import (
    BAUD_RATE,
    PING_INTERVAL,
    SILENCE_HEARTBEATS,
    SUB_RETRY_INTERVAL,
    WRITE_CONFIRM_TIMEOUT,
    WRITE_RETRIES,
    Counters,
    DeviceRecord,
    PortConnection,
    logger,
)
from .manager import NO_DEVICE_REPORT_DELAY, UNPLUGGED_CAP, UNPLUGGED_GRACE, Bridge
from .watch import DEFAULT_GLOB

__all__ = [
    "BAUD_RATE",
    "DEFAULT_GLOB",
    "NO_DEVICE_REPORT_DELAY",
    "PING_INTERVAL",
    "SILENCE_HEARTBEATS",
    "SUB_RETRY_INTERVAL",
    "UNPLUGGED_CAP",
    "UNPLUGGED_GRACE",
    "WRITE_CONFIRM_TIMEOUT",
    "WRITE_RETRIES",
    "Bridge",
    "Counters",
    "DeviceRecord",
    "PortConnection",
    "logger",
]
