"""Commands and their commanders: a motor never outlives the code that drives it.

A *command* is the value in force of a parameter that has a safe value in the
catalog (an actuator: a motor's duty cycle, a servo's position). Its
*commander* is the process that wrote it: every :meth:`~runtime.buffer.Buffer.write`
of such a parameter records the writer in the buffer's segment, as a
``(pid, start time)`` pair (the start time tells a reused pid from the
original). A later write by another process takes the command over.

A command ends when its commander ends, however it ends (a clean exit, an
exception, SIGKILL; a stopped process has not ended), when it closes its
handle (:meth:`~runtime.buffer.Buffer.close`) or ends its commands
(:meth:`~runtime.buffer.Buffer.end_commands`), when the robot is disabled
(:meth:`~runtime.store.BufferStore.disable`), or when the device type's
``command_timeout`` passes without a new command. The parameter then goes
back to its safe value, sent to the device as a write by nobody.

:class:`CommanderWatch` is how the bridge learns at once that a commander
ended: one pidfd per live commander (the kernel makes it readable when the
process exits), on the bridge's asyncio loop. No polling interval: the
callback runs as soon as the loop sees the descriptor ready.

>>> loop = asyncio.new_event_loop()
>>> watch = CommanderWatch(print, loop)
>>> watch.alive(my_commander())
True
>>> watch.alive((my_commander()[0], my_commander()[1] + 1))  # same pid, another start: a reused pid
False
>>> watch.close(); loop.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import errno
import logging
import os
import select
import signal
import threading
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Generic, TypeVar

from . import _core
from .buffer import Buffer, DeviceBufferError

__all__ = [
    "HOLD_CHECK_INTERVAL",
    "ClientCommands",
    "Commander",
    "CommanderWatch",
    "HoldEnd",
    "die_with_parent",
    "hold",
    "my_commander",
    "start_time",
]

logger = logging.getLogger(__name__)

Commander = tuple[int, int]
"""A commander: ``(pid, start)``, the start time in clock ticks since boot (low 32 bits; 0: unknown)."""

FALLBACK_INTERVAL = 0.05
"""Seconds between looks at each commander where the kernel has no pidfd (before Linux 5.3)."""


_PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up now: a child after fork must not load


def die_with_parent(parent: int, signum: int = signal.SIGTERM) -> None:
    """In a child, before it runs: get ``signum`` when its parent dies, even by SIGKILL (Linux).

    So that a child a supervisor started (a demo's bridge, a runner's student
    code) never outlives it, and never keeps commanding. ``parent`` is the
    supervisor's pid, taken before the fork: if it died before this call, the
    signal comes at once. Safe in ``preexec_fn``. The signal comes when the
    *thread* that started the child ends: start children from a thread that
    outlives them.
    """
    _prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)
    if os.getppid() != parent:  # it died before the line above: nobody would signal us
        os.kill(os.getpid(), signum)


def my_commander() -> Commander:
    """This process as a commander."""
    return _core.my_commander()


def start_time(pid: int) -> int | None:
    """A process's start time (clock ticks since boot, low 32 bits), or None when it does not exist."""
    return _core.start_time(pid)


def _is_same(who: Commander) -> bool:
    """Whether the process ``who`` names still exists (and its pid was not reused)."""
    pid, start = who
    now = start_time(pid)
    return now is not None and (start == 0 or now == start)


class CommanderWatch:
    """Calls ``on_end(commander)`` as soon as a watched commander's process ends.

    :meth:`alive` answers whether a commander lives and, when it does,
    watches it from then on (once per commander, however often it is
    asked). Each commander is reported once; a process that ends before it
    is watched is simply not alive. Use it from the thread running ``loop``
    (default: the running loop).
    """

    def __init__(
        self, on_end: Callable[[Commander], None], loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        self._on_end = on_end
        self._loop = loop
        self._fds: dict[Commander, int] = {}
        self._polled: set[Commander] = set()
        self._poll_handle: asyncio.TimerHandle | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"<CommanderWatch watching {len(self._fds) + len(self._polled)}>"

    @property
    def watched(self) -> frozenset[Commander]:
        """The commanders watched now (alive when last seen)."""
        return frozenset(self._fds) | frozenset(self._polled)

    def alive(self, who: Commander) -> bool:
        """Whether ``who`` is a live process; a live one is watched from now on."""
        if who in self._fds or who in self._polled:
            return True
        if self._closed:
            return _is_same(who)
        try:
            fd = os.pidfd_open(who[0])
        except ProcessLookupError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.ENOSYS, errno.EPERM, errno.EINVAL):
                raise
            return self._poll(who)  # no pidfd here: look every FALLBACK_INTERVAL
        ready, _, _ = select.select([fd], [], [], 0)
        if ready or not _is_same(who):  # exited (a zombie), or the pid now names another process
            os.close(fd)
            return False
        self._fds[who] = fd
        self._get_loop().add_reader(fd, self._ended, who)
        return True

    def close(self) -> None:
        """Stop watching (nothing is reported any more)."""
        self._closed = True
        for fd in self._fds.values():
            if self._loop is not None:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(fd)
            os.close(fd)
        self._fds.clear()
        self._polled.clear()
        if self._poll_handle is not None:
            self._poll_handle.cancel()
            self._poll_handle = None

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def _ended(self, who: Commander) -> None:
        fd = self._fds.pop(who, None)
        if fd is None:
            return
        self._get_loop().remove_reader(fd)
        os.close(fd)
        self._report(who)

    def _report(self, who: Commander) -> None:
        try:
            self._on_end(who)
        except Exception:  # a bad callback must not stop the watch
            logger.exception("commander %d ended: the callback failed", who[0])

    def _poll(self, who: Commander) -> bool:
        if not _is_same(who):
            return False
        self._polled.add(who)
        if self._poll_handle is None:
            self._poll_handle = self._get_loop().call_later(FALLBACK_INTERVAL, self._look)
        return True

    def _look(self) -> None:
        self._poll_handle = None
        for who in [who for who in self._polled if not _is_same(who)]:
            self._polled.discard(who)
            self._report(who)
        if self._polled and not self._closed:
            self._poll_handle = self._get_loop().call_later(FALLBACK_INTERVAL, self._look)


