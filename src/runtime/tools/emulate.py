"""``runtime emulate``: virtual Smart Devices on pseudo-terminals.

Lets the bridge, the tools built on buffers and the tests run without hardware.
Each emulated device opens a pseudo-terminal and speaks the device side of the
Smart Device protocol on it (see the wire protocol spec), so a bridge serves it
exactly like a USB serial device: ``runtime bridge --port /dev/pts/N``, or
``--glob 'DIR/*'`` with ``--link DIR``.

The protocol logic is the test kit's (:mod:`runtime.testing`, which users'
tests take too): :class:`~runtime.testing.DeviceModel` has no I/O (it maps
received frames to answers and the clock to streamed data), so it can be tested
directly; :class:`PtyDevice`, here, connects a model to a pseudo-terminal. A model keeps
its state in a process-local :class:`~runtime.buffer.DeviceBuffer` of the device
type and uses the buffer's own protocol support: ``update()`` digests SUB_REQ,
DEV_READ and DEV_WRITE, ``make_sub_res()`` answers PING and SUB_REQ,
``emit_subscription()`` streams the subscribed values. A :class:`~runtime.testing.Simulator` moves
the sensor values plausibly over time (switches toggle, encoders count, battery
voltages drift, intensities wander in 0..1, motor positions follow the duty
cycle), so a viewer sees life.

To test the host, the link can be made flaky (:class:`~runtime.testing.FaultInjector`, options
``--faults``, ``--faults-in``, ``--disconnect-every``): frames dropped,
duplicated, corrupted or truncated at given rates, and devices unplugged and
plugged back now and then; ``--stats`` and a ``summary`` line per device at exit
say what was done.

>>> from runtime import catalog
>>> servo = catalog.load()['servo-motor']
>>> model = DeviceModel(servo, 0x07_01_0000000000000042, seed=1)
>>> answer, = model.handle(Message.make_ping(), now=0.0)
>>> hex(answer.type), answer.read_sub_res()
('0x12', (0, 0, (7, 1, 66)))
>>> model.close()
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import random
import signal
import sys
import tty
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .. import catalog as catalog_module
from ..buffer import Buffer, DeviceBuffer
from ..exception import RuntimeBaseException
from ..jsonio import write_json_atomically
from ..link import FrameWriter
from ..messaging import DELIM, FrameSplitter, Message

# The device model is the test kit's (runtime.testing); re-exported here for the emulator's callers.
from ..testing.device import (
    HEARTBEAT_INTERVAL,
    HOST_SILENCE_HEARTBEATS,
    MOTOR_TICKS_PER_SECOND,
    DeviceModel,
    Simulator,
    random_uid,
)
from ..testing.faults import FaultCounts, FaultInjector, FaultRates
from ._common import (
    LONGEST_SECONDS,
    UID_FORMS,
    add_catalog_option,
    bounded,
    configure_logging,
    parse_uid,
    suggest,
)

__all__ = [
    "HEARTBEAT_INTERVAL",
    "HOST_SILENCE_HEARTBEATS",
    "MOTOR_TICKS_PER_SECOND",
    "DeviceModel",
    "DeviceSpec",
    "FaultCounts",
    "FaultInjector",
    "FaultRates",
    "PtyDevice",
    "Simulator",
    "add_arguments",
    "main",
    "parse_device",
    "random_uid",
]

logger = logging.getLogger("runtime.tools.emulate")

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
    ) -> None:
        self.model = model
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
        logger.info("%s %#x: disconnected from %s", self.model.type_name, self.model.uid, old)

    def _reconnect(self) -> bool:
        """Come back on a new pseudo-terminal; False if none could be opened (tried again later)."""
        try:
            self._open_pty()
        except OSError as exc:
            logger.warning("%s %#x: cannot reconnect: %s", self.model.type_name, self.model.uid, exc)
            return False
        self._start_io()
        self.reconnects += 1
        where = f"{self.path} ({self.link})" if self.link else self.path
        logger.info("%s %#x: reconnected on %s", self.model.type_name, self.model.uid, where)
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
            logger.warning("%s: cannot read the pseudo-terminal (%s); retrying in 1 s", self.path, exc)
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


# ---- command line -------------------------------------------------------------------------------


class DeviceSpec:
    """A parsed ``TYPE[:UID]`` argument."""

    def __init__(self, buffer_type: type[DeviceBuffer], uid: int) -> None:
        self.buffer_type = buffer_type
        self.uid = uid

    def __repr__(self) -> str:
        return f"DeviceSpec({self.buffer_type.type_name!r}, {self.uid:#x})"


def parse_device(
    text: str, catalog: Mapping[str, type[Buffer]], rng: random.Random | None = None
) -> DeviceSpec:
    """Parse ``TYPE[:UID]`` (a UID as :func:`~runtime.tools._common.parse_uid` takes it; random when omitted).

    Raises:
        ValueError: Unknown or non-Smart-Device type, malformed UID, or a UID
            whose device_id is not the type's (the message says which).
    """
    type_name, _, uid_text = text.partition(":")
    buffer_type = catalog.get(type_name)
    if buffer_type is None:
        raise ValueError(
            f"{text!r}: unknown device type {type_name!r}{suggest(type_name, catalog)} "
            f"(known: {', '.join(sorted(catalog))})"
        )
    if not (issubclass(buffer_type, DeviceBuffer) and hasattr(buffer_type, "device_id")):
        raise ValueError(f"{text!r}: {type_name} is not a Smart Device (it has no device_id)")
    if not uid_text:
        return DeviceSpec(buffer_type, random_uid(buffer_type.device_id, rng))
    uid = parse_uid(uid_text, where=text)
    if not 0 <= uid < 1 << 88:
        raise ValueError(f"{text!r}: UID must be an 88-bit nonnegative integer")
    device_id = uid >> 72
    if device_id != buffer_type.device_id:
        raise ValueError(
            f"{text!r}: UID {uid:#x} has device_id {device_id}, but {type_name} has device_id "
            f"{buffer_type.device_id} (uid = device_id << 72 | year << 64 | random)"
        )
    return DeviceSpec(buffer_type, uid)


DESCRIPTION = f"""\
Emulate Smart Devices on pseudo-terminals.

