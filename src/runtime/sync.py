"""Synchronization primitives that work across processes.

:class:`Mutex` is a robust pthread mutex stored in caller-provided memory (for
example a shared-memory segment), implemented in the compiled core. When the
process holding it dies, the next :meth:`Mutex.acquire` gets the lock instead of
waiting forever and returns ``True`` so the caller can log the recovery.

>>> mutex = Mutex()
>>> mutex.initialize()
>>> with mutex:
...     pass
>>> mutex.acquire(timeout=0)
False
>>> mutex.release()
"""

from . import _core

__all__ = ["Mutex", "SyncError"]


SyncError = _core.SyncError
"""A synchronization primitive failed: ``SyncError(message, errno, **context)``, with the
``errno`` and ``errno_name`` properties (made by the compiled core, which raises it)."""

Mutex = _core.Mutex
