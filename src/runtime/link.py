"""The byte link to a Smart Device: its frames in and out, never blocking.

:class:`FramePump` is the host side's frame path (the bridge's): one reader
thread in the compiled core serves every port, without the GIL, and applies
the frames that make up nearly all the traffic (DEV_DATA, heartbeats) to the
buffers itself, and a writer thread sends what the buffers' writers ask
(DEV_WRITE, DEV_READ) and confirms it; Python gets only the rare rest. :class:`FrameWriter` is for
code that reads and writes a port from an asyncio loop itself (the
emulator's device side): ordered, non-blocking writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
from collections.abc import Callable, Iterable
from typing import NamedTuple, Self

from . import _core
from .buffer import DeviceBuffer
from .messaging import Message

__all__ = [
    "KNOWN_COMMANDERS",
    "OUTBOX_LIMIT",
    "PORT_EVENT_LIMIT",
    "FramePump",
    "FrameWriter",
    "PumpCounters",
    "PumpEvent",
]

OUTBOX_LIMIT: int = _core.PUMP_OUTBOX_LIMIT
"""Bytes a port's writer queues before it drops new frames (the peer stopped reading)."""

KNOWN_COMMANDERS: int = _core.PUMP_KNOWN_COMMANDERS
"""The most commanders :meth:`FramePump.commanders_checked` takes for one port."""
PORT_EVENT_LIMIT: int = _core.PUMP_PORT_EVENT_LIMIT
"""Frames (:attr:`PumpEvent.FRAME`, :attr:`PumpEvent.OVERFLOW`) one port of a :class:`FramePump` may
have waiting for Python by default (64): its share of the queue. Beyond it, that port's new ones are
dropped and counted (:attr:`PumpCounters.events_dropped`); the other ports keep their shares, so a
port flooding bad frames never drops another port's frames, nor makes them wait behind more than
the other ports' shares."""


class FrameWriter:
    """Ordered, non-blocking writes to a file descriptor from an asyncio loop.

    A serial port or pseudo-terminal whose peer stops reading fills up, and a
    blocking write would then freeze every other port served by the loop. This
    writer writes what the descriptor takes, queues the rest and flushes it when
    the descriptor is writable again (``loop.add_writer``). Beyond ``limit``
    queued bytes, new data is dropped whole (counted in :attr:`dropped`), so
    frames are never cut in the middle by the writer itself. Create it inside
    the running loop that will flush it.

    Args:
        fd: A descriptor in non-blocking mode.
        limit: Most bytes queued.
        on_error: Called once with the ``OSError`` of a failed write (the port is gone).
    """

    def __init__(
        self, fd: int, *, limit: int = OUTBOX_LIMIT, on_error: Callable[[OSError], None] | None = None
    ) -> None:
        self.fd = fd
        self.limit = limit
        self.on_error = on_error
        self.dropped = 0
        """Writes refused because the queue was full."""
        self._pending = bytearray()
        self._watching = False
        self._failed = False
        self._loop = asyncio.get_running_loop()

    @property
    def pending(self) -> int:
        """Bytes queued and not yet written."""
        return len(self._pending)

    def send(self, data: bytes) -> bool:
        """Write ``data`` now or queue it; return False if it was dropped."""
        if self._failed:
            return False
        if self._pending:
            if len(self._pending) + len(data) > self.limit:
                self.dropped += 1
                return False
            self._pending += data
            return True
        try:
            written = os.write(self.fd, data)
        except (BlockingIOError, InterruptedError):
            written = 0
        except OSError as exc:
            self._fail(exc)
            return False
        if written < len(data):
            self._pending += data[written:]
            self._watch()
        return True

    def _watch(self) -> None:
        if not self._watching:
            self._loop.add_writer(self.fd, self._flush)
            self._watching = True

    def _flush(self) -> None:
        try:
            written = os.write(self.fd, self._pending)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fail(exc)
            return
        del self._pending[:written]
        if not self._pending:
            self._unwatch()

    def _unwatch(self) -> None:
        if self._watching:
            self._watching = False
            with contextlib.suppress(Exception):  # the loop may be closing
                self._loop.remove_writer(self.fd)

    def _fail(self, exc: OSError) -> None:
        self._failed = True
        self._pending.clear()
        self._unwatch()
        if self.on_error is not None:
            self.on_error(exc)

    def close(self) -> None:
        """Stop writing; queued data is discarded."""
        self._failed = True
        self._pending.clear()
        self._unwatch()