Each TYPE[:UID] argument becomes one device of that catalog type that speaks
the Smart Device protocol on its own pseudo-terminal, so the bridge can serve
it as if it were plugged in. At start one line per device gives its type, UID
and terminal path. It exits cleanly on Ctrl-C or SIGTERM.

Like a real device, a device stops actuating (its actuators go to their safe
values, as on DEV_DISABLE) when, after hearing from the host, it hears nothing
for {HOST_SILENCE_HEARTBEATS} of its type's heartbeat intervals.
"""

EPILOG = """\
examples:
  $ runtime emulate yogi-bear limit-switch
  $ runtime emulate yogi-bear:0xa0a0000000000c0ffee --link /tmp/devs
"""

DEFAULT_LOG_LEVEL = "INFO"
"""The emulator logs one line per event (connects, disconnects, faults) unless told otherwise."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``runtime emulate`` arguments to ``parser``."""
    parser.add_argument(
        "devices",
        nargs="+",
        metavar="TYPE[:UID]",
        help="device type from the catalog (e.g. limit-switch, yogi-bear), optionally with its UID "
        f"({UID_FORMS}; its device_id must be the type's); a random UID when omitted",
    )
    parser.add_argument(
        "--link",
        type=_link_directory,
        metavar="DIR",
        default=None,
        help="create a symlink DIR/<type>-<n> (n = 0, 1, ... per type) to each device's pseudo-terminal, "
        "removed at exit; e.g. run the bridge with --glob 'DIR/*'",
    )
    add_catalog_option(parser)
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed for random UIDs, simulated values and injected faults (reproducible runs)",
    )
    parser.add_argument(
        "--still", action="store_true", help="do not simulate: sensor values change only when written"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log protocol errors")
    faults = parser.add_argument_group(
        "a flaky link",
        "Make the link of every device misbehave, to test the host. Fault rates are probabilities "
        "drawn independently for each frame (reproducible with --seed). What was done is counted: "
        "see --stats, and the 'summary TYPE UID: key=value ...' line each device prints at exit.",
    )
    faults.add_argument(
        "--faults",
        type=_fault_rates,
        default=FaultRates(),
        metavar="KIND=RATE[,...]",
        help="damage the frames each device sends (device -> host). KIND is drop (the frame is lost), "
        "duplicate (an intact copy follows it), corrupt (one random bit of the encoded frame flips, "
        "never into a 0x00 byte), truncate (the encoded frame is cut short before its delimiter) or all; "
        "RATE is a probability in 0..1. Example: drop=0.05,duplicate=0.05,corrupt=0.05,truncate=0.05",
    )
    faults.add_argument(
        "--faults-in",
        type=_fault_rates,
        default=FaultRates(),
        metavar="KIND=RATE[,...]",
        help="damage the frames each device receives (host -> device) the same way, before the device "
        "decodes them; it answers a damaged frame with an ERROR, as a real device does",
    )
    faults.add_argument(
        "--disconnect-every",
        type=_seconds,
        default=0.0,
        metavar="SECONDS",
        help="unplug each device after SECONDS connected: its pseudo-terminal is closed and its --link "
        "removed; after --disconnect-for it comes back on a new pseudo-terminal with the same UID (the "
        "link is made again, so use --link and a bridge with --glob 'DIR/*'). The device keeps its values "
        f"but forgets its subscription. The first disconnects of several devices are staggered. "
        f"0 (default): never; at most {LONGEST_SECONDS:g}",
    )
    faults.add_argument(
        "--disconnect-for",
        type=_seconds,
        default=DISCONNECT_FOR,
        metavar="SECONDS",
        help=f"how long each disconnect lasts (default {DISCONNECT_FOR:g})",
    )
    faults.add_argument(
        "--stats",
        metavar="FILE",
        default=None,
        help="write each device's link statistics as JSON to FILE every "
        f"{STATS_INTERVAL:g} s and at exit: frames sent, delivered, dropped, duplicated, corrupted, "
        "truncated and mutated in each direction, disconnects, reconnects, errors",
    )
    # Testing aid: make the devices send noise now and then.
    parser.add_argument("--garbage", type=_seconds, default=0.0, metavar="SECONDS", help=argparse.SUPPRESS)


def _fault_rates(text: str) -> FaultRates:
    try:
        return FaultRates.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _link_directory(text: str) -> str:
    """``--link DIR``: a directory, or a path where one can be made (it is made at start)."""
    if not text:
        raise argparse.ArgumentTypeError("expected a directory")
    if os.path.lexists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} exists and is not a directory")
    return text


