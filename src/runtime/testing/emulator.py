"""Smart Devices emulated on pseudo-terminals, in this process: what ``runtime emulate`` runs.

Each emulated device opens a pseudo-terminal and speaks the device side of the
Smart Device protocol on it, so a bridge serves it exactly like a USB serial
device (``runtime bridge --port /dev/pts/N``, or ``--glob 'DIR/*'`` over the
links of :func:`link_names`). :class:`PtyDevice` connects one
:class:`~runtime.testing.DeviceModel` (the protocol, without I/O) to a new
pseudo-terminal, over a link that may be flaky
(:class:`~runtime.testing.FaultInjector`; devices unplugged and plugged back
now and then); :class:`Emulator` opens several and serves them with asyncio
until SIGINT or SIGTERM, writing their link statistics (:func:`write_stats`)
and saying at the end what each link did.

>>> from runtime import catalog
>>> servo = catalog.load()["servo-motor"]
>>> device = PtyDevice(DeviceModel(servo, 0x07_01_0000000000000042, seed=1))
>>> device.describe().split()[:2], device.path.startswith("/dev/")     # what runtime emulate prints
(['servo-motor', '0x7010000000000000042'], True)
>>> device.close()
>>> device.model.close()

Failures to open or serve a pseudo-terminal raise :class:`EmulatorError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import signal
import tty
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..buffer import DeviceBuffer
from ..exception import RuntimeBaseException
from ..jsonio import write_json_atomically
from ..link import FrameWriter
from ..messaging import DELIM, FrameSplitter, Message
from .device import DeviceModel
from .faults import FaultInjector, FaultRates

__all__ = [
    "DISCONNECT_FOR",
    "OUTBOX_LIMIT",
    "STATS_INTERVAL",
    "Emulator",
    "EmulatorError",
    "PtyDevice",
    "link_names",
    "write_stats",
]

_default_logger = logging.getLogger("runtime.testing.emulator")

OUTBOX_LIMIT = 4096
"""Bytes an emulated device queues while nobody reads its port (then it drops data, like a UART)."""
DISCONNECT_FOR = 1.0
"""Seconds an emulated disconnect lasts by default."""
STATS_INTERVAL = 0.5
"""Seconds between two writes of the ``--stats`` file."""


def _seeded(seed: int | None, label: str) -> random.Random:
    """A generator for one purpose: reproducible from ``seed`` (random when None), independent per label."""
    return random.Random(None if seed is None else f"{seed}-{label}")


# ---- pseudo-terminals ---------------------------------------------------------------------------


class PtyDevice:
    """Connect a :class:`DeviceModel` to a new pseudo-terminal, over a link that may be flaky.

    The emulator keeps both ends open (so the terminal lives while no bridge
    has it open) and talks through the master end; a bridge opens the slave
    end, :attr:`path`. With ``link``, a symlink of that name points to it.

    Faults: ``faults`` damages the frames the device sends, ``faults_in`` those
    it receives (see :class:`FaultRates`). With ``disconnect_every``, the device
    vanishes after that many seconds connected, like an unplugged cable: the
    pseudo-terminal is closed (a bridge reading it gets an error) and the link
    removed; ``disconnect_for`` seconds later it comes back on a new
    pseudo-terminal and the link is made again. The device keeps its values but
    forgets its subscription, as a re-enumerated device does.

    Args:
        model: The device.
        link: Path of a symlink to create to the pseudo-terminal (replaced if it exists).
        garbage: Seconds between bursts of garbage bytes (0: never); for testing the host.
        faults: Damage to the frames sent (None: none).
        faults_in: Damage to the frames received (None: none).
        fault_seed: Seeds the fault decisions (None: random).
        disconnect_every: Seconds connected before each disconnect (0: never).
        disconnect_for: Seconds each disconnect lasts.
        first_disconnect: Seconds before the first disconnect (default ``disconnect_every``).
        logger: Where connects, disconnects and read errors are logged (default: this module's).
    """

    def __init__(
        self,
        model: DeviceModel,
        *,
        link: str | None = None,
        garbage: float = 0.0,
        faults: FaultRates | None = None,
        faults_in: FaultRates | None = None,
        fault_seed: int | None = None,
        disconnect_every: float = 0.0,
        disconnect_for: float = DISCONNECT_FOR,
        first_disconnect: float | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.model = model
        self.logger = logger or _default_logger
        self.link = link
        self.garbage = garbage
        # One generator per direction: the fate of the n-th frame sent does not depend on traffic received.
        self.faults_out = FaultInjector(faults or FaultRates(), _seeded(fault_seed, "out"))
        self.faults_in = FaultInjector(faults_in or FaultRates(), _seeded(fault_seed, "in"))
        self.disconnect_every = max(disconnect_every, 0.0)
        self.disconnect_for = max(disconnect_for, 0.0)
        self.first_disconnect = disconnect_every if first_disconnect is None else first_disconnect
        self.disconnects = 0
        """Times the device vanished."""
        self.reconnects = 0
        """Times it came back."""
        self.master = self.slave = -1
        self.path = ""
        self._open_pty()
        self._splitter = FrameSplitter()
        self._writer: FrameWriter | None = None
        self._retry: asyncio.TimerHandle | None = None

    @property
    def connected(self) -> bool:
        """Whether the device is plugged in (its pseudo-terminal exists)."""
        return self.master >= 0

    def describe(self) -> str:
        """The line printed at start: type, UID, pseudo-terminal (and link)."""
        line = f"{self.model.type_name} {self.model.uid:#x} {self.path}"
        return f"{line} {self.link}" if self.link else line

    def summary(self) -> str:
        """The line printed at exit: what the link did, as ``key=value`` words."""
        out, received = self.faults_out.counts, self.faults_in.counts
        words = [f"{key}={value}" for key, value in out.to_json().items()]
        words += [f"in_{key}={value}" for key, value in received.to_json().items()]
        words += [
            f"disconnects={self.disconnects}",
            f"reconnects={self.reconnects}",
            f"errors={self.model.errors}",
            f"errors_received={self.model.errors_received}",
        ]
        return f"summary {self.model.type_name} {self.model.uid:#x}: {' '.join(words)}"

    def stats(self) -> dict[str, Any]:
        """The device's entry in the ``--stats`` file."""
        return {
            "type": self.model.type_name,
            "uid": f"{self.model.uid:#x}",
            "path": self.path if self.connected else None,
            "link": self.link,
            "connected": self.connected,
            "disconnects": self.disconnects,
            "reconnects": self.reconnects,
            "faults": str(self.faults_out.rates),
            "faults_in": str(self.faults_in.rates),
            "out": self.faults_out.counts.to_json(),
            "in": self.faults_in.counts.to_json(),
            "messages_in": self.model.messages_in,
            "errors": self.model.errors,
            "errors_received": self.model.errors_received,
        }

    # -- the pseudo-terminal and its link --

    def _open_pty(self) -> None:
        master, slave = os.openpty()
        try:
            tty.setraw(slave)
            os.set_blocking(master, False)
            path = os.ttyname(slave)
            if self.link is not None:
                # A hidden name, so that a bridge globbing DIR/* never sees the link half made.
                directory, name = os.path.split(self.link)
                temporary = os.path.join(directory, f".{name}.tmp{os.getpid()}")
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temporary)
                os.symlink(path, temporary)
                os.replace(temporary, self.link)
        except BaseException:
            os.close(master)
            os.close(slave)
            raise
        self.master, self.slave, self.path = master, slave, path

    def _close_pty(self) -> None:
        """Remove the link (if it still points to our terminal) and close both ends."""
        if self.link is not None and self.path:
            with contextlib.suppress(OSError):
                if os.readlink(self.link) == self.path:
                    os.unlink(self.link)
        for fd in (self.master, self.slave):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.master = self.slave = -1

    def _start_io(self) -> None:
        loop = asyncio.get_running_loop()
        self._splitter.reset()
        self._writer = FrameWriter(self.master, limit=OUTBOX_LIMIT)
        loop.add_reader(self.master, self._on_readable)

    def _stop_io(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self.master >= 0:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self.master)
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _disconnect(self) -> None:
        """Vanish: stop talking, close the terminal, remove the link; forget the subscription."""
        self._stop_io()
        old = self.path
        self._close_pty()
        self.model.forget_host()
        self.disconnects += 1
        self.logger.info("%s %#x: disconnected from %s", self.model.type_name, self.model.uid, old)

    def _reconnect(self) -> bool:
        """Come back on a new pseudo-terminal; False if none could be opened (tried again later)."""
        try:
            self._open_pty()
        except OSError as exc:
            self.logger.warning("%s %#x: cannot reconnect: %s", self.model.type_name, self.model.uid, exc)
            return False
        self._start_io()
        self.reconnects += 1
        where = f"{self.path} ({self.link})" if self.link else self.path
        self.logger.info("%s %#x: reconnected on %s", self.model.type_name, self.model.uid, where)
        return True

    # -- serving --

    async def run(self) -> None:
        """Serve the device until cancelled."""
        loop = asyncio.get_running_loop()
        self._start_io()
        start = loop.time()
        next_garbage = start + self.garbage if self.garbage > 0 else math.inf
        next_disconnect = start + self.first_disconnect if self.disconnect_every > 0 else math.inf
        reconnect_at = math.inf
        try:
            while True:
                now = loop.time()
                messages = self.model.poll(now)  # the simulation goes on while unplugged
                if self.connected:
                    self._send(messages)
                    if now >= next_disconnect:
                        self._disconnect()
                        next_disconnect, reconnect_at = math.inf, now + self.disconnect_for
                    elif now >= next_garbage:
                        self._send_garbage()
                        next_garbage = now + self.garbage
                elif now >= reconnect_at:
                    if self._reconnect():
                        next_disconnect, reconnect_at = now + self.disconnect_every, math.inf
                    else:
                        reconnect_at = now + max(self.disconnect_for, 0.5)
                deadline = self.model.next_deadline(now)
                if self.connected:
                    deadline = min(deadline, next_garbage, next_disconnect)
                else:
                    deadline = min(deadline, reconnect_at)
                await asyncio.sleep(max(deadline - loop.time(), 0.001))
        finally:
            self._stop_io()

    def _on_readable(self) -> None:
        try:
            data = os.read(self.master, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # EIO: nobody has the slave end open (cannot happen while we hold it)
            self.logger.warning("%s: cannot read the pseudo-terminal (%s); retrying in 1 s", self.path, exc)
            loop = asyncio.get_running_loop()
            loop.remove_reader(self.master)  # no busy loop on a persistent error
            self._retry = loop.call_later(1.0, loop.add_reader, self.master, self._on_readable)
            return
        now = asyncio.get_running_loop().time()
        for frame in self._splitter.feed(data):
            for delivered in self.faults_in.apply(frame):
                self._send(self.model.receive(delivered, now))

    def _send(self, messages: Iterable[Message]) -> None:
        if self._writer is None:
            return
        for message in messages:
            frames = self.faults_out.apply(message.encode())
            if frames:
                self._writer.send(b"".join(frame + DELIM for frame in frames))

    def _send_garbage(self) -> None:
        """Noise as a flaky cable makes it: junk, a frame with a bad checksum, an oversized frame."""
        assert self._writer is not None
        rng = self.model.rng
        junk = bytes(rng.randrange(1, 256) for _ in range(rng.randrange(1, 40)))
        corrupted = bytearray(Message.make_hb_req(rng.randrange(256)).encode())
        corrupted[-1] ^= 0x55  # checksum no longer matches (and stays nonzero)
        corrupted = corrupted.replace(b"\0", b"\1")
        self._writer.send(junk + DELIM + bytes(corrupted) + DELIM + b"\x7f" * 300 + DELIM)

    def close(self) -> None:
        """Close the pseudo-terminal and remove the link (if it still points to it)."""
        self._close_pty()


def write_stats(path: str, devices: Sequence[PtyDevice], logger: logging.Logger | None = None) -> None:
    """Write the devices' link statistics to ``path`` atomically (a temporary file renamed); log a failure."""
    try:
        write_json_atomically(path, {"devices": [device.stats() for device in devices]})
    except (OSError, ValueError) as exc:
        (logger or _default_logger).error("cannot write stats to %s: %s", path, exc)


async def _write_stats_periodically(path: str, devices: Sequence[PtyDevice], logger: logging.Logger) -> None:
    while True:
        write_stats(path, devices, logger)
        await asyncio.sleep(STATS_INTERVAL)


def link_names(type_names: Sequence[str], directory: str) -> list[str]:
    """The links ``DIR/<type>-<n>`` (n = 0, 1, ... per type) of devices of these types, in order.

    >>> link_names(["yogi-bear", "battery", "yogi-bear"], "/tmp/devs")
    ['/tmp/devs/yogi-bear-0', '/tmp/devs/battery-0', '/tmp/devs/yogi-bear-1']
    """
    counts: dict[str, int] = {}
    names = []
    for type_name in type_names:
        index = counts.get(type_name, 0)
        counts[type_name] = index + 1
        names.append(os.path.join(directory, f"{type_name}-{index}"))
    return names


async def _serve(devices: Sequence[PtyDevice], stats_path: str | None, logger: logging.Logger) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop.set)
    tasks = [loop.create_task(device.run(), name=device.describe()) for device in devices]
    if stats_path is not None:
        tasks.append(loop.create_task(_write_stats_periodically(stats_path, devices, logger), name="stats"))
    stopper = loop.create_task(stop.wait())
    try:
        done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not stopper and not task.cancelled() and task.exception() is not None:
                logger.error("device %s failed", task.get_name(), exc_info=task.exception())
    finally:
        for task in [stopper, *tasks]:
            task.cancel()
        await asyncio.gather(stopper, *tasks, return_exceptions=True)


