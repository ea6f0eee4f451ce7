"""The Smart Device manager: the :class:`Bridge`, which watches the ports and serves a connection on each.

Smart Devices are USB serial boards; the bridge finds their ports, identifies
each device, keeps its shared-memory buffer (:mod:`runtime.buffer`) in step with
it, and forwards what other processes request through the buffer. It is the one
process that talks to the serial ports; everything else only sees buffers.

How it is organised (one asyncio loop, and the frame pump's reader and writer threads):

* A *watcher* looks for the ports asked for (exact ``--port`` paths and
  ``--glob`` patterns, default ``/dev/ttyACM*``) whenever their directories
  change (inotify), and every :data:`SAFETY_SCAN_INTERVAL` seconds in case
  the OS did not say; where it cannot tell (a directory that does not exist
  yet, a pattern with wildcards in its directories) it polls every
  :data:`POLL_INTERVAL` seconds (:mod:`runtime.bridge.watch`).
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
  :data:`~runtime.bridge.connection.PING_INTERVAL` seconds until a SUB_RES names the device, opens the
  device's buffer through the bridge's single :class:`~runtime.buffer.BufferStore`,
  serves it (:meth:`~runtime.buffer.Buffer.serve`: valid for as long as this
  process lives and the device is connected), attaches it to the pump, and
  subscribes. A ``write()`` or ``read()`` by anyone wakes the pump's writer
  thread, not the interpreter: it sends the pending reads and writes as
  :meth:`~runtime.buffer.DeviceBuffer.emit_dev_rw` packs them, at most one
  batch per ``write_interval`` (:meth:`~runtime.link.FramePump.serve_writes`),
  and tells Python only of what needs it (a new commander, whose writes wait
  until the connection checked it; the disabled flag; writes given up);
  a heartbeat goes out every ``heartbeat_interval`` (every device's on one
  grid of time, so that the bridge wakes once for all), and a device silent for
  :data:`~runtime.bridge.connection.SILENCE_HEARTBEATS` heartbeat intervals is treated as gone.
* The link may lose frames, so what must arrive is confirmed: a subscription
  counts only once a SUB_RES with a nonzero interval answers it (SUB_REQ is
  repeated until then), and a write of a parameter the device reports in its
  DEV_DATA is sent again by the pump's writer thread until a report shows it
  arrived (at most :data:`~runtime.bridge.connection.WRITE_RETRIES` times; then
  the connection logs and counts it).
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
* When it stops (``stop`` set; ``runtime bridge`` sets it on SIGINT/SIGTERM)
  it opens no port again and ends every port's task (cancelled again should
  one drop its cancellation); every connected device gets a DEV_DISABLE (nothing keeps
  actuating unattended), every buffer is marked invalid, the store is closed
  (segments stay) and the stats file is written one last time.

Bad input never stops the bridge: an undecodable frame is answered with an ERROR
message carrying its error code and counted; an unknown device type is logged
and its port ignored until it reconnects; every port's failures are caught and
logged in that port's task alone.

``runtime bridge`` (:mod:`runtime.tools.bridge`) runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import glob
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ..buffer import SHM_DIR, Buffer, DeviceBuffer
from ..commands import Commander, CommanderWatch
from ..exception import RuntimeBaseException
from ..jsonio import write_json_atomically
from ..link import FramePump
from ..messaging import Message
from ..processes import runs_command
from ..store import BufferStore, mapped_elsewhere
from .connection import DeviceRecord, PortConnection, logger
from .watch import Identity, _DirectoryWatch, _identity, _watchable_directory

__all__ = [
    "NO_DEVICE_REPORT_DELAY",
    "POLL_INTERVAL",
    "SAFETY_SCAN_INTERVAL",
    "UNPLUGGED_CAP",
    "UNPLUGGED_GRACE",
    "Bridge",
]

POLL_INTERVAL = 0.5
"""Seconds between scans for ports that appeared or vanished, where inotify cannot tell."""
SAFETY_SCAN_INTERVAL = 5.0
"""Seconds between scans where inotify watches every directory (a change it did not report)."""
RESCAN_DELAY = 0.5
"""Seconds after a connection ends before its port is looked at again."""
STATS_INTERVAL = 1.0
"""Seconds between two writes of the ``--stats`` file."""
NO_DEVICE_REPORT_DELAY = 5.0
"""Seconds without any connected device before the bridge says what it found on the ports it watches."""
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
CANCEL_AGAIN_INTERVAL = 0.5
"""Seconds the shutdown waits for its tasks to end before it cancels those still running again."""


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
        self._stop: asyncio.Event | None = None
        """The ``stop`` event of :meth:`serve` (while it runs)."""
        self._shutting_down = False
        """Whether :meth:`serve` has begun to shut down."""
        self._opened_at: dict[Identity, float] = {}
        """When each connection started (``time.monotonic()``): a port gets time to answer PING."""
        self.commanders = CommanderWatch(self._commander_ended)
        """The processes whose commands are in force on the devices served (a pidfd each)."""

    @property
    def stopping(self) -> bool:
        """Whether the bridge is stopping (``stop`` is set, or the shutdown began): it opens no port again."""
        return self._shutting_down or (self._stop is not None and self._stop.is_set())

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

    def report_port_taken(self, path: str, pid: int | None) -> None:
        """Say once that another process (another bridge) holds a port; it is tried again quietly.

        The bridge does not fight over the port: it takes it when the other lets go.
        """
        who = "another process" if pid is None else f"{_holder(pid)} (pid {pid})"
        text = f"served by {who}: it holds the port's lock"
        if self._open_errors.get(path) != text:
            logger.warning("port %s: %s; leaving it to it, this bridge takes it when it lets go", path, text)
            self._open_errors[path] = text
        else:
            logger.debug("port %s: still %s", path, text)

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
                text = self._open_errors[path]
                taken = text.startswith("served by")
                outcomes.append(f"{path}: {text}" if taken else f"{path}: cannot open: {text}")
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
        not interrupt the connection. Once the bridge is :attr:`stopping`, nothing is done.
        """
        if self.stopping:
            return
        present = self.discover()
        for identity, connection in list(self.connections.items()):
            if identity not in present:
                connection.lose("port vanished")
        now = time.monotonic()
        for identity, path in present.items():
            if self.stopping:  # ``stop`` set meanwhile (discover may run anything: a test's hook)
                break
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
        if self._rescan is not None and not self.stopping:  # look again soon: the device may answer again
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
            while not self.stopping:
                rescan.clear()
                try:
                    self.scan()
                except Exception:
                    logger.exception("scanning for ports failed")
                directories, complete = self._directories()
                told = watch is not None and watch.watch(directories) and complete
                # Not asyncio.wait_for: on Python 3.11 it drops a cancellation that comes as the wait
                # ends (a rescan and ``stop`` in one step), and the watcher would scan on after shutdown.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(
                        self._next_scan(SAFETY_SCAN_INTERVAL if told else POLL_INTERVAL)
                    ):
                        await rescan.wait()
                if rescan.is_set() and not self.stopping:
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
        self._stop, self._shutting_down = stop, False
        loop.add_reader(self.pump.fileno(), self._on_pump_events)
        background = [loop.create_task(self._watch(), name="port watcher")]
        if self.stats_path is not None:
            background.append(loop.create_task(self._write_stats_periodically(), name="stats"))
        try:
            await stop.wait()
            logger.info("bridge: shutting down")
        finally:
            self._shutting_down = True  # from here on no port is opened (see scan, PortConnection.run)
            for connection in self.owners.values():  # safety: nothing keeps actuating unattended
                connection.send(Message.make_dev_disable())
            await self._end_tasks(background)
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

    async def _end_tasks(self, background: list[asyncio.Task[Any]]) -> None:
        """Cancel the background tasks and every port's task, and wait until all of them ended.

        A task still running after :data:`CANCEL_AGAIN_INTERVAL` (one that dropped its cancellation:
        an ``asyncio.wait_for`` of Python 3.11 does when it ends in the same step) is cancelled again;
        a port's task started meanwhile is cancelled too (there should be none: the bridge is stopping).
        """
        ended: set[asyncio.Task[Any]] = set()
        while True:
            pending = {task for task in [*background, *self._tasks.values()] if task not in ended}
            if not pending:
                break
            for task in pending:
                task.cancel()
            done, _ = await asyncio.wait(pending, timeout=CANCEL_AGAIN_INTERVAL)
            ended |= done
        for task in ended:  # retrieved, as gather(return_exceptions=True) would
            if not task.cancelled():
                task.exception()

    async def serve(self, stop: asyncio.Event | None = None) -> int:
        """Serve ports until ``stop`` is set (or the task is cancelled); then shut down cleanly; 0.

        Signals are the caller's: ``runtime bridge`` sets ``stop`` on SIGINT/SIGTERM.
        """
        loop = asyncio.get_running_loop()
        stop = stop or asyncio.Event()
        await self._serve_until(stop, loop)
        return 0


def _holder(pid: int) -> str:
    """``another runtime bridge`` when process ``pid`` runs one, else ``another process``."""
    return "another runtime bridge" if runs_command(pid, "bridge") else "another process"
