"""The byte link to a Smart Device: ordered, non-blocking writes of frames from asyncio.

The bridge (host side) and the emulator (device side) both write frames to a
serial port or pseudo-terminal from one event loop, where a blocking write
would freeze every other port.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable

__all__ = ["OUTBOX_LIMIT", "FrameWriter"]

OUTBOX_LIMIT = 64 * 1024
"""Bytes a port's writer queues before it drops new frames (the peer stopped reading)."""


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
