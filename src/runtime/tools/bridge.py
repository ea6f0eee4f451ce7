"""``runtime bridge``: the host side of the Smart Device protocol (the Smart Device manager).

Smart Devices are USB serial boards; this command finds their ports, identifies
each device, keeps its shared-memory buffer (:mod:`runtime.buffer`) in step with
it, and forwards what other processes request through the buffer. It is the one
process that talks to the serial ports; everything else only sees buffers.

How it is organised (one asyncio loop, and the frame pump's reader thread):

* A *watcher* looks for the ports asked for (exact ``--port`` paths and
  ``--glob`` patterns, default ``/dev/ttyACM*``) whenever their directories
  change (inotify), and every :data:`SAFETY_SCAN_INTERVAL` seconds in case
  the OS did not say; where it cannot tell (a directory that does not exist
  yet, a pattern with wildcards in its directories) it polls every
  :data:`POLL_INTERVAL` seconds.
  A port that appears gets its own task running a :class:`PortConnection`; a
  port that vanishes (or whose path now names another device) has its
  connection closed. Pseudo-terminals are handled exactly like serial ports.
* A :class:`PortConnection` opens the port with pyserial (115200 baud,
  non-blocking) and hands its descriptor to the bridge's one
  :class:`~runtime.link.FramePump`: a reader thread in the compiled core that
  reads every port without the GIL, applies each DEV_DATA to its device's
  buffer, answers heartbeats, and passes Python only the rare other frames
  (SUB_RES, ERROR, frames that do not decode or fit). No Python runs per
  frame of sensor data. The connection sends PING every
  :data:`PING_INTERVAL` seconds until a SUB_RES names the device, opens the
  device's buffer through the bridge's single :class:`~runtime.buffer.BufferStore`,
  serves it (:meth:`~runtime.buffer.Buffer.serve`: valid for as long as this
  process lives and the device is connected), attaches it to the pump, and
  subscribes. A ``write()`` or ``read()`` by anyone wakes it: the pending
  reads and writes go out (:meth:`~runtime.buffer.DeviceBuffer.emit_dev_rw`),
  at most one batch per ``write_interval``;
  a heartbeat goes out every ``heartbeat_interval`` (every device's on one
  grid of time, so that the bridge wakes once for all), and a device silent for
  :data:`SILENCE_HEARTBEATS` heartbeat intervals is treated as gone.
* The link may lose frames, so what must arrive is confirmed: a subscription
  counts only once a SUB_RES with a nonzero interval answers it (SUB_REQ is
  repeated until then), and a write of a parameter the device reports in its
  DEV_DATA is sent again until a report shows it arrived (at most
  :data:`WRITE_RETRIES` times; see ``_resend_writes``).
* Writes never block: the pump queues what a full port cannot take and
  flushes it when the port is writable again (a stalled device cannot freeze
  the others).
* The bridge never waits for a buffer's lock: a consumer stopped inside a
  transaction (Ctrl-Z) must not freeze the other devices. Values that find the
  lock taken are kept (the newest per parameter) and applied as soon as the
  lock frees; the stall is counted and logged once a second.
* On disconnect the bridge stops serving the buffer (invalid at once, without
  the lock) and keeps it: when the same UID comes back within
  ``--unplugged-grace`` seconds (:data:`UNPLUGGED_GRACE`), the same segment
  becomes valid again, so readers keep their mapping across reconnects. A UID
  that stays away longer (or the longest gone, beyond ``--unplugged-cap``
  disconnected devices, :data:`UNPLUGGED_CAP`) is released: the bridge unmaps
  its buffer and forgets its record, and unlinks its segment unless another
  process maps it (that one is left, the same segment for the device when it
  comes back, and unlinked by a later check once nobody maps it). So a device
  reconnecting under a new UID every time cannot grow the bridge without
  bound. If the bridge dies, the buffers it served turn invalid by themselves,
  and a restarted bridge takes them over.
* Commands die with their commanders (:mod:`runtime.commands`): the bridge
  watches the process that wrote each actuator's value in force (a pidfd on
  the loop). When it ends, however it ends, the actuator's safe value goes
  out at once (not held back by ``write_interval``), and a pending write of
  a commander that is gone is never sent (also after a bridge restart). The
  same when the type's ``command_timeout`` passes without a new command.
* When the robot is disabled (:meth:`~runtime.store.BufferStore.disable`,
  ``runtime disable``), each device with safe-valued parameters gets
  DEV_DISABLE and its safe values; the state lives in shared memory, so a
  device that connects later, or a restarted bridge, finds it.
* On SIGINT/SIGTERM every connected device gets a DEV_DISABLE (nothing keeps
  actuating unattended), every buffer is marked invalid, the store is closed
  (segments stay) and the stats file is written one last time.

Bad input never stops the bridge: an undecodable frame is answered with an ERROR
message carrying its error code and counted; an unknown device type is logged
and its port ignored until it reconnects; every port's failures are caught and
logged in that port's task alone.

Run it as ``runtime bridge`` (see :mod:`runtime.tools.cli`) or ``python -m runtime.tools.bridge``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import dataclasses
import errno
import functools
import glob
import logging
import math
import os
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar

import serial

from .. import catalog as catalog_module
from ..buffer import SHM_DIR, Buffer, BufferStore, DeviceBuffer, DeviceBufferError, DeviceUID
from ..commands import Commander, CommanderWatch
from ..exception import RuntimeBaseException
from ..jsonio import jsonable, write_json_atomically
from ..link import FramePump, PumpCounters, PumpEvent
from ..messaging import DELIM, ErrorCode, Message, MessageError, MessageType
from ..store import mapped_elsewhere
from ._common import add_catalog_option, configure_logging, stop_on_signals

__all__ = [
    "BAUD_RATE",
    "DEFAULT_GLOB",
    "Bridge",
    "Counters",
    "DeviceRecord",
    "PortConnection",
    "add_arguments",
    "main",
]

logger = logging.getLogger("runtime.tools.bridge")

T = TypeVar("T")

BAUD_RATE = 115200
"""Serial speed of every Smart Device."""
DEFAULT_GLOB = "/dev/ttyACM*"
"""Where Smart Devices appear on Linux; watched when no ``--port`` is given."""
POLL_INTERVAL = 0.5
"""Seconds between scans for ports that appeared or vanished, where inotify cannot tell."""
SAFETY_SCAN_INTERVAL = 5.0
"""Seconds between scans where inotify watches every directory (a change it did not report)."""
RESCAN_DELAY = 0.5
"""Seconds after a connection ends before its port is looked at again."""
PING_INTERVAL = 0.2
"""Seconds between PINGs while waiting for a device to introduce itself."""
SUB_RETRY_INTERVAL = 1.0
"""Seconds before a subscription request that got no SUB_RES is sent again."""
SILENCE_HEARTBEATS = 3
"""A device that sent nothing valid for this many heartbeat intervals is treated as gone."""
STATS_INTERVAL = 1.0
"""Seconds between two writes of the ``--stats`` file."""
RETRY_DELAY = 2.0
"""Seconds before a port that could not be opened (or whose task failed) is tried again."""
CLAIM_RETRY_DELAY = 0.5
"""Seconds after a first claim (see PortConnection._claim) before serving is tried again."""
MAX_CLAIMS_LOGGED = 1024
"""The most devices whose claim is remembered (so logged once)."""
STALL_RETRY_INTERVAL = 0.005
"""Seconds between two attempts to apply values held back by a buffer lock another process holds."""
STALL_LOG_INTERVAL = 1.0
"""Seconds between two log lines about one buffer's lock being held by another process."""
BAD_FRAME_LOG_INTERVAL = 1.0
"""Seconds between two log lines about bad frames on one port (the rest are summed up)."""
WRITE_CONFIRM_TIMEOUT = 0.25
"""Seconds a write waits for the device's DEV_DATA to confirm it before it is sent again
(at least three subscription intervals)."""
NO_DEVICE_REPORT_DELAY = 5.0
"""Seconds without any connected device before the bridge says what it found on the ports it watches."""
LOCK_RETRY_DELAY = 0.005
"""Seconds before ending a dead commander's commands is tried again when the buffer's lock was busy."""
WRITE_RETRIES = 8
"""Times an unconfirmed write is sent again before the bridge gives up on it (so it is retried for
about two seconds: a link losing a quarter of the frames loses all nine copies less than once in 100 000)."""
UNPLUGGED_GRACE = 60.0
"""Seconds the bridge keeps a disconnected device's buffer (mapped, its segment linked, its record in
``--stats``): a device that comes back within them gets the same segment. Then it is released."""
UNPLUGGED_CAP = 128
"""Most disconnected devices the bridge keeps at once (a USB bus holds at most 127); beyond, the longest gone
is released first."""
LEFT_BEHIND_CHECK_MIN = 1.0
"""Seconds at least between two looks at the segments of released devices that another process still
maps (they are looked at every grace period)."""
LEFT_BEHIND_LIMIT = 1024
"""Most such segments the bridge keeps looking at (the rest are ``runtime buffers clean``'s)."""


