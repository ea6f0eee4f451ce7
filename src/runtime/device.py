"""The student-facing handle of a device: read its values, ask it to do things.

A :class:`~runtime.buffer.Buffer` has everything the bridge needs too: ``set``
(which overwrites what the device reported), ``update`` and ``emit_*`` (the
protocol), and ``get_write`` (which *takes* the pending writes, so that the
motor command never reaches the motor). A :class:`Device` is the part student
code should use: :meth:`~Device.get` and :meth:`~Device.snapshot` to read,
:meth:`~Device.write` to command, :meth:`~Device.pending_writes` to look at the
commands not yet sent without consuming them.

>>> from runtime import catalog
>>> from runtime.store import BufferStore
>>> with BufferStore(catalog.load(), shared=False) as store:
...     store.get_or_open(0x0A << 72 | 1).serve()   # here we play the bridge
...     motor = store.device(0x0A << 72 | 1)
...     motor.write("duty_cycle", 0.5)
...     motor.pending_writes(), motor.pending_writes()  # looking does not consume
...     motor.get("duty_cycle")
({'duty_cycle': 0.5}, {'duty_cycle': 0.5})
0.0
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .buffer import Buffer, DeviceBuffer, Parameter

__all__ = ["Device"]


class Device:
    """A device's buffer as student code sees it (made by :meth:`runtime.store.BufferStore.device`).

    Every call raises :class:`~runtime.buffer.DeviceBufferError` while the
    device is not connected (its buffer is invalid): check :attr:`valid` first,
    or catch it.
    """

    def __init__(self, buffer: Buffer, uid: int | None = None) -> None:
        self._buffer = buffer
        self._uid = uid
        access = buffer._access
        self.__dict__.update(get=access.get, write=access.write)  # one C call each: no Python frame

    def get(self, param: str, /) -> Any:
        """The parameter's current value, as the device last reported it."""
        return self._buffer.get(param)

    def write(self, param: str, value: Any, /) -> None:
        """Ask the device to take this value (sent by the bridge; a newer write replaces a pending one).

        Numbers outside the parameter's bounds are clamped with a
        ``RuntimeWarning``; NaN or infinity for a bounded parameter is refused.
        """
        self._buffer.write(param, value)

    def snapshot(self) -> dict[str, Any]:
        """Every readable value at one instant (read under one lock)."""
        return self._buffer.snapshot()

    def pending_writes(self) -> dict[str, Any]:
        """The values written and not yet sent to the device; looking does not consume them."""
        return self._buffer.pending_writes()

    def wait_update(self, timeout: float | None = None) -> bool:
        """Sleep until the device reports new values; False if ``timeout`` seconds passed first.

        Raises :class:`~runtime.buffer.DeviceBufferError` at once if the device
        disconnects (or is not connected) while waiting.
        """
        return self._buffer.wait_update(timeout)

    async def wait_update_async(self, timeout: float | None = None) -> bool:
        """The asyncio form of :meth:`wait_update`."""
        return await self._buffer.wait_update_async(timeout)

    @property
    def valid(self) -> bool:
        """Whether the device is connected and its values live."""
        return self._buffer.valid

    @property
    def name(self) -> str:
        """The buffer's segment name."""
        return self._buffer.name

    @property
    def type_name(self) -> str:
        """The device type (as in the catalog)."""
        return type(self._buffer).type_name

    @property
    def uid(self) -> int | None:
        """The device's UID (for a Smart Device, its 88-bit UID), as given when opened."""
        return self._uid

    @property
    def params(self) -> Mapping[str, Parameter]:
        """The device's parameters by name (``readable``, ``writeable``: what get and write take)."""
        return self._buffer.params

    @property
    def last_update(self) -> float | None:
        """:func:`time.time` of the device's last report (Smart Devices; None for other buffers)."""
        return self._buffer.last_update if isinstance(self._buffer, DeviceBuffer) else None

    def close(self) -> None:
        """Stop using the device (its buffer stays for everyone else)."""
        self._buffer.close()

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._buffer.closed else "valid" if self._buffer.valid else "invalid"
        return f"<Device {self.type_name} {self.name!r} {state}>"