_seconds = bounded(float, 0.0, LONGEST_SECONDS, unit="seconds")


def write_stats(path: str, devices: Sequence[PtyDevice]) -> None:
    """Write the ``--stats`` file atomically (temporary file, then rename); log a failure."""
    try:
        write_json_atomically(path, {"devices": [device.stats() for device in devices]})
    except (OSError, ValueError) as exc:
        logger.error("cannot write stats to %s: %s", path, exc)


async def _write_stats_periodically(path: str, devices: Sequence[PtyDevice]) -> None:
    while True:
        write_stats(path, devices)
        await asyncio.sleep(STATS_INTERVAL)


def _link_names(specs: Sequence[DeviceSpec], directory: str) -> list[str]:
    counts: dict[str, int] = {}
    names = []
    for spec in specs:
        type_name = spec.buffer_type.type_name
        index = counts.get(type_name, 0)
        counts[type_name] = index + 1
        names.append(os.path.join(directory, f"{type_name}-{index}"))
    return names


async def _serve(devices: Sequence[PtyDevice], stats_path: str | None = None) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop.set)
    tasks = [loop.create_task(device.run(), name=device.describe()) for device in devices]
    if stats_path is not None:
        tasks.append(loop.create_task(_write_stats_periodically(stats_path, devices), name="stats"))
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


def main(args: argparse.Namespace) -> int:
    """Run the emulated devices until SIGINT/SIGTERM; return the exit code (2: bad arguments)."""
    verbose = bool(getattr(args, "verbose", False))
    configure_logging(debug=[logger.name] if verbose else [])  # --verbose: protocol errors
    try:
        catalog = catalog_module.load(args.catalog)
    except (RuntimeBaseException, ValueError, OSError) as exc:
        print(f"runtime emulate: cannot load the catalog: {exc}", file=sys.stderr)
        return 2
    rng = random.Random(args.seed)
    try:
        specs = [parse_device(text, catalog, rng) for text in args.devices]
    except ValueError as exc:
        print(f"runtime emulate: {exc}", file=sys.stderr)
        return 2
    uids = [spec.uid for spec in specs]
    if len(set(uids)) != len(uids):
        print("runtime emulate: the same UID is given twice", file=sys.stderr)
        return 2
    links: list[str | None] = [None] * len(specs)
    if args.link:
        try:
            os.makedirs(args.link, exist_ok=True)
        except OSError as exc:
            print(
                f"runtime emulate: cannot make the --link directory {args.link}: {exc.strerror or exc}",
                file=sys.stderr,
            )
            return 2
        links = list(_link_names(specs, args.link))
    faults: FaultRates = getattr(args, "faults", None) or FaultRates()
    faults_in: FaultRates = getattr(args, "faults_in", None) or FaultRates()
    every = float(getattr(args, "disconnect_every", 0.0) or 0.0)
    duration = float(getattr(args, "disconnect_for", DISCONNECT_FOR))
    stats_path: str | None = getattr(args, "stats", None)
    if every > 0 and not args.link:
        logger.warning(
            "--disconnect-every without --link: the devices come back on new pseudo-terminals, "
            "which a bridge serving fixed --port paths will not find"
        )
    devices: list[PtyDevice] = []
    served = False
    try:
        for index, (spec, link) in enumerate(zip(specs, links, strict=True)):
            seed = None if args.seed is None else args.seed + index
            model = DeviceModel(spec.buffer_type, spec.uid, seed=seed, simulate=not args.still, logger=logger)
            try:
                device = PtyDevice(
                    model,
                    link=link,
                    garbage=max(float(args.garbage), 0.0),
                    faults=faults,
                    faults_in=faults_in,
                    fault_seed=seed,
                    disconnect_every=every,
                    disconnect_for=duration,
                    first_disconnect=every * (1 + index / len(specs)),  # staggered
                )
            except BaseException:
                model.close()
                raise
            devices.append(device)
            print(device.describe(), flush=True)
        if faults.active or faults_in.active or every > 0:
            logger.info(
                "flaky link: faults %s, faults in %s, disconnect every %g s for %g s",
                faults,
                faults_in,
                every,
                duration,
            )
        served = True
        asyncio.run(_serve(devices, stats_path))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"runtime emulate: {exc}", file=sys.stderr)
        return 1
    finally:
        if served:
            for device in devices:
                print(device.summary(), flush=True)
            if stats_path is not None:
                write_stats(stats_path, devices)
        for device in devices:
            device.close()
            device.model.close()
    return 0


if __name__ == "__main__":  # python -m runtime.tools.emulate ...: the same as runtime emulate ...
    from .cli import main as runtime_main

    raise SystemExit(runtime_main(["emulate", *sys.argv[1:]]))
