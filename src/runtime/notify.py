"""Waiting for buffers to change, across processes: blocking, many at once, and asyncio.

Every buffer carries two sequence words in shared memory, one for its update
block and one for its write block; whoever changes a block bumps its word,
and after releasing the lock makes a futex wake call if anyone sleeps on it
(nobody pays a system call while nobody waits). A validity change bumps both;
a producer that dies wakes its buffer's waiters through its robust lock.

* :meth:`Buffer.wait_update` / :meth:`Buffer.wait_write` block one thread on
  one buffer (see :mod:`runtime.buffer`).
* :func:`wait_any` blocks one thread on many buffers.
* :meth:`Buffer.wait_update_async` / :meth:`Buffer.wait_write_async` and
  :func:`wait_any_async` are their asyncio forms. They cost no thread per
  waiter: one *notifier* thread per process sleeps on up to
  :data:`WATCHED_PER_THREAD` (buffer, block) words at once and wakes the
  tasks awaiting them; thousands of tasks awaiting hundreds of buffers cost
  no CPU while nothing changes.

>>> import ctypes
>>> from runtime.buffer import Buffer, Parameter
>>> Gauge = Buffer.make_type('gauge', [Parameter('psi', ctypes.c_float, 0)])
>>> with Gauge.open('doctest-gauge', shared=False) as gauge:
...     gauge.wait_update(timeout=0)          # nothing changed since it was opened
...     gauge.set('psi', 30.0)
...     gauge.wait_update(timeout=0), gauge.wait_update(timeout=0)
False
(True, False)
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Literal

from . import _core

if TYPE_CHECKING:
    from .buffer import Buffer

__all__ = ["WATCHED_PER_THREAD", "Block", "wait_any", "wait_any_async", "wait_async"]

Block = Literal["update", "write"]
"""Which block of a buffer to watch: the update block (values from the device) or the write block."""
WATCHED_PER_THREAD = _core.MAX_WATCHED
"""(buffer, block) pairs one notifier thread (or one :func:`wait_any` call) sleeps on."""
_BLOCKS = {"update": 0, "write": 1}


def _block(block: str) -> int:
    try:
        return _BLOCKS[block]
    except KeyError:
        raise ValueError(f"block must be 'update' or 'write', not {block!r}") from None


_NO_LIMIT = 1e9
"""Seconds beyond which a timeout means no limit (as in the compiled core's waits)."""


def _timeout(timeout: float | None) -> float | None:
    """``timeout`` checked by the blocking waits' rule, for their asyncio forms; None: no limit.

    None or a nonnegative number of seconds; a negative number or NaN raises
    ``ValueError``, anything but a number ``TypeError`` (as the compiled core
    does); more than :data:`_NO_LIMIT` seconds (infinity included) is no limit.
    """
    if timeout is None:
        return None
    if isinstance(timeout, (str, bytes, bytearray)):
        raise TypeError(f"timeout must be None or a number of seconds, not {type(timeout).__name__}")
    value = float(timeout)
    if not value >= 0:
        raise ValueError("timeout must be None or a nonnegative number of seconds")
    return None if value > _NO_LIMIT else value


def wait_any(
    buffers: Iterable[Buffer],
    timeout: float | None = None,
    *,
    block: Block = "update",
    control: _core.WakeWord | None = None,
    control_value: int = 0,
) -> list[Buffer]:
    """Block until one of ``buffers`` changes; return those that did (each change is taken).

    A buffer counts as changed when its ``block`` changed since this handle
    last saw it (by this call or its own wait), or its validity changed (it
    turned invalid, its producer died, it was served again): look at
    ``valid`` before reading. An empty list means the timeout passed. Given
    no buffers (and no ``control``), it returns ``[]`` at once (nothing could
    ever change), as :func:`wait_any_async` does.

    ``control``: a :class:`runtime._core.WakeWord` of this process; the wait
    also ends (perhaps with ``[]``) once its value differs from
    ``control_value``, read before looking at what the wait is for, so that
    another thread's ``control.wake()`` after that look is never missed.

    At most :data:`WATCHED_PER_THREAD` buffers at once (``ValueError`` beyond).
    """
    handles = list(buffers)
    which = _block(block)
    if not handles and control is None:
        _timeout(timeout)  # refused as it would be with buffers
        return []
    accesses = [buffer._access for buffer in handles]
    ready = _core.wait_any([(access, which) for access in accesses], timeout, control, control_value)
    changed = []
    for index in ready:
        accesses[index].see_now(which)
        changed.append(handles[index])
    return changed


async def wait_async(buffer: Buffer, timeout: float | None = None, *, block: Block = "update") -> bool:
    """The asyncio form of :meth:`Buffer.wait_update` / :meth:`Buffer.wait_write` (which call this).

    True when the block changed since this handle last returned from a wait,
    False when ``timeout`` passed; raises :class:`~runtime.buffer.DeviceBufferError`
    at once when the buffer is or turns invalid. Cancelling the task leaves
    nothing behind. ``timeout`` follows the blocking form's rule (a negative
    number or NaN raises ``ValueError``).
    """
    access = buffer._access
    which = _block(block)
    timeout = _timeout(timeout)
    if access.take_change(which):  # raises for an invalid or closed buffer
        await asyncio.sleep(0)  # an await that always lets the loop run: no busy loop around it
        return True
    if timeout is not None and timeout <= 0:
        await asyncio.sleep(0)
        return False
    loop = asyncio.get_running_loop()
    future: asyncio.Future[bool] = loop.create_future()
    notifier = _notifier()
    notifier.add(access, which, loop, future)
    try:
        return await asyncio.wait_for(future, timeout)
    except TimeoutError:
        return False
    finally:
        notifier.discard(access, which, future)


async def wait_any_async(
    buffers: Iterable[Buffer], timeout: float | None = None, *, block: Block = "update"
) -> list[Buffer]:
    """The asyncio form of :func:`wait_any`: the buffers that changed, [] when the timeout passed.

    Same rules as :func:`wait_any`: the same timeouts refused, ``[]`` at once for no buffers.
    """
    handles = list(buffers)
    which = _block(block)
    timeout = _timeout(timeout)
    if not handles:
        await asyncio.sleep(0)  # always let the loop run
        return []
    ready = [buffer for buffer in handles if buffer._access.see_now(which)]
    if ready or (timeout is not None and timeout <= 0):
        await asyncio.sleep(0)  # always let the loop run
        return ready
    loop = asyncio.get_running_loop()
    futures: list[asyncio.Future[bool]] = []
    notifier = _notifier()
    try:
        for buffer in handles:
            future: asyncio.Future[bool] = loop.create_future()
            notifier.add(buffer._access, which, loop, future, strict=False)
            futures.append(future)
        await asyncio.wait(futures, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for buffer, future in zip(handles, futures, strict=False):
            notifier.discard(buffer._access, which, future)
    changed = [
        buffer
        for buffer, future in zip(handles, futures, strict=True)
        if future.done() and not future.cancelled()
    ]
    for future in futures:
        future.cancel()
    return changed


# ---- the notifier: one thread per WATCHED_PER_THREAD watched words --------------------------------


class _Watch:
    """The asyncio futures awaiting one (handle, block)."""

    __slots__ = ("access", "block", "waiters")

    def __init__(self, access: _core.BufferAccess, block: int) -> None:
        self.access = access
        self.block = block
        self.waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[bool], bool]] = []


