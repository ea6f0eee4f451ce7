"""Watching for the bridge's ports: where they are, what device node a path names, when to look again.

The :class:`~runtime.bridge.Bridge` serves the ports asked for (exact paths and
glob patterns, :data:`DEFAULT_GLOB` when none) whenever they exist. It keys
each connection by :data:`Identity`, the device node a path leads to, so that a
link renamed or replaced by another link to the same device does not interrupt
the connection; it learns that a port appeared or vanished from inotify on the
ports' directories where it can (a directory watch), and polls where it cannot.
"""

from __future__ import annotations

import contextlib
import ctypes
import os

__all__ = ["DEFAULT_GLOB", "Identity"]

DEFAULT_GLOB = "/dev/ttyACM*"
"""Where Smart Devices appear on Linux; watched when no ``--port`` is given."""


class _DirectoryWatch:
    """Readable when an entry is created, removed or renamed in one of the watched directories (inotify).

    :meth:`create` returns None where inotify is not available; the bridge then polls.
    """

    _MASK = 0x100 | 0x200 | 0x40 | 0x80 | 0x4 | 0x400 | 0x800
    """IN_CREATE, IN_DELETE, IN_MOVED_FROM, IN_MOVED_TO, IN_ATTRIB, IN_DELETE_SELF, IN_MOVE_SELF."""

    def __init__(self, libc: ctypes.CDLL, fd: int) -> None:
        self._libc = libc
        self.fd = fd
        self._watched: set[str] = set()

    @classmethod
    def create(cls) -> _DirectoryWatch | None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        except (OSError, AttributeError):
            return None
        return cls(libc, fd) if fd >= 0 else None

    def watch(self, directories: set[str]) -> bool:
        """Watch these directories too; True if every one of them is watched (they exist)."""
        complete = True
        for directory in directories - self._watched:
            if self._libc.inotify_add_watch(self.fd, os.fsencode(directory), self._MASK) >= 0:
                self._watched.add(directory)
            else:
                complete = False
        return complete

    def drain(self) -> None:
        """Forget the events read so far (the bridge rescans whatever they were); directories that
        vanished are watched again once they exist."""
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while os.read(self.fd, 65536):
                pass
        self._watched = {directory for directory in self._watched if os.path.isdir(directory)}

    def close(self) -> None:
        os.close(self.fd)


def _watchable_directory(pattern: str) -> str | None:
    """The directory whose entries decide what ``pattern`` (a path or a glob) names; None for wildcards."""
    directory = os.path.dirname(os.path.abspath(pattern))
    return None if any(char in directory for char in "*?[") else directory


Identity = tuple[int, int]
"""What a port path names: the ``(st_dev, st_ino)`` of the device node it leads to."""


def _identity(path: str) -> Identity | None:
    """What device a path names now (``None`` if it does not exist); symlinks are followed."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino
