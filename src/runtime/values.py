"""Buffer values as plain data: one codec for every surface that shows or takes them.

:func:`read_state` reads a buffer's values consistently, as JSON-ready data
(float32 values as the shortest decimal that reads back the same).
"""

from __future__ import annotations

import json
import math
import struct
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from .buffer import Buffer, DeviceBuffer, DeviceBufferError
from .jsonio import jsonable

__all__ = ["BufferState", "encode_json", "read_state"]


class BufferState(NamedTuple):
    """What a buffer held at one moment."""

    valid: bool
    values: dict[str, Any] | None
    """Every readable value as plain JSON data (:func:`runtime.jsonio.jsonable`); None when invalid."""
    time: float
    """:func:`time.time` of the values: the device's last update (Smart Devices), else when read."""

    def message(self) -> dict[str, Any]:
        """The message of :func:`runtime.schema.buffer_schema`."""
        if self.values is None:
            return {"valid": self.valid}
        return {"valid": self.valid, "values": self.values}


def read_state(buffer: Buffer, previous: float = 0.0) -> BufferState:
    """Read a buffer's values and their time consistently, without taking its lock.

    A Smart Device's values are read between two reads of ``last_update``; if
    an update came in between, they are read again. Their time is
    ``last_update``, unless that is not after ``previous`` (the time of the
    state read before): then nothing new came from the device (the buffer
    turned valid again, say) and the time is now. An invalid buffer (or one
    that turns invalid while being read) gives ``values`` None.
    """
    now = time.time()
    convert = _converter(type(buffer))
    try:
        if not isinstance(buffer, DeviceBuffer):
            return BufferState(True, convert(buffer.snapshot()), now)
        for _ in range(3):
            before = buffer.last_update
            values = buffer.snapshot()
            after = buffer.last_update
            if before == after:
                break
        return BufferState(True, convert(values), after if after > previous else max(now, previous))
    except DeviceBufferError:
        if buffer.closed or buffer.valid:
            raise
        return BufferState(False, None, max(now, previous))


_CONVERTERS: dict[type[Buffer], Callable[[dict[str, Any]], dict[str, Any]]] = {}
_SHORT: dict[float, float] = {}
_SHORT_CACHE_SIZE = 4096


def _converter(buffer_type: type[Buffer]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A fast :func:`~runtime.jsonio.jsonable` for a snapshot of this type (it changes it in place)."""
    convert = _CONVERTERS.get(buffer_type)
    if convert is not None:
        return convert
    floats, others = [], []
    for param in buffer_type.params.values():
        if not param.readable:
            continue
        code = getattr(param.platform_type, "_type_", None)
        if code in ("f", "d"):
            floats.append(param.name)
        elif code not in ("?", *"bBhHiIlLqQ"):
            others.append(param.name)  # arrays, characters: the general conversion

    def convert_values(values: dict[str, Any]) -> dict[str, Any]:
        for name in floats:
            values[name] = _short_float(values[name])
        for name in others:
            values[name] = jsonable(values[name])
        return values

    _CONVERTERS[buffer_type] = convert_values
    return convert_values


def _short_float(value: float) -> float | None:
    """:func:`runtime.jsonio.short_float` of a float32 value (None for NaN and infinities), memoized."""
    short = _SHORT.get(value)
    if short is not None:
        return short
    if not math.isfinite(value):
        return None
    # The shortest decimal that reads back as the same float32: six significant digits (trailing zeros
    # dropped) give it whenever six or fewer suffice; more are tried only when needed.
    short = value
    for digits in (6, 7, 8, 9):
        candidate = float(f"{value:.{digits}g}")
        if _FLOAT32.unpack(_FLOAT32.pack(candidate))[0] == value:
            short = candidate
            break
    if len(_SHORT) >= _SHORT_CACHE_SIZE:
        _SHORT.clear()
    _SHORT[value] = short
    return short


_FLOAT32 = struct.Struct("<f")
_ENCODE = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def encode_json(data: Any) -> bytes:
    """Compact JSON (no spaces; NaN and infinities refused), UTF-8: what goes into a message."""
    return _ENCODE(data).encode()
