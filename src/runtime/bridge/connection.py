"""One serial port of the bridge: its :class:`PortConnection`, and what the bridge records of its device.

A :class:`PortConnection` identifies the Smart Device on its port (PING until
a SUB_RES names it), serves the device's buffer through the bridge's frame
pump, heartbeats, and confirms the subscription (SUB_REQ until a SUB_RES
answers it). What other processes request through the buffer (``write()``,
``read()``) the pump's writer thread sends and confirms without Python
(:meth:`~runtime.link.FramePump.serve_writes`: at most one batch per
``write_interval``; writes of parameters the device reports are resent up to
:data:`WRITE_RETRIES` times): the connection hears only of a new commander, a
change of the disabled flag, and writes given up. It never waits for a
buffer's lock, and puts actuators back to their safe values when their
commander ends, their ``command_timeout`` passes, or the robot is disabled
(then asks the pump to send them at once).
:class:`DeviceRecord` and :class:`Counters` are what the bridge keeps of each
device, connected or not (its ``--stats``). How the parts fit together:
:mod:`runtime.bridge.manager`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import math
import os
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

import serial

from ..buffer import DeviceBuffer, DeviceBufferError, DeviceUID
from ..commands import Commander
from ..exception import RuntimeBaseException
from ..link import KNOWN_COMMANDERS, PumpCounters, PumpEvent
from ..messaging import DELIM, ErrorCode, Message, MessageError, MessageType
from ..processes import flock_holder
from ..values import jsonable
from .watch import Identity

if TYPE_CHECKING:
    from .manager import Bridge

__all__ = [
    "BAUD_RATE",
    "PING_INTERVAL",
    "SILENCE_HEARTBEATS",
    "SUB_RETRY_INTERVAL",
    "WRITE_CONFIRM_TIMEOUT",
    "WRITE_RETRIES",
    "Counters",
    "DeviceRecord",
    "PortConnection",
    "logger",
]

logger = logging.getLogger("runtime.bridge")
"""The bridge's one logger (``runtime bridge --verbose`` shows its DEBUG lines: every frame)."""

T = TypeVar("T")

BAUD_RATE = 115200
"""Serial speed of every Smart Device."""
PING_INTERVAL = 0.2
"""Seconds between PINGs while waiting for a device to introduce itself."""
SUB_RETRY_INTERVAL = 1.0
"""Seconds before a subscription request that got no SUB_RES is sent again."""
SILENCE_HEARTBEATS = 3
"""A device that sent nothing valid for this many heartbeat intervals is treated as gone."""
RETRY_DELAY = 2.0
"""Seconds before a port that could not be opened (or whose task failed) is tried again."""
CLAIM_RETRY_DELAY = 0.5
"""Seconds after a first claim (see PortConnection._claim) before serving is tried again."""
MAX_CLAIMS_LOGGED = 1024
"""The most devices whose claim is remembered (so logged once)."""
CANCEL_AGAIN_INTERVAL = 0.5
"""Seconds a connection waits for its cancelled work to end before it cancels it again."""
STALL_RETRY_INTERVAL = 0.005
"""Seconds between two attempts to apply values held back by a buffer lock another process holds."""
STALL_LOG_INTERVAL = 1.0
"""Seconds between two log lines about one buffer's lock being held by another process."""
BAD_FRAME_LOG_INTERVAL = 1.0
"""Seconds between two log lines about bad frames on one port (the rest are summed up)."""
WRITE_CONFIRM_TIMEOUT = 0.25
"""Seconds a write waits for the device's DEV_DATA to confirm it before it is sent again
(at least three subscription intervals)."""
LOCK_RETRY_DELAY = 0.005
"""Seconds before ending a dead commander's commands is tried again when the buffer's lock was busy."""
WRITE_RETRIES = 8
"""Times an unconfirmed write is sent again before the bridge gives up on it (so it is retried for
about two seconds: a link losing a quarter of the frames loses all nine copies less than once in 100 000)."""


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


