"""Peripheral data storage and sharing on a robot.

Each peripheral (a Smart Device on USB serial, a gamepad, the field-control
link) gets a *buffer*: a ctypes structure in POSIX shared memory, guarded by a
robust process-shared mutex, that every process of the robot software reads
and writes. The main names are available from here:

>>> import runtime
>>> with runtime.BufferStore(runtime.load_catalog(), shared=False) as store:
...     pad = store.device(("gamepad", 0))
...     pad.valid, pad.get("button_a")
(True, False)

Modules: :mod:`runtime.buffer` (buffers and parameters), :mod:`runtime.store`
(the store, namespaces, discovery), :mod:`runtime.device` (the student-facing
handle), :mod:`runtime.catalog`, :mod:`runtime.messaging` (the wire protocol),
:mod:`runtime.sync`, :mod:`runtime.exception`; :mod:`runtime.testing` is the
test kit and :mod:`runtime.tools` the command-line programs. Names are
imported on first use, so that ``import runtime`` stays cheap for the tools.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
"""The package version."""

if TYPE_CHECKING:
    from .buffer import Buffer, DeviceBuffer, DeviceBufferError, DeviceUID, NullDevice, Parameter
    from .catalog import load as load_catalog
    from .device import Device
    from .exception import RuntimeBaseException
    from .messaging import Message, MessageError
    from .store import BufferInfo, BufferStore
    from .sync import SyncError

_EXPORTS = {
    "Buffer": ("buffer", "Buffer"),
    "BufferInfo": ("store", "BufferInfo"),
    "BufferStore": ("store", "BufferStore"),
    "Device": ("device", "Device"),
    "DeviceBuffer": ("buffer", "DeviceBuffer"),
    "DeviceBufferError": ("buffer", "DeviceBufferError"),
    "DeviceUID": ("buffer", "DeviceUID"),
    "Message": ("messaging", "Message"),
    "MessageError": ("messaging", "MessageError"),
    "NullDevice": ("buffer", "NullDevice"),
    "Parameter": ("buffer", "Parameter"),
    "RuntimeBaseException": ("exception", "RuntimeBaseException"),
    "SyncError": ("sync", "SyncError"),
    "load_catalog": ("catalog", "load"),
}

__all__ = [
    "Buffer",
    "BufferInfo",
    "BufferStore",
    "Device",
    "DeviceBuffer",
    "DeviceBufferError",
    "DeviceUID",
    "Message",
    "MessageError",
    "NullDevice",
    "Parameter",
    "RuntimeBaseException",
    "SyncError",
    "load_catalog",
]


def __getattr__(name: str) -> Any:
    try:
        module, attribute = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'runtime' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f".{module}", __name__), attribute)
    globals()[name] = value  # the next access is a plain lookup
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
