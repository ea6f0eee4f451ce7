"""Waiting for something to happen, with a deadline: what tests do instead of sleeping.

>>> import time
>>> start = time.monotonic()
>>> wait_for(lambda: time.monotonic() - start > 0.05, timeout=5, what="50 ms to pass")
True
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from ..buffer import DeviceBufferError

__all__ = ["wait_for"]

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T | None],
    timeout: float = 10.0,
    what: str | None = None,
    *,
    every: float = 0.01,
    check: Callable[[], None] | None = None,
) -> T:
    """Call ``predicate`` every ``every`` seconds until it returns something true, and return that.

    Errors of the library (:class:`~runtime.buffer.DeviceBufferError`: an
    invalid buffer, one not made yet) count as false. ``check``, if given, is
    called between tries and may raise to give up early (a process that died).

    Raises:
        TimeoutError: Still false after ``timeout`` seconds; the message names ``what``.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = predicate()
        except DeviceBufferError:
            result = None
        if result:
            return result
        if check is not None:
            check()
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what or repr(predicate)}")
        time.sleep(every)