class PumpEvent(enum.IntEnum):
    """What a :class:`FramePump` leaves for Python, with what comes with it."""

    FRAME = _core.PUMP_FRAME
    """A frame the pump does not handle itself (``bytes``, without the delimiter)."""
    OVERFLOW = _core.PUMP_OVERFLOW
    """Bytes too long for any frame were dropped up to the next delimiter (``None``)."""
    LOST = _core.PUMP_LOST
    """The port failed and is no longer read: read error, hang-up or write error (``str``)."""
    STALL = _core.PUMP_STALL
    """Another process holds the buffer's lock: values are held back (``float``: seconds so far;
    0.0 when it starts, then about once a second)."""
    UNSTALL = _core.PUMP_UNSTALL
    """The held-back values were applied (``float``: seconds the stall lasted)."""
    SEEN = _core.PUMP_SEEN
    """With ``forward_all``: a copy of a frame the pump handled (``bytes``)."""
    SENT = _core.PUMP_SENT
    """With ``forward_all``: a copy of a frame the pump sent (``bytes``, without the delimiter)."""
    COMMANDER = _core.PUMP_COMMANDER
    """A port serving writes: its buffer has a commander :meth:`FramePump.commanders_checked` did not
    name; the port's writes wait until it is called (``None``)."""
    DISABLED = _core.PUMP_DISABLED
    """A port serving writes: its buffer's disabled flag changed (``float``: 1.0 disabled, 0.0 enabled)."""
    GAVE_UP = _core.PUMP_GAVE_UP
    """Confirmable writes no DEV_DATA confirmed after the last resend (``bytes``: a DEV_WRITE frame of
    their values, without the delimiter)."""
    PACK_ERROR = _core.PUMP_PACK_ERROR
    """Pending writes could not be packed into DEV_WRITE; they were dropped (``str``)."""


class PumpCounters(NamedTuple):
    """What a :class:`FramePump` counted on one port since it was added."""

    messages_in: int
    """Messages handled by the pump (those given to Python are not counted)."""
    messages_out: int
    """Messages the pump sent itself (heartbeat answers)."""
    lock_stalls: int
    """Times the buffer's lock was found held by another process (values held back, not lost)."""
    events_dropped: int
    """Events of this port Python did not take in time (beyond the port's share of the queue), dropped."""
    writes_resent: int = 0
    """Parameter writes the writer thread sent again because no DEV_DATA confirmed them in time."""