# ---- per-device bookkeeping ----------------------------------------------------------------------


@dataclasses.dataclass
class Counters:
    """Traffic counters of one device (or of a port that has not named its device yet)."""

    messages_in: int = 0
    messages_out: int = 0
    errors: int = 0
    writes_resent: int = 0
    """Parameter writes sent again because no DEV_DATA confirmed them in time."""
    writes_unconfirmed: int = 0
    """Parameter writes given up on after :data:`WRITE_RETRIES` resends."""
    lock_stalls: int = 0
    """Times the buffer's lock was found held by another process (values were held back, not lost)."""
    commands_ended: int = 0
    """Parameters put back to their safe values because their commander ended (or timed out)."""
    disables: int = 0
    """Times the device was told DEV_DISABLE because the robot was disabled."""

    def add(self, other: Counters) -> None:
        """Add another set of counters to this one."""
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))


@dataclasses.dataclass
class DeviceRecord:
    """What the bridge knows about one device (by UID), connected or not; feeds ``--stats``."""

    uid: int
    type_name: str
    port: str
    buffer: DeviceBuffer
    connected: bool = False
    counters: Counters = dataclasses.field(default_factory=Counters)
    last_values: dict[str, Any] = dataclasses.field(default_factory=dict)
    disconnected_at: float | None = None
    """``time.monotonic()`` when the device was last disconnected (None while connected)."""

    def refresh(self) -> None:
        """Take a snapshot of the buffer's values while the device is connected."""
        if self.connected:
            with contextlib.suppress(RuntimeBaseException):
                self.last_values = self.buffer.snapshot()

    def to_json(self) -> dict[str, Any]:
        """The record as the ``--stats`` file shows it."""
        return {
            "port": self.port,
            "type": self.type_name,
            "uid": f"{self.uid:#x}",
            "connected": self.connected,
            "messages_in": self.counters.messages_in,
            "messages_out": self.counters.messages_out,
            "errors": self.counters.errors,
            "writes_resent": self.counters.writes_resent,
            "writes_unconfirmed": self.counters.writes_unconfirmed,
            "lock_stalls": self.counters.lock_stalls,
            "last_values": {name: jsonable(value) for name, value in self.last_values.items()},
        }


@dataclasses.dataclass
class _UnconfirmedWrite:
    """A parameter write sent to the device that no DEV_DATA has confirmed yet (the pump watches)."""

    value: Any
    """The value written."""
    bit: int
    """The parameter's bit in ID bitmaps."""
    deadline: float
    """When to send the write again (``time.monotonic()``)."""
    resends: int = 0


def _next_tick(now: float, interval: float) -> float:
    """The first multiple of ``interval`` after ``now``: every device's periodic work falls on one grid,
    so the bridge wakes once per tick for all of them."""
    return (math.floor(now / interval) + 1) * interval


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


def _lock_busy(exc: DeviceBufferError) -> bool:
    """Whether a buffer operation failed only because another process holds the lock."""
    return exc.context.get("errno") in (errno.EBUSY, errno.ETIMEDOUT)