def _next_tick(now: float, interval: float) -> float:
    """The first multiple of ``interval`` after ``now``: every device's periodic work falls on one grid,
    so the bridge wakes once per tick for all of them."""
    return (math.floor(now / interval) + 1) * interval


def _lock_taken(exc: BaseException) -> bool:
    """Whether opening a port failed because another process holds its lock (an flock: another bridge)."""
    return getattr(exc, "errno", None) in (errno.EAGAIN, errno.EWOULDBLOCK) and "lock" in str(exc)


def _lock_busy(exc: DeviceBufferError) -> bool:
    """Whether a buffer operation failed only because another process holds the lock."""
    return exc.context.get("errno") in (errno.EBUSY, errno.ETIMEDOUT)


async def _cancel(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait until it ended; raise what it raised (other than its cancellation).

    A task still running after :data:`CANCEL_AGAIN_INTERVAL` is cancelled again: an
    ``asyncio.wait_for`` of Python 3.11 (:func:`runtime.notify.wait_async`'s) drops a cancellation
    that comes as its wait ends, and the task would go on.
    """
    while not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait({task}, timeout=CANCEL_AGAIN_INTERVAL)
    failure = None if task.cancelled() else task.exception()
    if failure is not None:
        raise failure


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
        """A process-local buffer of the device's type that reads the values of frames for Python."""
        self._confirmable: frozenset[str] = frozenset()
        """Writeable parameters the device reports in its subscribed DEV_DATA: their writes are confirmed."""
        self._held_back: dict[int, Message] = {}
        """Messages for the buffer (SUB_RES: the pump holds DEV_DATA back itself) that found its lock
        taken: the newest per type."""
        self._stalled_since: float | None = None
        self._stall_logged_at = -math.inf
        self._retry_handle: asyncio.TimerHandle | None = None
        self._disabled = False
        """Whether this device was told DEV_DISABLE for the robot's disabled state."""
        self._safety_due = False
        """Safe values are pending: the pump sends them now, not after write_interval."""
        self._enforce_handle: asyncio.TimerHandle | None = None
        """A retry of :meth:`_enforce` after the buffer's lock was busy."""
        self._wakeup: asyncio.Future[None] | None = None
        """What :meth:`_service` sleeps on besides its timer (:meth:`_poke` wakes it)."""

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
            if self.bridge.stopping or not self._open():  # never a port opened once the bridge stops
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
        try:  # exclusive: an flock on the port, which a second bridge finds taken (processes.flock_holder)
            self._serial = serial.Serial(self.path, BAUD_RATE, timeout=0, exclusive=True)
        except (serial.SerialException, OSError, ValueError) as exc:
            if _lock_taken(exc):
                self.bridge.report_port_taken(self.path, flock_holder(self.path))
            else:
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
                await _cancel(task)
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
        # From now on the pump's writer thread sends the buffer's pending reads and writes.
        self._pump.serve_writes(self._port, float(type(buffer).write_interval))
        self._configure_confirmation()
        request = buffer.make_sub_req()
        self._sub_request = request.read_sub_req()
        self.send(request)
        logger.info("%s: connected", self.describe())
        return True

    def _configure_confirmation(self) -> None:
        """Tell the pump which writes to confirm, how long to wait for each, and whether DEV_DATA flows."""
        buffer = self.buffer
        if buffer is None or self._port is None:
            return
        ids = 0
        for name in self._confirmable:
            ids |= 1 << buffer.params[name].id
        self._pump.confirm_writes(
            self._port, ids, self._confirm_timeout(), WRITE_RETRIES, subscribed=self._sub_confirmed
        )

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

        The safe values are pending writes: the pump sends them at once (not after write_interval).
        """
        if self.buffer is None or self._closed.done() or self._port is None:
            return
        try:
            if self._end_commands(who):
                self._pump.send_writes_now(self._port)
        except DeviceBufferError:  # the lock is busy: try again shortly (never wait for it)
            self._loop.call_later(LOCK_RETRY_DELAY, self.commander_ended, who)

    def _command_deadline(self, buffer: DeviceBuffer, now: float) -> float | None:
        """When the command timeout of this device expires (monotonic), if a command runs."""
        timeout = type(buffer).command_timeout
        if timeout is None or not buffer._access.commanders():
            return None
        return now + max(0.0, buffer._access.last_command + timeout - time.time())

    def _enforce(self) -> bool:
        """End the commands that must end, have the pump send their safe values at once, and tell it
        which commanders were checked (its writes wait while the buffer names one it was not told of).

        Returns False when it must be tried again soon (the buffer's lock was busy).
        """
        buffer = self.buffer
        if buffer is None or self._port is None or self._closed.done():
            return True
        try:
            self._enforce_commands(buffer)
            commanders = set(buffer._access.commanders().values())
            live = sorted(who for who in commanders if self.bridge.commanders.alive(who))
            # Every commander the bridge watches (alive) is checked for this device too: a process that
            # commanded another device, or this one before its commands ended, writes without waiting.
            # Not with a command timeout: a command that starts must be reported, to wake _service
            # at its deadline.
            timed = type(buffer).command_timeout is not None
            others = [] if timed else sorted(self.bridge.commanders.watched)
            checked = (live + [who for who in others if who not in live])[:KNOWN_COMMANDERS]
        except DeviceBufferError as exc:
            if _lock_busy(exc):
                self._stalled(time.monotonic())
            else:
                self.counters.errors += 1
                logger.warning("%s: cannot end commands: %s", self.describe(), exc)
            return False
        except RuntimeBaseException as exc:
            self.counters.errors += 1
            logger.warning("%s: cannot end commands: %s", self.describe(), exc)
            return False
        if self._safety_due:
            self._safety_due = False
            self._pump.send_writes_now(self._port)
        self._pump.commanders_checked(self._port, checked)
        return True

    def _enforce_soon(self) -> None:
        """Run :meth:`_enforce` now (a pump event asked), and again shortly while the lock is busy."""
        self._enforce_handle = None
        if not self._enforce() and self._enforce_handle is None and not self._closed.done():
            self._enforce_handle = self._loop.call_later(LOCK_RETRY_DELAY, self._enforce_soon)
        self._poke()

    def _poke(self) -> None:
        """Wake :meth:`_service` to look at its deadlines again (a command may have started)."""
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    async def _service(self) -> None:
        """The periodic work of a connected device: heartbeats, silence, subscription, command timeout.

        Writes and reads do not pass here: the pump's writer thread sends them
        (:meth:`~runtime.link.FramePump.serve_writes`), at most one batch per
        ``write_interval``, and confirms them. This loop sleeps until the next
        heartbeat, subscription retry, silence check or command timeout (it
        wakes at ``last_command + command_timeout`` and reads it again then),
        or until a pump event pokes it (a new commander).
        """
        assert self.buffer is not None
        buffer = self.buffer
        buffer_type = type(buffer)
        heartbeat_interval = float(buffer_type.heartbeat_interval)
        silence_limit = SILENCE_HEARTBEATS * heartbeat_interval
        now = time.monotonic()
        next_heartbeat = _next_tick(now, heartbeat_interval)
        next_sub_req = now + SUB_RETRY_INTERVAL
        while True:
            now = time.monotonic()
            last_rx = self.last_rx()
            if now - last_rx > silence_limit:
                logger.warning("%s: silent for %.1f s", self.describe(), now - last_rx)
                self.lose(f"silent for {silence_limit:g} s")
                return
            enforced = self._enforce()
            if not self._sub_confirmed and now >= next_sub_req:
                try:
                    self.send(buffer.make_sub_req())
                except RuntimeBaseException as exc:
                    self.counters.errors += 1
                    logger.warning("%s: cannot make SUB_REQ: %s", self.describe(), exc)
                next_sub_req = now + SUB_RETRY_INTERVAL
            if now >= next_heartbeat:
                self.send(Message.make_hb_req(self._hb_id))
                self._hb_id = (self._hb_id + 1) & 0xFF
                next_heartbeat = _next_tick(now, heartbeat_interval)
            due = [next_heartbeat, last_rx + silence_limit + 0.001]
            if not self._sub_confirmed:
                due.append(next_sub_req)
            if not enforced:
                due.append(now + LOCK_RETRY_DELAY)
            with contextlib.suppress(DeviceBufferError):
                expiry = self._command_deadline(buffer, now)
                if expiry is not None:
                    due.append(expiry)
            sleep = max(0.001, min(due) - time.monotonic())  # never a busy loop that starves the readers
            self._wakeup = self._loop.create_future()
            try:
                await asyncio.wait({self._wakeup}, timeout=sleep)
            finally:
                self._wakeup = None

    # -- writes the device has not confirmed --
    #
    # The protocol has no acknowledgements, and a DEV_WRITE lost on the way leaves the device with its
    # old value for good. The device reports its writeable parameters in its subscribed DEV_DATA, so
    # that report confirms a write: a value equal to the one written confirms it; a value the device
    # may still report without having seen the write (the one before, or a write this one replaced)
    # does not; any other value means the device changes the parameter itself (an encoder position
    # while the motor turns), so the write arrived or cannot be confirmed: resending it would only
    # disturb it. The pump's writer thread watches each write it sends (its reader thread judges each
    # DEV_DATA), sends an unconfirmed one again every confirm timeout, at most WRITE_RETRIES times,
    # counting only while the subscription is confirmed (before, no DEV_DATA could confirm anything),
    # then reports it here (PumpEvent.GAVE_UP) to be logged and counted. Writes of parameters the
    # device does not report (write-only ones) go out once, as before.

    def _confirm_timeout(self) -> float:
        assert self.buffer is not None
        return max(WRITE_CONFIRM_TIMEOUT, 3 * self.buffer.interval)

    def _gave_up(self, frame: bytes) -> None:
        """Log and count the writes the pump gave up on (a DEV_WRITE frame of their values)."""
        try:
            message = Message.decode(frame)
        except MessageError:  # cannot happen: the pump built it
            self.counters.errors += 1
            return
        values: dict[str, Any] = {}
        if self._scratch is not None:
            with contextlib.suppress(RuntimeBaseException, MessageError):
                self._scratch.update(message)
                values = self._scratch.get_write()
        for name, value in sorted(values.items()):
            self.counters.writes_unconfirmed += 1
            logger.warning(
                "%s: no DEV_DATA confirmed %s = %r after %d resends; giving up",
                self.describe(),
                name,
                value,
                WRITE_RETRIES,
            )

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
        self._held_back.clear()
        if self._enforce_handle is not None:
            self._enforce_handle.cancel()
            self._enforce_handle = None
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
        self.counters.writes_resent += now.writes_resent - before.writes_resent
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
            self._log_sent(data)
        elif event in (PumpEvent.COMMANDER, PumpEvent.DISABLED):
            self._enforce_soon()
        elif event == PumpEvent.GAVE_UP:
            assert isinstance(data, bytes)
            self._gave_up(data)
        elif event == PumpEvent.PACK_ERROR:
            self.counters.errors += 1
            logger.warning("%s: cannot send pending writes: %s", self.describe(), data)

    def _log_sent(self, frame: bytes) -> None:
        """Log a frame the pump sent (``--verbose``): a heartbeat answer, or what a writer asked."""
        try:
            kind = MessageType(Message.decode(frame).type)
        except (MessageError, ValueError):
            kind = None
        if kind == MessageType.HB_RES:
            logger.debug("%s: -> %s (answered by the pump)", self.describe(), frame.hex(" "))
        else:
            name = kind.name if kind is not None else "?"
            logger.debug("%s: -> %s (%s, sent by the pump)", self.describe(), frame.hex(" "), name)

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
            if self._sub_confirmed:
                self._sub_confirmed = False
                self._configure_confirmation()
            return
        self._apply(message)
        if not self._sub_confirmed:
            self._sub_confirmed = True
            self._configure_confirmation()

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