class _Worker:
    """A thread sleeping in :func:`runtime._core.wait_any` on its watches and a control word."""

    def __init__(self, notifier: _Notifier) -> None:
        self.notifier = notifier
        self.watches: dict[tuple[int, int], _Watch] = {}
        self.control = _core.WakeWord()
        self.thread = threading.Thread(target=self._run, name="runtime-notifier", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        lock = self.notifier.lock
        while True:
            with lock:
                watches = list(self.watches.values())
                value = self.control.value
            entries = [(watch.access, watch.block) for watch in watches]
            try:
                ready = _core.wait_any(entries, None, self.control, value)
            except Exception:  # noqa: BLE001 - a handle closed meanwhile: settle everything, then go on
                ready = list(range(len(watches)))
            for index in ready:
                self._settle(watches[index])

    def _settle(self, watch: _Watch) -> None:
        with self.notifier.lock:
            if self.watches.get((id(watch.access), watch.block)) is not watch or not watch.waiters:
                return  # nobody awaits it any more: leave the change for the handle's next wait
        error: BaseException | None = None
        try:
            changed = watch.access.take_change(watch.block)
        except Exception as exc:  # noqa: BLE001 - invalid or closed: the awaiting tasks get it
            changed, error = True, exc
        if not changed:
            return  # woken for another word's sake: keep waiting
        with self.notifier.lock:
            self.watches.pop((id(watch.access), watch.block), None)
            waiters, watch.waiters = watch.waiters, []
        for loop, future, strict in waiters:
            if error is not None and strict:
                loop.call_soon_threadsafe(_set_exception, future, error)
            else:
                loop.call_soon_threadsafe(_set_result, future, True)


def _set_result(future: asyncio.Future[bool], value: bool) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future[bool], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


class _Notifier:
    """The process's notifier: workers added as watches grow, made anew after fork()."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.workers: list[_Worker] = []

    def add(
        self,
        access: _core.BufferAccess,
        block: int,
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[bool],
        *,
        strict: bool = True,
    ) -> None:
        key = (id(access), block)
        with self.lock:
            worker = next((w for w in self.workers if key in w.watches), None)
            if worker is None:
                worker = next((w for w in self.workers if len(w.watches) < WATCHED_PER_THREAD), None)
            if worker is None:
                worker = _Worker(self)
                self.workers.append(worker)
            watch = worker.watches.get(key)
            if watch is None:
                watch = worker.watches[key] = _Watch(access, block)
            watch.waiters.append((loop, future, strict))
        worker.control.wake()

    def discard(self, access: _core.BufferAccess, block: int, future: asyncio.Future[bool]) -> None:
        key = (id(access), block)
        with self.lock:
            for worker in self.workers:
                watch = worker.watches.get(key)
                if watch is None:
                    continue
                watch.waiters = [entry for entry in watch.waiters if entry[1] is not future]
                if not watch.waiters:
                    del worker.watches[key]
                    worker.control.wake()


_NOTIFIER: _Notifier | None = None
_NOTIFIER_LOCK = threading.Lock()


def _notifier() -> _Notifier:
    global _NOTIFIER
    with _NOTIFIER_LOCK:
        if _NOTIFIER is None or _NOTIFIER.pid != os.getpid():  # a child of fork() has no threads
            _NOTIFIER = _Notifier()
        return _NOTIFIER