class FramePump:
    """Serve Smart Device ports from one reader thread of the compiled core.

    The thread waits on every port with epoll (the GIL released), cuts what it
    reads into frames and handles the common ones itself: a DEV_DATA is
    checked and applied to the port's attached buffer (as
    :meth:`~runtime.buffer.DeviceBuffer.update` would), an HB_REQ is
    answered, an HB_RES noted. Everything else becomes an event that
    :meth:`take_events` returns; :meth:`fileno` is readable while events
    wait, for ``loop.add_reader``. Each port has its own share of that queue
    (``port_events`` frames, and room of its own for the copies of
    ``forward_all`` and for :attr:`PumpEvent.LOST` and the stall reports): a
    port that sends more frames for Python than Python takes loses only its
    own surplus (counted), never another port's frames. The thread never waits for a buffer's lock:
    values that find it taken are held back, the newest per parameter, and
    applied when it frees (:attr:`PumpEvent.STALL`). Writes go through
    :meth:`send`, so that nothing the thread writes interleaves with them.

    Args:
        forward_all: Also give Python a copy of every frame handled or sent
            (:attr:`PumpEvent.SEEN`, :attr:`PumpEvent.SENT`), to log them.
        port_events: Each port's share: the frames it may have waiting for
            Python (1 to 65536; its copies may be four times as many).

    Raises:
        ValueError: ``port_events`` out of range.
    """

    def __init__(self, *, forward_all: bool = False, port_events: int = PORT_EVENT_LIMIT) -> None:
        self._core = _core.FramePump(forward_all, port_events=port_events)

    def __repr__(self) -> str:
        return f"<FramePump forward_all={self._core.forward_all}>"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def fileno(self) -> int:
        """A descriptor that is readable while events wait for :meth:`take_events`."""
        return self._core.fileno()

    def add(self, fd: int) -> int:
        """Serve a non-blocking port descriptor (it stays the caller's to close); return its port id."""
        return self._core.add(fd)

    def remove(self, port: int) -> None:
        """Stop using a port (then close its descriptor): queued output is dropped, the buffer detached."""
        self._core.remove(port)

    def attach(self, port: int, buffer: DeviceBuffer) -> None:
        """Apply the port's DEV_DATA to ``buffer`` from now on (the caller serves it)."""
        self._core.attach(port, buffer._access)

    def send(self, port: int, data: bytes) -> bool:
        """Write ``data`` now or queue it; False if it was dropped (queue full, or the port is lost)."""
        return self._core.send(port, data)

    def take_events(self) -> list[tuple[int, PumpEvent, bytes | str | float | None]]:
        """What the thread left for Python since the last call, in order: ``(port, event, data)``."""
        return [(port, PumpEvent(kind), data) for port, kind, data in self._core.take_events()]

    def watch_writes(self, port: int, message: Message, ids: int) -> None:
        """Have the DEV_DATA that follow settle the writes of ``ids`` in ``message``, a DEV_WRITE just sent.

        A report of the value written settles a write; so does one of a value
        the device could not report without having seen it. A report of the
        value before the write (or of a write this one replaced) does not.
        """
        self._core.watch_writes(port, message, ids)

    def settled(self, port: int, forget: int = 0) -> int:
        """The IDs whose watched writes were settled since the last call; stop watching ``forget``."""
        return self._core.settled(port, forget)

    def serve_writes(self, port: int, write_interval: float) -> None:
        """Send the attached buffer's pending reads and writes from the pump's writer thread from now on.

        The thread sleeps on the buffer's write block (futex_waitv) and sends
        DEV_READ/DEV_WRITE as :meth:`~runtime.buffer.DeviceBuffer.emit_dev_rw`
        packs them, at most one batch per ``write_interval`` seconds (a newer
        write replaces a pending one), without the GIL. A commander the
        buffer names that :meth:`commanders_checked` did not name holds the
        port's writes and is reported (:attr:`PumpEvent.COMMANDER`); so is a
        change of the disabled flag (:attr:`PumpEvent.DISABLED`).

        Raises:
            ValueError: no buffer attached, already serving writes, or
                ``write_interval`` outside 0 to 3600 seconds.
        """
        self._core.serve_writes(port, write_interval)

    def confirm_writes(self, port: int, ids: int, timeout: float, retries: int, *, subscribed: bool) -> None:
        """Confirm the writes of ``ids`` the writer thread sends: resend one every ``timeout`` seconds
        until a DEV_DATA settles it (as :meth:`watch_writes`), counting only while ``subscribed``, at most
        ``retries`` times; then report it (:attr:`PumpEvent.GAVE_UP`). Callable again at any time."""
        self._core.confirm_writes(port, ids, timeout, retries, subscribed)

    def send_writes_now(self, port: int) -> None:
        """Send the port's pending batch at once, regardless of ``write_interval`` (safe values)."""
        self._core.send_writes_now(port)

    def commanders_checked(self, port: int, commanders: Iterable[tuple[int, int]]) -> None:
        """Python checked these commanders (``(pid, start)``, watched from now on): the port's writes go on.

        The list (at most :data:`KNOWN_COMMANDERS`) replaces the one given
        before: a commander left out is reported again when it commands again.
        """
        self._core.commanders_checked(port, [pid | (start << 32) for pid, start in commanders])

    def counters(self, port: int) -> PumpCounters:
        """What the pump counted on ``port``."""
        return PumpCounters(*self._core.counters(port))

    def last_rx(self, port: int) -> float:
        """``time.monotonic()`` of the last message the pump handled on ``port`` (0.0: none yet)."""
        return self._core.last_rx(port)

    def pending(self, port: int) -> int:
        """Bytes queued for ``port`` that it has not taken yet."""
        return self._core.pending(port)

    def close(self) -> None:
        """Stop the thread and forget every port (their descriptors stay open)."""
        self._core.close()
