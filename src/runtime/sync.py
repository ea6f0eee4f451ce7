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

import errno as _errno
from typing import Any

from . import _core
from .exception import RuntimeBaseException

__all__ = ["Mutex", "SyncError"]


class SyncError(RuntimeBaseException):
    """A synchronization primitive failed; ``context['errno']`` says why.

    Typical values: ``ETIMEDOUT`` (the wait expired), ``EBUSY`` (a try-lock
    found it held), ``EDEADLK`` (a non-recursive mutex re-acquired by its
    owner), ``EPERM`` (released by a non-owner), ``EINVAL`` (never initialized).
    """

    def __init__(self, message: str, errno: int, /, **context: Any) -> None:
        super().__init__(message, errno=errno, **context)

    @property
    def errno(self) -> int:
        """The ``errno`` value that explains the failure."""
        return int(self.context["errno"])

    @property
    def errno_name(self) -> str:
        """The symbolic name of :attr:`errno`, such as ``'ETIMEDOUT'``."""
        return _errno.errorcode.get(self.errno, str(self.errno))


_core._register("SyncError", SyncError)

Mutex = _core.Mutex