KeyT = TypeVar("KeyT", bound=Hashable)
ClientT = TypeVar("ClientT", bound=Hashable)


class ClientCommands(Generic[KeyT, ClientT]):
    """Which remote client sent each command in force, for a server that writes for its clients.

    In shared memory a server (``runtime foxglove``, ``runtime zenoh``) is
    the commander of every command it writes. This table remembers, per
    buffer (under a key of the server's: a topic, a key expression) and
    parameter, which client sent the last one, so that when a client goes
    away only its commands end (:meth:`~runtime.buffer.Buffer.end_commands`:
    a parameter another process wrote since stays theirs). Not thread-safe:
    a server with threads holds one lock around every call.
    """

    def __init__(self) -> None:
        self._owners: dict[KeyT, dict[str, ClientT]] = {}
        self._buffers: dict[KeyT, Buffer] = {}

    def __repr__(self) -> str:
        return f"<ClientCommands of {len(self.clients())} client(s) on {len(self._owners)} buffer(s)>"

    def wrote(self, key: KeyT, buffer: Buffer, params: Iterable[str], client: ClientT) -> None:
        """``client`` wrote ``params`` to ``buffer`` through this server: its actuators' values are its."""
        commands = [name for name in params if buffer.params[name].safe is not None]
        if commands:
            self._buffers[key] = buffer
            self._owners.setdefault(key, {}).update(dict.fromkeys(commands, client))

    def forget(self, key: KeyT) -> None:
        """The buffer under ``key`` went away (closing it ended this process's commands)."""
        self._owners.pop(key, None)
        self._buffers.pop(key, None)

    def clients(self) -> set[ClientT]:
        """The clients with a command in force through this server."""
        return {client for owners in self._owners.values() for client in owners.values()}

    def end(
        self, whose: Callable[[ClientT], bool]
    ) -> tuple[dict[KeyT, set[str]], dict[KeyT, DeviceBufferError]]:
        """End the commands of the clients ``whose`` chooses.

        Returns:
            Per key, the parameters put back to their safe values; and per
            key, why none could be: the buffer's lock was busy (those
            commands stay here, to be ended again later).
        """
        ended: dict[KeyT, set[str]] = {}
        failed: dict[KeyT, DeviceBufferError] = {}
        for key, owners in list(self._owners.items()):
            params = [name for name, client in owners.items() if whose(client)]
            if not params:
                continue
            buffer = self._buffers[key]
            try:
                names = buffer.end_commands(params)
            except DeviceBufferError as exc:
                if buffer.closed:  # closing it ended them
                    self.forget(key)
                else:
                    failed[key] = exc
                continue
            for name in params:
                del owners[name]
            if not owners:
                self.forget(key)
            if names:
                ended[key] = names
        return ended, failed


# ---- holding commands ----------------------------------------------------------------------------

HOLD_CHECK_INTERVAL = 0.05
"""Seconds between two looks of :func:`hold` at the buffer (its validity, the robot, the commanders)."""


@dataclasses.dataclass(frozen=True)
class HoldEnd:
    """Why :func:`hold` returned.

    ``reason`` is ``"stopped"`` (asked to: the commands were ended, ``ended``
    names those that were still this process's), ``"invalid"`` (the buffer
    turned invalid: the device is gone), ``"disabled"`` (the robot was
    disabled: the bridge put the safe values back) or ``"taken"`` (other
    processes command every one of them now, ``others`` their pids; none: the
    bridge ended them).
    """

    reason: str
    ended: tuple[str, ...] = ()
    others: tuple[int, ...] = ()


def hold(
    buffer: Buffer, commands: Sequence[str], stop: threading.Event, *, interval: float = HOLD_CHECK_INTERVAL
) -> HoldEnd:
    """Keep this process's commands on ``buffer`` in force until ``stop``; then end them.

    Returns early when they end otherwise (see :class:`HoldEnd`).

    Raises:
        DeviceBufferError: Ending them at ``stop`` failed.
    """
    me = os.getpid()
    while not stop.wait(interval):
        if not buffer.valid:
            return HoldEnd("invalid")
        if buffer.disabled:
            return HoldEnd("disabled")
        try:
            commanders = buffer.commanders()
        except DeviceBufferError:  # the lock busy a long time, or invalid meanwhile: look again
            continue
        if not any(commanders.get(name) == me for name in commands):
            return HoldEnd(
                "taken", others=tuple(sorted({commanders[n] for n in commands if n in commanders}))
            )
    ended = buffer.end_commands(commands)
    return HoldEnd("stopped", ended=tuple(name for name in commands if name in ended))