def _identity(path: str) -> Identity | None:
    """What device a path names now (``None`` if it does not exist); symlinks are followed."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


# ---- one port -----------------------------------------------------------------------------------


class PortConnection:
    """Serve one serial port: identify its device, then keep its buffer in step with it.

    Created and run by :class:`Bridge` (one task per port). :meth:`run` returns
    when the port is closed for any reason (vanished, read error, silence, shut
    down); the buffer of its device is then marked invalid.
    """

    def __init__(self, bridge: Bridge, path: str, identity: Identity) -> None:
        self.bridge = bridge
        self.path = path
        self.identity = identity
        self.counters = Counters()
        self.buffer: DeviceBuffer | None = None
        self.record: DeviceRecord | None = None
        self.retry_delay = 0.0
        """Seconds the bridge waits before opening this path again once :meth:`run` returns."""
        self._loop = asyncio.get_running_loop()
        self._closed: asyncio.Future[str] = self._loop.create_future()
        self._sub_res: asyncio.Future[Message] = self._loop.create_future()
        self._serial: serial.Serial | None = None
        self._fd = -1
        self._pump = bridge.pump
        self._port: int | None = None
        """This port's id in the bridge's frame pump, once open."""
        self._pump_counted = PumpCounters(0, 0, 0, 0)
        """The pump's counters of this port when last added to :attr:`counters`."""
        self._last_rx = time.monotonic()
        self._hb_id = 0
        self._sub_confirmed = False
        self._sub_request = (0, 0)
        """The (params, interval in ms) of the SUB_REQ this connection sends."""
        self._bad_frames = 0
        self._bad_logged_at = -math.inf
        self._device_errors = 0
        self._device_errors_logged_at = -math.inf
        self._scratch: DeviceBuffer | None = None
        """A process-local buffer of the device's type that builds resends and reads DEV_DATA values."""
        self._confirmable: frozenset[str] = frozenset()
        """Writeable parameters the device reports in its subscribed DEV_DATA: their writes are confirmed."""
        self._unconfirmed: dict[str, _UnconfirmedWrite] = {}
        self._held_back: dict[int, Message] = {}
        """Messages for the buffer (SUB_RES: the pump holds DEV_DATA back itself) that found its lock
        taken: the newest per type."""
        self._stalled_since: float | None = None
        self._stall_logged_at = -math.inf
        self._retry_handle: asyncio.TimerHandle | None = None
        self._disabled = False
        """Whether this device was told DEV_DISABLE for the robot's disabled state."""
        self._safety_due = False
        """Safe values are pending: send them now, not after write_interval."""

    # -- naming for logs --

    def describe(self) -> str:
        """``<type> <uid> on <port>`` once known, else ``port <port>``: the subject of log lines."""
        if self.record is None:
            return f"port {self.path}"
        return f"{self.record.type_name} {self.record.uid:#x} on {self.path}"

    # -- life cycle --

    def lose(self, reason: str) -> None:
        """Close the connection (from any callback): :meth:`run` returns soon."""
        if not self._closed.done():
            self._closed.set_result(reason)

    async def run(self) -> None:
        """Open the port and serve it until it is lost; never raises (failures are logged)."""
        reason = "closed"
        try:
            if not self._open():
                return
            sub_res = await self._until_closed(self._handshake())
            if sub_res is None:
                return
            if not self._attach(sub_res):
                reason = await self._closed  # ignored until the device goes away and comes back
                return
            if self.buffer is None:  # the buffer could not be opened or served: try again later
                return
            await self._until_closed(self._service())
        except asyncio.CancelledError:
            reason = "bridge shutting down"
            raise
        except Exception:
            logger.exception("%s: unexpected failure; closing the port", self.describe())
            self.retry_delay = RETRY_DELAY
            reason = "internal error"
        finally:
            if self._closed.done():
                reason = self._closed.result()
            self._teardown(reason)

    def _open(self) -> bool:
        try:
            self._serial = serial.Serial(self.path, BAUD_RATE, timeout=0)
        except (serial.SerialException, OSError, ValueError) as exc:
            self.bridge.report_open_error(self.path, exc)
            self.retry_delay = RETRY_DELAY
            return False
        self.bridge.clear_open_error(self.path)
        self._fd = self._serial.fileno()
        os.set_blocking(self._fd, False)
        self._port = self._pump.add(self._fd)
        self.bridge.pump_ports[self._port] = self
        logger.info("port %s: opened; waiting for a Smart Device to answer PING", self.path)
        return True

    async def _until_closed(self, coro: Coroutine[Any, Any, T]) -> T | None:
        """Run ``coro`` until it finishes or the connection is lost (then cancel it, return None)."""
        task = self._loop.create_task(coro)
        try:
            waiters: set[asyncio.Future[Any]] = {task, self._closed}
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if task.cancelled() or self._closed.done():
            return None
        return task.result()

    async def _handshake(self) -> Message:
        """PING until a SUB_RES arrives; return it."""
        started = time.monotonic()
        warned = False
        while not self._sub_res.done():
            self.send(Message.make_ping())
            await asyncio.wait({self._sub_res}, timeout=PING_INTERVAL)
            if not warned and time.monotonic() - started > 5:
                logger.info("port %s: no answer to PING yet; still trying", self.path)
                warned = True
        return self._sub_res.result()

    def _attach(self, sub_res: Message) -> bool:
        """Open and validate the buffer of the device a SUB_RES names; False if the port is ignored."""
        _, _, (device_id, year, random) = sub_res.read_sub_res()
        uid = int(DeviceUID(device_id, year, random))
        try:
            buffer = self.bridge.open_buffer(uid)
        except KeyError:
            logger.error(
                "port %s: unknown device id %d (uid %#x) not in the catalog; ignoring the port until it "
                "reconnects",
                self.path,
                device_id,
                uid,
            )
            self.bridge.note_unknown_device(self.path, device_id, uid)
            return False
        except RuntimeBaseException as exc:  # /dev/shm full, a foreign file in the way...
            logger.error(
                "port %s: cannot open the buffer of uid %#x: %s; trying again in %g s",
                self.path,
                uid,
                exc,
                RETRY_DELAY,
            )
            self.retry_delay = RETRY_DELAY
            return True
        type_name = type(buffer).type_name
        owner = self.bridge.owners.get(uid)
        if owner is not None and owner is not self:
            logger.error(
                "%s %#x on %s: already connected on %s; ignoring this port until it reconnects",
                type_name,
                uid,
                self.path,
                owner.path,
            )
            return False
        buffer.set_lock_timeout(0)  # never wait for a lock: see _apply
        try:
            dead_producer = buffer.serve()
        except RuntimeBaseException as exc:  # another process serves it: claim it (see _claim)
            self.retry_delay = RETRY_DELAY
            if not self._claim(buffer, type_name, uid, exc):
                logger.error(
                    "%s %#x on %s: %s; trying again in %g s", type_name, uid, self.path, exc, RETRY_DELAY
                )
            self.bridge.release_unserved(uid)
            return True
        self.bridge.claims.pop(uid, None)
        if dead_producer is not None:
            logger.info(
                "%s %#x: taking over from a producer that died (pid %d)", type_name, uid, dead_producer
            )
        self._sync_disabled(buffer)
        self.buffer = buffer
        assert self._port is not None
        self._pump.attach(self._port, buffer)  # its DEV_DATA go straight into the buffer from now on
        self._apply(sub_res)
        self.record = self.bridge.attach(self, uid, type_name, buffer)
        self._last_rx = time.monotonic()
        try:
            self._scratch = type(buffer).attach(f"bridge-writes-{uid:x}", shared=False)
        except RuntimeBaseException as exc:  # writes then go out once, unconfirmed
            logger.warning("%s: cannot track writes: %s", self.describe(), exc)
        else:
            self._confirmable = frozenset(
                name
                for name, param in buffer.params.items()
                if param.readable and param.writeable and param.subscribed
            )
        request = buffer.make_sub_req()
        self._sub_request = request.read_sub_req()
        self.send(request)
        logger.info("%s: connected", self.describe())
        return True

    def _claim(self, buffer: DeviceBuffer, type_name: str, uid: int, exc: RuntimeBaseException) -> bool:
        """Claim a buffer another live process serves, the device being connected here: True if claimed.

        The device connected to this bridge wins over a producer that is not a
        bridge (a ``runtime replay``, a program that called ``serve()``): one
        that honours claims gives the buffer up within a fraction of a second
        and the next attempt serves it. One that ignores claims (another
        bridge) keeps it; the claim is logged once per device and producer,
        and the bridge keeps trying quietly every RETRY_DELAY seconds.
        """
        producer = exc.context.get("producer_pid")
        if not isinstance(producer, int) or producer in (0, os.getpid()) or buffer.producer_pid != producer:
            return False  # not served by another live process (refused for another reason)
        try:
            buffer.claim()
        except RuntimeBaseException:
            return False
        claims = self.bridge.claims
        if claims.get(uid) == producer:
            logger.debug("%s %#x on %s: still served by process %d", type_name, uid, self.path, producer)
            return True
        claims.pop(uid, None)
        while len(claims) >= MAX_CLAIMS_LOGGED:  # a bound for devices that come under new UIDs
            del claims[next(iter(claims))]
        claims[uid] = producer
        logger.warning(
            "%s %#x on %s: connected here but served by process %d; claiming its buffer (a replay gives it "
            "up; a producer that ignores claims keeps it, and this bridge keeps trying)",
            type_name,
            uid,
            self.path,
            producer,
        )
        self.retry_delay = CLAIM_RETRY_DELAY  # a replay yields within its CLAIM_CHECK
        return True

    def _sync_disabled(self, buffer: DeviceBuffer) -> None:
        """Mark a buffer served from now on as the robot's state says (disabled: refuse commands)."""
        if not type(buffer).safe_values():
            return
        try:
            disabled = not self.bridge.store.enabled
        except RuntimeBaseException as exc:  # a foreign file where the state should be: stay safe
            logger.error("%s: cannot read the robot's state (%s); treating it as disabled", self.path, exc)
            disabled = True
        with contextlib.suppress(DeviceBufferError):  # lock busy: the flag is set anyway
            buffer._access.set_disabled(disabled)

    def _enforce_commands(self, buffer: DeviceBuffer) -> bool:
        """End the commands that must end (disabled robot, commander gone, timeout); True if any did.

        The safe values are then pending writes, sent by the caller before anything else.
        Raises DeviceBufferError when the lock is busy (the caller tries again soon).
        """
        access = buffer._access
        ended: set[str] = set()
        disabled = access.disabled
        if disabled and not self._disabled:
            self.send(Message.make_dev_disable())
            ended |= access.end_commands(everything=True)
            self._disabled = True
            self.counters.disables += 1
            logger.warning("%s: the robot is disabled: DEV_DISABLE and safe values sent", self.describe())
        elif not disabled and self._disabled:
            self._disabled = False
            logger.info("%s: the robot is enabled again (nothing moves until a new command)", self.describe())
        commanders = access.commanders()
        if commanders:
            if disabled:
                ended |= access.end_commands()
            else:
                for who in set(commanders.values()):
                    if not self.bridge.commanders.alive(who):
                        ended |= self._end_commands(who)
                timeout = type(buffer).command_timeout
                if timeout is not None and time.time() - access.last_command >= timeout:
                    timed_out = access.end_commands()
                    if timed_out:
                        ended |= timed_out
                        logger.warning(
                            "%s: no command for %g s (command_timeout): %s back to safe values",
                            self.describe(),
                            timeout,
                            ", ".join(sorted(timed_out)),
                        )
        if ended:
            self._safety_due = True
        return bool(ended)

    def _end_commands(self, who: Commander) -> set[str]:
        """The commands of a commander that ended go back to their safe values (logged)."""
        assert self.buffer is not None
        ended = self.buffer._access.end_commands(who)
        if ended:
            self.counters.commands_ended += len(ended)
            safe = type(self.buffer).safe_values()
            logger.warning(
                "%s: commander pid %d ended; %s",
                self.describe(),
                who[0],
                ", ".join(f"{name} back to {safe[name]!r}" for name in sorted(ended)),
            )
        return ended

    def commander_ended(self, who: Commander) -> None:
        """A watched commander's process ended: end its commands on this device now.

        Ending them is a write: it wakes the service loop, which sends the safe values at once.
        """
        if self.buffer is None or self._closed.done():
            return
        try:
            if self._end_commands(who):
                self._safety_due = True
        except DeviceBufferError:  # the lock is busy: try again shortly (never wait for it)
            self._loop.call_later(LOCK_RETRY_DELAY, self.commander_ended, who)

    def _command_deadline(self, buffer: DeviceBuffer, now: float) -> float | None:
        """When the command timeout of this device expires (monotonic), if a command runs."""
        timeout = type(buffer).command_timeout
        if timeout is None or not buffer._access.commanders():
            return None
        return now + max(0.0, buffer._access.last_command + timeout - time.time())

    async def _service(self) -> None:
        """The periodic work of a connected device: writes, heartbeats, silence, subscription.

        It sleeps until there is something to do: a ``write()`` or ``read()``
        by anyone wakes it at once (:meth:`~runtime.buffer.Buffer.wait_write_async`),
        and the pending requests go out right away, except that one device gets
        at most one batch per ``write_interval`` (a newer write replaces a
        pending one, as the contract says). Otherwise it wakes for the next
        heartbeat, subscription retry, resend or silence check.
        """
        assert self.buffer is not None
        buffer = self.buffer
        buffer_type = type(buffer)
        write_interval = float(buffer_type.write_interval)
        heartbeat_interval = float(buffer_type.heartbeat_interval)
        silence_limit = SILENCE_HEARTBEATS * heartbeat_interval
        now = time.monotonic()
        next_heartbeat = _next_tick(now, heartbeat_interval)
        next_sub_req = now + SUB_RETRY_INTERVAL
        last_batch = -math.inf
        requested = True  # look once at start: a write may be waiting from before the device came
        while True:
            now = time.monotonic()
            last_rx = self.last_rx()
            if now - last_rx > silence_limit:
                logger.warning("%s: silent for %.1f s", self.describe(), now - last_rx)
                self.lose(f"silent for {silence_limit:g} s")
                return
            try:
                if self._enforce_commands(buffer):
                    requested = True
                if requested and (self._safety_due or now - last_batch >= write_interval):
                    requested = False
                    self._safety_due = False
                    for message in buffer.emit_dev_rw():
                        self.send(message)
                        last_batch = now
                        if message.type == MessageType.DEV_WRITE:
                            self._track_writes(message, now)
                if self._unconfirmed and self._sub_confirmed:  # no DEV_DATA to confirm them before
                    self._resend_writes(now)
                if not self._sub_confirmed and now >= next_sub_req:
                    self.send(buffer.make_sub_req())
                    next_sub_req = now + SUB_RETRY_INTERVAL
            except DeviceBufferError as exc:
                requested = True  # try again soon
                if _lock_busy(exc):
                    self._stalled(now)
                else:
                    self.counters.errors += 1
                    logger.warning("%s: cannot emit pending reads/writes: %s", self.describe(), exc)
            except RuntimeBaseException as exc:
                self.counters.errors += 1
                logger.warning("%s: cannot emit pending reads/writes: %s", self.describe(), exc)
            if now >= next_heartbeat:
                self.send(Message.make_hb_req(self._hb_id))
                self._hb_id = (self._hb_id + 1) & 0xFF
                next_heartbeat = _next_tick(now, heartbeat_interval)
            due = [next_heartbeat, last_rx + silence_limit + 0.001]
            if not self._sub_confirmed:
                due.append(next_sub_req)
            if self._unconfirmed and self._sub_confirmed:  # resent only once DEV_DATA can confirm them
                due.append(min(pending.deadline for pending in self._unconfirmed.values()))
            if requested:
                due.append(last_batch + write_interval)
            with contextlib.suppress(DeviceBufferError):
                expiry = self._command_deadline(buffer, now)
                if expiry is not None:
                    due.append(expiry)
            sleep = max(0.001, min(due) - time.monotonic())  # never a busy loop that starves the readers
            if requested:
                await asyncio.sleep(sleep)
                continue
            try:
                requested = await buffer.wait_write_async(sleep)
            except DeviceBufferError:  # invalid (being torn down) or lock trouble: look again later
                requested = True
                await asyncio.sleep(min(sleep, write_interval))

    # -- writes the device has not confirmed --
    #
    # The protocol has no acknowledgements, and a DEV_WRITE lost on the way leaves the device with its
    # old value for good. The device reports its writeable parameters in its subscribed DEV_DATA, so
    # that report confirms a write: a value equal to the one written confirms it; a value the device
    # may still report without having seen the write (the one before, or a write this one replaced)
    # does not; any other value means the device changes the parameter itself (an encoder position
    # while the motor turns), so the write arrived or cannot be confirmed: resending it would only
    # disturb it. The pump, which sees every DEV_DATA, judges each report (FramePump.watch_writes);
    # the writes it settled are collected here. An unconfirmed write is sent again every confirm
    # timeout, at most WRITE_RETRIES times, counting only while the subscription is confirmed (before,
    # no DEV_DATA could confirm anything). Writes of parameters the device does not report (write-only
    # ones) go out once, as before.

    def _confirm_timeout(self) -> float:
        assert self.buffer is not None
        return max(WRITE_CONFIRM_TIMEOUT, 3 * self.buffer.interval)

    def _track_writes(self, message: Message, now: float) -> None:
        """Remember the confirmable writes of a DEV_WRITE just sent (a newer write replaces an older)."""
        scratch, buffer = self._scratch, self.buffer
        if scratch is None or buffer is None or not self._confirmable or self._port is None:
            return
        scratch.update(message)
        watched = 0
        for name, value in scratch.get_write().items():
            if name in self._confirmable:
                bit = 1 << buffer.params[name].id
                self._unconfirmed[name] = _UnconfirmedWrite(value, bit, now + self._confirm_timeout())
                watched |= bit
        if watched:
            self._pump.watch_writes(self._port, message, watched)

    def _resend_writes(self, now: float) -> None:
        """Send again the writes whose confirmation is overdue; give up on those resent too often."""
        scratch = self._scratch
        assert scratch is not None and self._port is not None
        settled = self._pump.settled(self._port)
        resent = 0
        given_up = 0
        for name, pending in list(self._unconfirmed.items()):
            if settled & pending.bit:
                del self._unconfirmed[name]
                continue
            if now < pending.deadline:
                continue
            if pending.resends >= WRITE_RETRIES:
                del self._unconfirmed[name]
                given_up |= pending.bit
                self.counters.writes_unconfirmed += 1
                logger.warning(
                    "%s: no DEV_DATA confirmed %s = %r after %d resends; giving up",
                    self.describe(),
                    name,
                    pending.value,
                    pending.resends,
                )
                continue
            try:
                scratch.write(name, pending.value)
            except (RuntimeBaseException, TypeError, ValueError):  # cannot happen: it was written before
                del self._unconfirmed[name]
                continue
            pending.resends += 1
            pending.deadline = now + self._confirm_timeout()
            resent += 1
        if given_up:
            self._pump.settled(self._port, given_up)
        if resent:
            for message in scratch.emit_dev_rw():
                self.send(message)
            self.counters.writes_resent += resent
            logger.debug("%s: resent %d unconfirmed write(s)", self.describe(), resent)

    def _teardown(self, reason: str) -> None:
        if self._port is not None:
            self.sync_counters()
            self._pump.remove(self._port)
            if self.bridge.pump_ports.get(self._port) is self:
                del self.bridge.pump_ports[self._port]
            self._port = None
        if self._serial is not None:
            with contextlib.suppress(Exception):
                self._serial.close()
        if self._scratch is not None:
            self._scratch.close()
            self._scratch = None
        self._unconfirmed.clear()
        self._held_back.clear()
        if self._retry_handle is not None:
            self._retry_handle.cancel()
            self._retry_handle = None
        if self.record is not None:
            self.bridge.detach(self)
            logger.info("%s: disconnected (%s)", self.describe(), reason)
        elif self._fd >= 0:
            logger.info("port %s: closed (%s)", self.path, reason)
        self._fd = -1

    # -- input --

    def last_rx(self) -> float:
        """``time.monotonic()`` of the last valid message from the device (or of the connection's start)."""
        if self._port is None:
            return self._last_rx
        return max(self._last_rx, self._pump.last_rx(self._port))

    def sync_counters(self) -> None:
        """Add what the pump counted on this port since the last call to :attr:`counters`."""
        if self._port is None:
            return
        now = self._pump.counters(self._port)
        before, self._pump_counted = self._pump_counted, now
        self.counters.messages_in += now.messages_in - before.messages_in
        self.counters.messages_out += now.messages_out - before.messages_out
        self.counters.lock_stalls += now.lock_stalls - before.lock_stalls
        dropped = now.events_dropped - before.events_dropped
        if dropped:
            self.counters.errors += dropped
            logger.warning(
                "%s: %d frame(s) dropped: more than the port's share waited for the bridge (other ports "
                "are not affected)",
                self.describe(),
                dropped,
            )

    def on_pump_event(self, event: PumpEvent, data: bytes | str | float | None) -> None:
        """Handle what the frame pump passed on for this port."""
        if event == PumpEvent.FRAME:
            assert isinstance(data, bytes)
            try:
                self._on_frame(data)
            except Exception:  # one bad frame must not take the port down
                self.counters.errors += 1
                logger.exception("%s: failed to handle frame %s", self.describe(), data.hex(" "))
        elif event == PumpEvent.OVERFLOW:
            self._bad_frame("frame longer than any message", ErrorCode.BUFFER_OVERFLOW)
        elif event == PumpEvent.LOST:
            self.lose(str(data))
        elif event in (PumpEvent.STALL, PumpEvent.UNSTALL):  # the pump counted it and reports once a second
            assert isinstance(data, float)
            if data >= STALL_LOG_INTERVAL and event == PumpEvent.STALL:
                self._log_stall(data)
            elif data >= STALL_LOG_INTERVAL:
                self._log_lock_free(data)
        elif event == PumpEvent.SEEN:
            assert isinstance(data, bytes)
            logger.debug("%s: <- %s", self.describe(), data.hex(" "))
        elif event == PumpEvent.SENT:
            assert isinstance(data, bytes)
            logger.debug("%s: -> %s (answered by the pump)", self.describe(), data.hex(" "))

    def _on_frame(self, frame: bytes) -> None:
        if self.bridge.verbose:
            logger.debug("%s: <- %s", self.describe(), frame.hex(" "))
        try:
            message = Message.decode(frame)
        except MessageError as exc:
            self._bad_frame(exc.message, exc.error_code)
            return
        self.counters.messages_in += 1
        self._last_rx = time.monotonic()
        try:
            self._on_message(message)
        except MessageError as exc:  # a payload that does not fit its type or this device
            self._bad_frame(f"{MessageType(message.type).name}: {exc}", exc.error_code)
        except DeviceBufferError as exc:
            self.counters.errors += 1
            logger.warning("%s: buffer refused %s: %s", self.describe(), MessageType(message.type).name, exc)

    def _bad_frame(self, problem: str, code: ErrorCode) -> None:
        """Count a rejected frame, answer it with an ERROR, and log (at most once a second)."""
        self.counters.errors += 1
        self._bad_frames += 1
        self.send(Message.make_error(code))
        now = time.monotonic()
        if now - self._bad_logged_at >= BAD_FRAME_LOG_INTERVAL:
            more = f" (and {self._bad_frames - 1} more since the last report)" if self._bad_frames > 1 else ""
            logger.warning(
                "%s: bad frame: %s; answered ERROR %s%s", self.describe(), problem, code.name, more
            )
            self._bad_logged_at = now
            self._bad_frames = 0

    def _on_message(self, message: Message) -> None:
        kind = message.type
        if kind == MessageType.HB_REQ:
            self.send(Message.make_hb_res(message.read_hb_req()))
        elif kind == MessageType.HB_RES:
            message.read_hb_res()
        elif kind == MessageType.SUB_RES:
            self._on_sub_res(message)
        elif kind == MessageType.DEV_DATA:
            # The pump applies every DEV_DATA that fits the device once its buffer is attached. One that
            # reaches Python came before (dropped: the device streams once subscribed), or does not fit:
            # checked here for the exact error.
            if self._scratch is not None:
                self._scratch.update(message)
        elif kind == MessageType.ERROR:
            self._device_error(ErrorCode(message.read_error()))
        else:  # a host -> device message coming from the device: not answered, to avoid echo loops
            self.counters.errors += 1
            logger.debug("%s: ignoring unexpected %s from the device", self.describe(), kind.name)

    def _device_error(self, code: ErrorCode) -> None:
        """Log an ERROR the device reported (at most once a second; the rest are summed up)."""
        self._device_errors += 1
        now = time.monotonic()
        if now - self._device_errors_logged_at >= BAD_FRAME_LOG_INTERVAL:
            more = self._device_errors - 1
            more_text = f" (and {more} more since the last report)" if more else ""
            logger.warning("%s: device reported ERROR %s%s", self.describe(), code.name, more_text)
            self._device_errors_logged_at = now
            self._device_errors = 0

    def _on_sub_res(self, message: Message) -> None:
        _, interval, (device_id, year, random) = message.read_sub_res()
        if self.record is None:
            if not self._sub_res.done():
                self._sub_res.set_result(message)
            return
        uid = int(DeviceUID(device_id, year, random))
        if uid != self.record.uid:
            logger.warning("%s: device now reports uid %#x; reconnecting", self.describe(), uid)
            self.lose("device changed its uid")
            return
        assert self.buffer is not None
        params, requested = self._sub_request
        if interval == 0 and requested > 0 and params:
            # Not the answer to our SUB_REQ: a late answer to a handshake PING, or a duplicate. It
            # must not confirm the subscription (the SUB_REQ may have been lost, and the device would
            # never stream) nor overwrite the one recorded; if one was confirmed, ask again.
            logger.debug("%s: SUB_RES without a subscription; asking again", self.describe())
            self._sub_confirmed = False
            return
        self._apply(message)
        self._sub_confirmed = True

    # -- a buffer whose lock another process holds --

    def _apply(self, message: Message) -> None:
        """Digest ``message`` into the buffer now, or hold it back while another process has the lock.

        Held-back messages keep the newest per type, so that the latest wins;
        they are applied in order as soon as the lock frees. A message that does
        not fit raises as usual.
        """
        assert self.buffer is not None
        if not self._held_back:
            try:
                self.buffer.update(message)
                return
            except DeviceBufferError as exc:
                if not _lock_busy(exc):
                    raise
        self._held_back.pop(message.type, None)
        self._held_back[message.type] = message
        self._stalled(time.monotonic())
        if self._retry_handle is None:
            self._retry_handle = self._loop.call_later(STALL_RETRY_INTERVAL, self._apply_held_back)

    def _apply_held_back(self) -> None:
        self._retry_handle = None
        if self.buffer is None:
            return
        while self._held_back:
            key, message = next(iter(self._held_back.items()))
            try:
                self.buffer.update(message)
            except DeviceBufferError as exc:
                if _lock_busy(exc):
                    self._stalled(time.monotonic())
                    self._retry_handle = self._loop.call_later(STALL_RETRY_INTERVAL, self._apply_held_back)
                    return
                self.counters.errors += 1
                logger.warning(
                    "%s: buffer refused %s: %s", self.describe(), MessageType(message.type).name, exc
                )
            except MessageError:  # checked when it arrived; cannot happen
                self.counters.errors += 1
            del self._held_back[key]
        if self._stalled_since is not None:
            waited = time.monotonic() - self._stalled_since
            if waited >= STALL_LOG_INTERVAL or self._stall_logged_at > self._stalled_since:
                self._log_lock_free(waited)
            self._stalled_since = None

    def _stalled(self, now: float) -> None:
        """Count a stall met here (the pump counts its own); log it at most once a second while it lasts."""
        if self._stalled_since is None:
            self._stalled_since = now
            self.counters.lock_stalls += 1
        elif (
            now - self._stall_logged_at >= STALL_LOG_INTERVAL
            and now - self._stalled_since >= STALL_LOG_INTERVAL
        ):
            self._log_stall(now - self._stalled_since)
            self._stall_logged_at = now

    def _log_stall(self, seconds: float) -> None:
        logger.warning(
            "%s: another process has held the buffer's lock for %.1f s; keeping the newest values "
            "until it lets go (other devices are not affected)",
            self.describe(),
            seconds,
        )

    def _log_lock_free(self, waited: float) -> None:
        logger.info("%s: buffer lock free again after %.1f s; newest values applied", self.describe(), waited)

    # -- output --

    def send(self, message: Message) -> None:
        """Frame and send one message (non-blocking; dropped if the port is not taking data)."""
        if self._port is None:
            return
        data = message.encode()
        if self.bridge.verbose:
            logger.debug("%s: -> %s (%s)", self.describe(), data.hex(" "), MessageType(message.type).name)
        if self._pump.send(self._port, data + DELIM):  # a write error comes back as a LOST event
            self.counters.messages_out += 1