class EmulatorError(RuntimeBaseException):
    """The emulator cannot open or serve a device's pseudo-terminal (or its link); the message says why.

    (:class:`~runtime.testing.EmulationError` is :func:`~runtime.testing.emulated_robot`'s.)
    """


class Emulator:
    """Several emulated Smart Devices, each on its own pseudo-terminal, served until SIGINT or SIGTERM.

    :meth:`open` makes the devices and their pseudo-terminals, :meth:`serve`
    runs them, :meth:`summaries` says what each link did, :meth:`close`
    writes the statistics a last time and closes everything.

    Args:
        devices: The devices, as (buffer type, UID).
        link_directory: Make a symlink ``DIR/<type>-<n>`` to each device's
            pseudo-terminal (:func:`link_names`); the directory must exist.
        seed: Seeds each device's simulation and faults (device n gets ``seed + n``; None: random).
        simulate: Move the sensor values over time (else they change only when written).
        garbage, faults, faults_in, disconnect_every, disconnect_for: As for
            :class:`PtyDevice`; the first disconnects of the devices are staggered.
        stats_path: Write the link statistics (:func:`write_stats`) to this file
            every :data:`STATS_INTERVAL` seconds while serving, and at the end.
        logger: Where the devices log (their protocol errors at DEBUG).
    """

    def __init__(
        self,
        devices: Sequence[tuple[type[DeviceBuffer], int]],
        *,
        link_directory: str | None = None,
        seed: int | None = None,
        simulate: bool = True,
        garbage: float = 0.0,
        faults: FaultRates | None = None,
        faults_in: FaultRates | None = None,
        disconnect_every: float = 0.0,
        disconnect_for: float = DISCONNECT_FOR,
        stats_path: str | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.specs = list(devices)
        self.link_directory = link_directory
        self.seed = seed
        self.simulate = simulate
        self.garbage = max(float(garbage), 0.0)
        self.faults = faults or FaultRates()
        self.faults_in = faults_in or FaultRates()
        self.disconnect_every = float(disconnect_every)
        self.disconnect_for = float(disconnect_for)
        self.stats_path = stats_path
        self.logger = logger or _default_logger
        self.devices: list[PtyDevice] = []
        """The devices opened so far."""
        self.served = False
        """Whether :meth:`serve` was reached (then :meth:`summaries` has a line per device)."""

    def open(self, on_open: Callable[[PtyDevice], object] | None = None) -> list[PtyDevice]:
        """Make every device and its pseudo-terminal, calling ``on_open`` with each as it is made.

        Raises:
            EmulatorError: A pseudo-terminal or a link could not be made (the
                devices made until then stay in :attr:`devices`, for :meth:`close`).
        """
        count = len(self.specs)
        links: list[str | None] = [None] * count
        if self.link_directory:
            names = [buffer_type.type_name for buffer_type, _ in self.specs]
            links = list(link_names(names, self.link_directory))
        every = self.disconnect_every
        try:
            for index, ((buffer_type, uid), link) in enumerate(zip(self.specs, links, strict=True)):
                seed = None if self.seed is None else self.seed + index
                model = DeviceModel(buffer_type, uid, seed=seed, simulate=self.simulate, logger=self.logger)
                try:
                    device = PtyDevice(
                        model,
                        link=link,
                        garbage=self.garbage,
                        faults=self.faults,
                        faults_in=self.faults_in,
                        fault_seed=seed,
                        disconnect_every=every,
                        disconnect_for=self.disconnect_for,
                        first_disconnect=every * (1 + index / count),  # staggered
                        logger=self.logger,
                    )
                except BaseException:
                    model.close()
                    raise
                self.devices.append(device)
                if on_open is not None:
                    on_open(device)
        except OSError as exc:
            raise EmulatorError(str(exc)) from exc
        if self.faults.active or self.faults_in.active or every > 0:
            self.logger.info(
                "flaky link: faults %s, faults in %s, disconnect every %g s for %g s",
                self.faults,
                self.faults_in,
                every,
                self.disconnect_for,
            )
        return self.devices

    def serve(self) -> None:
        """Serve the devices until SIGINT or SIGTERM (KeyboardInterrupt passes through).

        Raises:
            EmulatorError: The pseudo-terminals could not be served.
        """
        self.served = True
        try:
            asyncio.run(_serve(self.devices, self.stats_path, self.logger))
        except OSError as exc:
            raise EmulatorError(str(exc)) from exc

    def summaries(self) -> list[str]:
        """Once served, a line per device saying what its link did (:meth:`PtyDevice.summary`); else none."""
        return [device.summary() for device in self.devices] if self.served else []

    def close(self) -> None:
        """Write the statistics a last time (once served), close every pseudo-terminal and device."""
        if self.served and self.stats_path is not None:
            write_stats(self.stats_path, self.devices, self.logger)
        for device in self.devices:
            device.close()
            device.model.close()