# ---- the bridge ---------------------------------------------------------------------------------


class Bridge:
    """Watch ports, run one :class:`PortConnection` per port, and keep device records.

    Args:
        store: The store that opens every device buffer (shared memory).
        ports: Exact port paths to serve whenever they exist.
        globs: Patterns of port paths to serve.
        stats_path: Where to write the ``--stats`` JSON (None: no stats file).
        verbose: Log every frame in and out.
        unplugged_grace: Seconds a disconnected device's buffer is kept (:data:`UNPLUGGED_GRACE`).
        unplugged_cap: Most disconnected devices kept at once (:data:`UNPLUGGED_CAP`).
    """

    def __init__(
        self,
        store: BufferStore,
        ports: Sequence[str] = (),
        globs: Sequence[str] = (),
        *,
        stats_path: str | None = None,
        verbose: bool = False,
        unplugged_grace: float = UNPLUGGED_GRACE,
        unplugged_cap: int = UNPLUGGED_CAP,
    ) -> None:
        self.store = store
        self.pump = FramePump(forward_all=verbose)
        """The reader thread that serves every port's frames."""
        self.pump_ports: dict[int, PortConnection] = {}
        """The connection of each port id of :attr:`pump`."""
        self.ports = list(ports)
        self.globs = list(globs)
        self.stats_path = stats_path
        self.verbose = verbose
        self.records: dict[int, DeviceRecord] = {}
        """Every device connected, or disconnected and not released yet, by UID."""
        self.unplugged_grace = unplugged_grace
        self.unplugged_cap = unplugged_cap
        self._held: dict[int, BufferStore] = {}
        """The store of each device buffer the bridge holds (one each, so that it can let one go)."""
        self._left_behind: dict[str, int] = {}
        """Segments of released devices that another process mapped (name: inode): unlinked once unmapped."""
        self._release_handle: asyncio.TimerHandle | None = None
        self.owners: dict[int, PortConnection] = {}
        self.claims: dict[int, int] = {}
        """UID -> the pid of the producer this bridge claimed that device's buffer from (logged once)."""
        """The connection serving each connected UID."""
        self.connections: dict[Identity, PortConnection] = {}
        """The connection of each port being served, by the device its path names."""
        self._tasks: dict[Identity, asyncio.Task[None]] = {}
        self._retry_at: dict[Identity, float] = {}
        self._open_errors: dict[str, str] = {}
        self._waiting_for: set[str] = set()
        """Explicit ports that do not exist (each logged once until it appears)."""
        self._unmatched: list[str] = []
        """The globs that matched no path at the last scan."""
        self._unknown_devices: dict[str, str] = {}
        """Ports whose device is of a type not in the catalog (until their connection ends): what it is."""
        self._idle_since = time.monotonic()
        """Since when no device has been connected (``time.monotonic()``)."""
        self._idle_report: tuple[str, ...] | None = None
        """What the last report of no connected devices said (None: none since a device was connected)."""
        self._rescan: asyncio.Event | None = None
        """Set to make the watcher scan now (while it runs)."""
        self._opened_at: dict[Identity, float] = {}
        """When each connection started (``time.monotonic()``): a port gets time to answer PING."""
        self.commanders = CommanderWatch(self._commander_ended)
        """The processes whose commands are in force on the devices served (a pidfd each)."""

    def _commander_ended(self, who: Commander) -> None:
        for connection in list(self.owners.values()):
            connection.commander_ended(who)

    # -- devices --

    def attach(
        self, connection: PortConnection, uid: int, type_name: str, buffer: DeviceBuffer
    ) -> DeviceRecord:
        """Record that ``connection`` now serves device ``uid``; its counters join the device's."""
        record = self.records.get(uid)
        if record is None:
            record = self.records[uid] = DeviceRecord(uid, type_name, connection.path, buffer)
        record.port = connection.path
        record.connected = True
        record.counters.add(connection.counters)
        connection.counters = record.counters
        record.disconnected_at = None
        self.owners[uid] = connection
        record.refresh()
        return record

    def detach(self, connection: PortConnection) -> None:
        """Record that ``connection`` lost its device: mark the buffer invalid (not unlinked)."""
        record = connection.record
        if record is None or self.owners.get(record.uid) is not connection:
            return
        record.refresh()
        del self.owners[record.uid]
        record.connected = False
        record.disconnected_at = time.monotonic()
        with contextlib.suppress(RuntimeBaseException):
            record.buffer.stop_serving()  # needs no lock: invalid at once
        self.release_unplugged()

    # -- holding and releasing device buffers --

    def open_buffer(self, uid: int) -> DeviceBuffer:
        """The buffer of device ``uid``: the one the bridge holds, or opened (created if need be) now.

        Each is opened through a store of its own, so that releasing one unmaps it.

        Raises:
            KeyError: No device type of the catalog has this UID's device id.
            RuntimeBaseException: The segment cannot be opened (/dev/shm full, a foreign file...).
        """
        held = self._held.get(uid)
        if held is None:
            held = BufferStore(self.store.catalog, shared=self.store.shared)
            try:
                held.get_or_open(uid)
            except BaseException:
                held.close()
                raise
            self._held[uid] = held
        return held.get_or_open(uid)

    def release_unserved(self, uid: int) -> None:
        """Let go of a buffer opened for a device the bridge could not serve (no record of it kept)."""
        if uid not in self.records and uid not in self.owners:
            held = self._held.pop(uid, None)
            if held is not None:
                held.close()

    def release_unplugged(self) -> None:
        """Release the disconnected devices gone for longer than the grace, and the longest gone beyond the
        cap; check the segments left behind; schedule the next look."""
        now = time.monotonic()
        gone = sorted(
            (record.disconnected_at, uid)
            for uid, record in self.records.items()
            if not record.connected and record.disconnected_at is not None
        )
        expired = [uid for since, uid in gone if now - since >= self.unplugged_grace]
        excess = max(0, len(gone) - len(expired) - self.unplugged_cap)
        released: dict[str, int] = {}
        for uid in expired:
            released.update(self._release(uid, f"gone for more than {self.unplugged_grace:g} s"))
        for _, uid in gone[len(expired) : len(expired) + excess]:
            released.update(self._release(uid, f"more than {self.unplugged_cap} devices unplugged"))
        self._unlink_unmapped(released)
        if self._release_handle is not None:
            self._release_handle.cancel()
            self._release_handle = None
        waits = [since + self.unplugged_grace - now for since, uid in gone if uid in self.records]
        if self._left_behind:
            waits.append(max(self.unplugged_grace, LEFT_BEHIND_CHECK_MIN))
        if waits:
            with contextlib.suppress(RuntimeError):  # no running loop (the bridge is shutting down)
                self._release_handle = asyncio.get_running_loop().call_later(
                    max(0.01, min(waits)), self.release_unplugged
                )

    def _release(self, uid: int, why: str) -> dict[str, int]:
        """Forget a disconnected device and unmap its buffer; ``{segment: inode}`` to unlink if unmapped."""
        record = self.records.pop(uid)
        held = self._held.pop(uid, None)
        buffer = record.buffer
        name, unlink = buffer.name, False
        try:
            inode = os.stat(os.path.join(SHM_DIR, name)).st_ino if self.store.shared else None
            # Ours to remove only if nobody took it over meanwhile (a producer of its own).
            unlink = inode is not None and buffer.producer_pid is None and not buffer.closed
        except (OSError, RuntimeBaseException):
            inode = None
        if held is not None:
            held.close()
        buffer.close()
        logger.info("%s %#x: unplugged buffer released (%s)", record.type_name, uid, why)
        return {name: inode} if unlink and inode is not None else {}

    def _unlink_unmapped(self, released: dict[str, int]) -> None:
        """Unlink the released segments (and those left behind before) that no other process maps."""
        candidates = {**self._left_behind, **released}
        held = {buffer.name for buffer in (record.buffer for record in self.records.values())}
        candidates = {name: inode for name, inode in candidates.items() if name not in held}
        self._left_behind = {}
        if not candidates:
            return
        mapped = mapped_elsewhere(set(candidates.values()))
        for name, inode in candidates.items():
            try:
                if os.stat(os.path.join(SHM_DIR, name)).st_ino != inode:
                    continue  # unlinked and made again by someone else: not ours
            except OSError:
                continue
            if inode in mapped:
                if len(self._left_behind) < LEFT_BEHIND_LIMIT:
                    self._left_behind[name] = inode
                continue
            with contextlib.suppress(RuntimeBaseException):
                Buffer.unlink(name)

    def report_open_error(self, path: str, exc: BaseException) -> None:
        """Log a port that cannot be opened, once per distinct error (it is retried quietly)."""
        text = str(exc)
        if self._open_errors.get(path) != text:
            logger.error("port %s: cannot open: %s", path, text)
            self._open_errors[path] = text
        else:
            logger.debug("port %s: still cannot open: %s", path, text)

    def clear_open_error(self, path: str) -> None:
        """Forget the open error of a port that opened."""
        self._open_errors.pop(path, None)

    def note_unknown_device(self, path: str, device_id: int, uid: int) -> None:
        """Remember that the device on ``path`` is of a type the catalog lacks (for :meth:`port_outcomes`)."""
        self._unknown_devices[path] = f"a device of unknown type (device id {device_id}, uid {uid:#x})"
        if self._rescan is not None:  # the report of what the ports hold changes
            self._rescan.set()

    # -- what the ports hold, when no device connects --

    def port_outcomes(self, present: Mapping[Identity, str]) -> list[str]:
        """What the bridge found on the ports it watches, one phrase each.

        ``present`` is what :meth:`discover` found. Globs that match nothing,
        explicit ports that do not exist, ports that cannot be opened, ports
        that never answered PING, devices of a type not in the catalog; a port
        whose device is connected says nothing.
        """
        outcomes = [f"nothing matches {pattern}" for pattern in self._unmatched]
        outcomes += [f"{path} does not exist" for path in self.ports if path in self._waiting_for]
        for identity, path in sorted(present.items(), key=lambda item: item[1]):
            connection = self.connections.get(identity)
            if connection is not None and connection.record is not None:
                continue
            if connection is not None and connection.path in self._unknown_devices:
                outcomes.append(f"{path}: {self._unknown_devices[connection.path]}, not in the catalog")
            elif connection is not None and path not in self._open_errors:
                outcomes.append(f"{path}: no answer to PING")
            elif path in self._open_errors:
                outcomes.append(f"{path}: cannot open: {self._open_errors[path]}")
            else:
                outcomes.append(f"{path}: closed, to be tried again")
        return outcomes

    def _report_idle(self, present: Mapping[Identity, str]) -> None:
        """Say once what the ports hold when no device has connected for a while; again when that changes.

        Called by every scan. The report waits until no device has been
        connected for :data:`NO_DEVICE_REPORT_DELAY` seconds, and until every
        open port has had as long to answer PING (an Arduino resets when its
        port opens, and takes a second or two to boot).
        """
        now = time.monotonic()
        if self.owners:
            self._idle_since = now
            self._idle_report = None
            return
        if now - self._idle_since < NO_DEVICE_REPORT_DELAY:
            return
        for identity, connection in self.connections.items():  # a port still being identified: wait
            opened = self._opened_at.get(identity, now)
            if connection.record is None and connection.path not in self._unknown_devices:
                if now - opened < NO_DEVICE_REPORT_DELAY:
                    return
        outcomes = tuple(self.port_outcomes(present))
        if outcomes == self._idle_report:
            return
        self._idle_report = outcomes
        watched = ", ".join([*self.ports, *self.globs]) or "nothing"
        logger.warning(
            "bridge: no Smart Device connected for %g s; watching %s: %s",
            NO_DEVICE_REPORT_DELAY,
            watched,
            "; ".join(outcomes) or "no port",
        )

    # -- ports --

    def discover(self) -> dict[Identity, str]:
        """The devices to serve now: each one's identity and the first path naming it.

        Explicit ports come first, then glob matches in sorted order; a device
        reachable through several paths (a symlink and its target) is served once.
        """
        candidates = list(self.ports)
        self._unmatched = []
        for pattern in self.globs:
            matches = sorted(glob.glob(pattern))
            if not matches:
                self._unmatched.append(pattern)
            candidates.extend(matches)
        found: dict[Identity, str] = {}
        for path in candidates:
            identity = _identity(path)
            if identity is not None:
                found.setdefault(identity, path)
                if path in self._waiting_for:
                    self._waiting_for.discard(path)
                    logger.info("port %s: appeared", path)
            elif path in self.ports and path not in self._waiting_for:
                self._waiting_for.add(path)
                logger.info("port %s: does not exist (yet); waiting for %s", path, path)
        return found

    def scan(self) -> None:
        """Close connections whose device vanished; start connections on new devices.

        Connections are keyed by the device a path names, not by the path, so a
        link that is renamed or replaced by another link to the same device does
        not interrupt the connection.
        """
        present = self.discover()
        for identity, connection in list(self.connections.items()):
            if identity not in present:
                connection.lose("port vanished")
        now = time.monotonic()
        for identity, path in present.items():
            if identity in self.connections or self._retry_at.get(identity, 0.0) > now:
                continue
            self._retry_at.pop(identity, None)
            connection = PortConnection(self, path, identity)
            task = asyncio.get_running_loop().create_task(connection.run(), name=f"port {path}")
            self.connections[identity] = connection
            self._tasks[identity] = task
            self._opened_at[identity] = now
            task.add_done_callback(functools.partial(self._finished, connection))
        self._report_idle(present)

    def _finished(self, connection: PortConnection, _task: asyncio.Task[None]) -> None:
        if self._rescan is not None:  # look at the port again soon: the device may answer again
            asyncio.get_running_loop().call_later(RESCAN_DELAY, self._rescan.set)
        if self.connections.get(connection.identity) is connection:
            del self.connections[connection.identity]
            self._tasks.pop(connection.identity, None)
            self._unknown_devices.pop(connection.path, None)
            self._opened_at.pop(connection.identity, None)
        if connection.retry_delay > 0:
            self._retry_at[connection.identity] = time.monotonic() + connection.retry_delay

    def _directories(self) -> tuple[set[str], bool]:
        """The directories to watch for the ports asked for, and whether watching them tells everything."""
        directories = set()
        complete = True
        for pattern in [*self.ports, *self.globs]:
            found = _watchable_directory(pattern)
            if found is None:
                complete = False
            else:
                directories.add(found)
        for connection in self.connections.values():  # where a link leads: its device node may go alone
            target = _watchable_directory(os.path.realpath(connection.path))
            if target is not None:
                directories.add(target)
        return directories, complete

    def _next_scan(self, interval: float) -> float:
        """Seconds until the next scan must happen anyway: ``interval``, or sooner for a retry, or for
        the report of what the ports hold (see :meth:`_report_idle`) when it may change."""
        now = time.monotonic()
        due = [now + interval, *self._retry_at.values()]
        if not self.owners:
            due.append(self._idle_since + NO_DEVICE_REPORT_DELAY)
            due += [
                self._opened_at.get(identity, now) + NO_DEVICE_REPORT_DELAY
                for identity, connection in self.connections.items()
                if connection.record is None and connection.path not in self._unknown_devices
            ]
        return max(0.01, min(t + 0.01 for t in due if t > now) - now)

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        self._rescan = rescan = asyncio.Event()
        watch = _DirectoryWatch.create()
        if watch is not None:

            def changed() -> None:
                watch.drain()
                rescan.set()

            loop.add_reader(watch.fd, changed)
        try:
            while True:
                rescan.clear()
                try:
                    self.scan()
                except Exception:
                    logger.exception("scanning for ports failed")
                directories, complete = self._directories()
                told = watch is not None and watch.watch(directories) and complete
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        rescan.wait(), self._next_scan(SAFETY_SCAN_INTERVAL if told else POLL_INTERVAL)
                    )
                if rescan.is_set():
                    await asyncio.sleep(0.01)  # a device node and its links come in a burst: one scan
        finally:
            self._rescan = None
            if watch is not None:
                loop.remove_reader(watch.fd)
                watch.close()

    # -- stats --

    def stats(self) -> dict[str, Any]:
        """The ``--stats`` document: one entry per device held (connected, or unplugged and not released)."""
        for connection in self.connections.values():
            connection.sync_counters()
        devices = []
        for record in sorted(self.records.values(), key=lambda record: (record.type_name, record.uid)):
            record.refresh()
            devices.append(record.to_json())
        return {"devices": devices}

    def write_stats(self) -> None:
        """Write the stats file atomically (temporary file, then rename), if one was asked for."""
        if self.stats_path is None:
            return
        try:
            write_json_atomically(self.stats_path, self.stats())
        except (OSError, ValueError) as exc:
            logger.error("cannot write stats to %s: %s", self.stats_path, exc)

    async def _write_stats_periodically(self) -> None:
        while True:
            self.write_stats()
            await asyncio.sleep(STATS_INTERVAL)

    # -- running --

    def _on_pump_events(self) -> None:
        for port, event, data in self.pump.take_events():
            connection = self.pump_ports.get(port)
            if connection is not None:
                connection.on_pump_event(event, data)

    async def _serve_until(self, stop: asyncio.Event, loop: asyncio.AbstractEventLoop) -> None:
        watched = ", ".join([*self.ports, *self.globs]) or "nothing"
        logger.info("bridge: watching %s", watched)
        self._idle_since = time.monotonic()
        loop.add_reader(self.pump.fileno(), self._on_pump_events)
        background = [loop.create_task(self._watch(), name="port watcher")]
        if self.stats_path is not None:
            background.append(loop.create_task(self._write_stats_periodically(), name="stats"))
        try:
            await stop.wait()
            logger.info("bridge: shutting down")
        finally:
            for connection in self.owners.values():  # safety: nothing keeps actuating unattended
                connection.send(Message.make_dev_disable())
            tasks = background + list(self._tasks.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for record in self.records.values():
                if record.connected:  # a task that never got to clean up
                    record.connected = False
                    with contextlib.suppress(RuntimeBaseException):
                        record.buffer.stop_serving()
            loop.remove_reader(self.pump.fileno())
            if self._release_handle is not None:
                self._release_handle.cancel()
                self._release_handle = None
            for held in self._held.values():  # segments stay
                held.close()
            self._held.clear()
            self.commanders.close()
            self.write_stats()
            self.pump.close()

    async def serve(self, stop: asyncio.Event | None = None) -> int:
        """Serve ports until ``stop`` is set or SIGINT/SIGTERM arrives; then shut down cleanly."""
        loop = asyncio.get_running_loop()
        stop = stop or asyncio.Event()
        with stop_on_signals(stop, loop):
            await self._serve_until(stop, loop)
        return 0


# ---- command line -------------------------------------------------------------------------------

DESCRIPTION = """\
Serve Smart Devices into shared memory.

The bridge opens each serial port (a real USB device, or a pseudo-terminal of
'runtime emulate'), learns which device is there from its subscription
response, creates the device's buffer in shared memory and then pumps
messages both ways: DEV_DATA into the buffer, pending reads and writes out to
the device, heartbeats to notice a device that went silent (its buffer is then
marked invalid). It exits cleanly on Ctrl-C or SIGTERM.
"""

EPILOG = """\
examples:
  $ runtime bridge --port /dev/ttyACM0 --port /dev/ttyACM1
  $ runtime bridge --glob '/dev/ttyACM*' --stats /tmp/bridge.json --verbose
  $ runtime bridge --glob '/tmp/devs/*' --catalog my-catalog.yaml   # runtime emulate ... --link /tmp/devs
"""

DEFAULT_LOG_LEVEL = "INFO"
"""The bridge logs one line per event (connects, disconnects, bad frames) unless told otherwise."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``runtime bridge`` options to ``parser``."""
    parser.add_argument(
        "--port",
        action="append",
        default=[],
        metavar="PATH",
        help="serve this serial port (exact path; repeatable); it may come and go",
    )
    parser.add_argument(
        "--glob",
        action="append",
        default=[],
        metavar="PATTERN",
        help=f"serve every port matching this pattern, watched for devices appearing and disappearing "
        f"(repeatable; default {DEFAULT_GLOB} when neither --port nor --glob is given)",
    )
    add_catalog_option(parser)
    parser.add_argument(
        "--stats",
        metavar="FILE",
        default=None,
        help="write per-device statistics as JSON to FILE every second and at exit",
    )
    parser.add_argument(
        "--unplugged-grace",
        type=_non_negative(float),
        default=UNPLUGGED_GRACE,
        metavar="SECONDS",
        help=f"keep a disconnected device's buffer this long: if it comes back by then, it gets the same "
        f"segment; then the buffer is released, its segment removed unless another process maps it "
        f"(default {UNPLUGGED_GRACE:g})",
    )
    parser.add_argument(
        "--unplugged-cap",
        type=_non_negative(int),
        default=UNPLUGGED_CAP,
        metavar="N",
        help=f"keep at most N disconnected devices' buffers; beyond, the longest gone is released first "
        f"(default {UNPLUGGED_CAP})",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every frame sent and received")


def _non_negative(kind: type[T]) -> Callable[[str], T]:
    """An argparse type: a number of ``kind`` (int or float), finite and not negative."""

    def parse(text: str) -> T:
        try:
            value = kind(text)  # type: ignore[call-arg]
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not 0 <= value < math.inf:  # type: ignore[operator]
            raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
        return value

    return parse


def main(args: argparse.Namespace) -> int:
    """Run the bridge until SIGINT/SIGTERM; return the exit code (0 clean, 2 bad catalog)."""
    verbose = bool(getattr(args, "verbose", False))
    configure_logging(debug=[logger.name] if verbose else [])  # --verbose: every frame
    try:
        catalog: Mapping[str, type[Buffer]] = catalog_module.load(args.catalog)
    except (RuntimeBaseException, ValueError, OSError) as exc:
        logger.error("cannot load the catalog: %s", exc)
        return 2
    ports: list[str] = list(args.port or [])
    globs: list[str] = list(args.glob or [])
    if not ports and not globs:
        globs = [DEFAULT_GLOB]
    with BufferStore(catalog) as store:
        bridge = Bridge(
            store,
            ports,
            globs,
            stats_path=args.stats,
            verbose=verbose,
            unplugged_grace=getattr(args, "unplugged_grace", UNPLUGGED_GRACE),
            unplugged_cap=getattr(args, "unplugged_cap", UNPLUGGED_CAP),
        )
        try:
            return asyncio.run(bridge.serve())
        except KeyboardInterrupt:  # a second Ctrl-C during shutdown
            return 130


if __name__ == "__main__":  # python -m runtime.tools.bridge ...: the same as runtime bridge ...
    import sys

    from .cli import main as runtime_main

    raise SystemExit(runtime_main(["bridge", *sys.argv[1:]]))
