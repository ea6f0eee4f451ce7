"""``runtime emulate``: virtual Smart Devices on pseudo-terminals.

Lets the bridge, the tools built on buffers and the tests run without hardware.
Each emulated device opens a pseudo-terminal and speaks the device side of the
Smart Device protocol on it (see the wire protocol spec), so a bridge serves it
exactly like a USB serial device: ``runtime bridge --port /dev/pts/N``, or
``--glob 'DIR/*'`` with ``--link DIR``.

The protocol logic lives in :class:`DeviceModel`, which has no I/O (it maps
received frames to answers and the clock to streamed data), so it can be tested
directly; :class:`PtyDevice` connects a model to a pseudo-terminal. A model keeps
its state in a process-local :class:`~runtime.buffer.DeviceBuffer` of the device
type and uses the buffer's own protocol support: ``update()`` digests SUB_REQ,
DEV_READ and DEV_WRITE, ``make_sub_res()`` answers PING and SUB_REQ,
``emit_subscription()`` streams the subscribed values. A :class:`Simulator` moves
the sensor values plausibly over time (switches toggle, encoders count, battery
voltages drift, intensities wander in 0..1, motor positions follow the duty
cycle), so a viewer sees life.

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
import ctypes
import datetime
import logging
import math
import os
import random
import signal
import sys
import tty
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from . import catalog as catalog_module
from .bridge import FrameWriter
from .buffer import Buffer, DeviceBuffer, DeviceUID, Parameter
from .exception import RuntimeBaseException
from .messaging import DELIM, ErrorCode, FrameSplitter, Message, MessageError, MessageType

__all__ = [
    "DeviceModel",
    "DeviceSpec",
    "PtyDevice",
    "Simulator",
    "add_arguments",
    "main",
    "parse_device",
    "random_uid",
]

logger = logging.getLogger("runtime.emulator")

SIM_STEP = 0.05
"""Seconds between two simulation steps."""
HEARTBEAT_INTERVAL = 1.0
"""Seconds between the heartbeats an emulated device sends to the host."""
OUTBOX_LIMIT = 4096
"""Bytes an emulated device queues while nobody reads its port (then it drops data, like a UART)."""
FIRST_SEASON = 2016
"""The calendar year of UID year 0 (the spring 2016 season)."""
MOTOR_TICKS_PER_SECOND = 2000.0
"""Encoder ticks per second of an emulated motor at full duty cycle."""


def random_uid(device_id: int, rng: random.Random | None = None) -> int:
    """A fresh UID for a device type: this season's year and 64 random bits."""
    rng = rng or random.Random()
    year = min(max(datetime.date.today().year - FIRST_SEASON, 0), 0xFF)
    return int(DeviceUID(device_id, year, rng.getrandbits(64)))


# ---- simulation ---------------------------------------------------------------------------------


class Simulator:
    """Moves a device's readable values plausibly over time, using only the parameter names and types.

    * Motors: for each ``duty_cycle<suffix>``, ``enc_pos<suffix>`` integrates the
      duty cycle (:data:`MOTOR_TICKS_PER_SECOND` at full duty), ``enc_vel<suffix>``
      and ``motor_current<suffix>`` follow it; a ``motor_enabled<suffix>`` that is
      False holds the motor still. The duty cycle itself only changes when written.
    * Batteries (``v_cell1..3`` and ``v_batt``): cell voltages drift down slowly
      with noise and recharge below 3.6 V; the total, the differences and
      ``is_unsafe`` follow; ``calibrated`` is True.
    * RFID (``id`` and ``tag_detect``): a tag comes and goes every few seconds.
    * Any other read-only parameter: booleans toggle every few seconds, floats
      wander smoothly within their bounds (0..1 when unbounded), integers count
      up and down within their type's range. Writeable parameters keep what the
      host wrote.
    """

    def __init__(self, buffer: DeviceBuffer, rng: random.Random) -> None:
        self.buffer = buffer
        self.rng = rng
        self.time = 0.0
        self._steps: list[Callable[[float], None]] = []
        params = {name: param for name, param in buffer.params.items() if param.readable}
        taken: set[str] = set()
        for name in params:
            if name.startswith("duty_cycle"):
                self._add_motor(name[len("duty_cycle") :], params, taken)
        if {"v_cell1", "v_cell2", "v_cell3", "v_batt"} <= params.keys():
            self._add_battery(params, taken)
        if {"id", "tag_detect"} <= params.keys():
            self._add_rfid(taken)
        for name, param in params.items():
            if name not in taken and not param.writeable:
                self._add_generic(param)
        self.step(0.0)

    def step(self, dt: float) -> None:
        """Advance the simulation by ``dt`` seconds and store the new values."""
        self.time += dt
        with self.buffer.transaction():
            for step in self._steps:
                step(dt)

    # -- behaviours --

    def _add_motor(self, suffix: str, params: Mapping[str, Parameter], taken: set[str]) -> None:
        buffer = self.buffer
        duty, pos, vel, current = (
            f"{base}{suffix}" for base in ("duty_cycle", "enc_pos", "enc_vel", "motor_current")
        )
        enabled = f"motor_enabled{suffix}"
        taken.update(name for name in (duty, pos, vel, current) if name in params)

        def step(dt: float) -> None:
            power = float(buffer.get(duty))
            if enabled in params and not buffer.get(enabled):
                power = 0.0
            speed = power * MOTOR_TICKS_PER_SECOND
            if pos in params:
                buffer.set(pos, float(buffer.get(pos)) + speed * dt)
            if vel in params:
                buffer.set(vel, speed + self.rng.gauss(0.0, 2.0) * (power != 0))
            if current in params:
                buffer.set(current, max(0.0, 0.05 + 1.5 * abs(power) + self.rng.gauss(0.0, 0.01)))

        self._steps.append(step)

    def _add_battery(self, params: Mapping[str, Parameter], taken: set[str]) -> None:
        buffer = self.buffer
        cells = [self.rng.uniform(4.0, 4.15) for _ in range(3)]
        taken.update(
            name
            for name in (
                "v_cell1",
                "v_cell2",
                "v_cell3",
                "v_batt",
                "dv_cell2",
                "dv_cell3",
                "is_unsafe",
                "calibrated",
            )
            if name in params
        )

        def step(dt: float) -> None:
            for index in range(3):
                cells[index] += -0.002 * dt + self.rng.gauss(0.0, 0.002) * math.sqrt(dt)
                if cells[index] < 3.6:
                    cells[index] = self.rng.uniform(4.0, 4.15)  # a fresh battery
            values = {
                "v_cell1": cells[0],
                "v_cell2": cells[1],
                "v_cell3": cells[2],
                "v_batt": sum(cells),
                "dv_cell2": cells[1] - cells[0],
                "dv_cell3": cells[2] - cells[1],
                "is_unsafe": min(cells) < 3.7,
                "calibrated": True,
            }
            for name, value in values.items():
                if name in params:
                    buffer.set(name, value)

        self._steps.append(step)

    def _add_rfid(self, taken: set[str]) -> None:
        buffer = self.buffer
        taken.update(("id", "tag_detect"))
        state = {"next": self.rng.uniform(1.0, 4.0), "present": False}

        def step(dt: float) -> None:
            if self.time >= state["next"]:
                state["present"] = not state["present"]
                state["next"] = self.time + self.rng.uniform(1.0, 4.0)
                buffer.set("tag_detect", int(bool(state["present"])))
                buffer.set("id", self.rng.getrandbits(32) if state["present"] else 0)

        step(0.0)
        buffer.set("tag_detect", 0)
        buffer.set("id", 0)
        self._steps.append(step)

    def _add_generic(self, param: Parameter) -> None:
        ctype: Any = param.platform_type
        if issubclass(ctype, ctypes.Array):
            return  # arrays (text, blobs) keep their value
        code = getattr(ctype, "_type_", "")
        if code == "?":
            self._add_toggle(param.name)
        elif code in ("f", "d"):
            self._add_wander(param)
        elif code in "bBhHiIlLqQ":
            self._add_counter(param, ctype)

    def _add_toggle(self, name: str) -> None:
        buffer = self.buffer
        state = {"next": self.rng.uniform(1.0, 5.0), "value": self.rng.random() < 0.5}

        def step(dt: float) -> None:
            if self.time >= state["next"]:
                state["value"] = not state["value"]
                state["next"] = self.time + self.rng.uniform(2.0, 5.0)
            buffer.set(name, bool(state["value"]))

        self._steps.append(step)

    def _add_wander(self, param: Parameter) -> None:
        buffer = self.buffer
        finite = math.isfinite(param.lower) and math.isfinite(param.upper)
        lower, upper = (float(param.lower), float(param.upper)) if finite else (0.0, 1.0)
        span = upper - lower
        # Two slow sines with random frequencies and phases, plus a little noise: smooth, in range.
        waves = [
            (self.rng.uniform(0.05, 0.3), self.rng.uniform(0, 2 * math.pi), 0.3),
            (self.rng.uniform(0.3, 1.0), self.rng.uniform(0, 2 * math.pi), 0.12),
        ]

        def step(dt: float) -> None:
            level = 0.5 + sum(
                amplitude * math.sin(2 * math.pi * freq * self.time + phase)
                for freq, phase, amplitude in waves
            )
            level += self.rng.uniform(-0.02, 0.02)
            buffer.set(param.name, lower + span * min(max(level, 0.0), 1.0))

        self._steps.append(step)

    def _add_counter(self, param: Parameter, ctype: Any) -> None:
        buffer = self.buffer
        bits = 8 * ctypes.sizeof(ctype)
        signed = ctype._type_.islower()
        low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
        if math.isfinite(param.lower):
            low = max(low, math.ceil(param.lower))
        if math.isfinite(param.upper):
            high = min(high, math.floor(param.upper))
        state = {"value": 0.0, "speed": self.rng.uniform(-200.0, 200.0), "next": self.rng.uniform(2.0, 5.0)}

        def step(dt: float) -> None:
            if self.time >= state["next"]:
                state["speed"] = self.rng.uniform(-200.0, 200.0)
                state["next"] = self.time + self.rng.uniform(2.0, 5.0)
            state["value"] += state["speed"] * dt
            value = int(state["value"])
            if not low <= value <= high:  # wrap around like a hardware counter
                value = low + (value - low) % (high - low + 1)
                state["value"] = float(value)
            buffer.set(param.name, value)

        self._steps.append(step)


# ---- the protocol -------------------------------------------------------------------------------


class DeviceModel:
    """The device side of the Smart Device protocol for one emulated device, without any I/O.

    Feed it frames (:meth:`receive`) or messages (:meth:`handle`) and send what
    they return; call :meth:`poll` regularly (by :meth:`next_deadline`) for the
    subscribed DEV_DATA, the device's heartbeats and the simulation.

    Args:
        buffer_type: The device type (a :class:`~runtime.buffer.DeviceBuffer` subclass).
        uid: The device's 88-bit UID; its device_id must be the type's (``ValueError``).
        seed: Seeds the simulation (None: random).
        simulate: Whether sensor values move over time.
    """

    def __init__(
        self, buffer_type: type[DeviceBuffer], uid: int, *, seed: int | None = None, simulate: bool = True
    ) -> None:
        parts = DeviceUID.from_int(uid)
        if parts.device_id != buffer_type.device_id:
            raise ValueError(
                f"UID {uid:#x} has device_id {parts.device_id}, but a {buffer_type.type_name} has "
                f"device_id {buffer_type.device_id}"
            )
        self.uid = uid
        self.type_name = buffer_type.type_name
        self.buffer: DeviceBuffer = buffer_type.attach(f"emulated-{self.type_name}-{uid:x}", shared=False)
        self.buffer.uid = uid
        self.rng = random.Random(seed)
        self.simulator = Simulator(self.buffer, self.rng) if simulate else None
        self.messages_in = 0
        self.errors = 0
        self._next_stream: float | None = None
        self._last_step: float | None = None
        self._next_heartbeat: float | None = None
        self._hb_id = 0

    def close(self) -> None:
        """Release the local buffer."""
        self.buffer.close()

    # -- input --

    def receive(self, frame: bytes, now: float) -> list[Message]:
        """Digest one frame (COBS-encoded, without delimiter); return the answers to send."""
        try:
            message = Message.decode(frame)
        except MessageError as exc:
            self.errors += 1
            logger.debug("%s %#x: bad frame (%s)", self.type_name, self.uid, exc)
            return [Message.make_error(exc.error_code)]
        return self.handle(message, now)

    def handle(self, message: Message, now: float) -> list[Message]:
        """Digest one message from the host; return the answers to send."""
        self.messages_in += 1
        try:
            return self._handle(message, now)
        except MessageError as exc:  # a payload that does not fit its type or this device
            self.errors += 1
            logger.debug("%s %#x: bad %s (%s)", self.type_name, self.uid, message.type.name, exc)
            return [Message.make_error(exc.error_code)]

    def _handle(self, message: Message, now: float) -> list[Message]:
        buffer = self.buffer
        kind = message.type
        if kind == MessageType.PING:
            return [buffer.make_sub_res()]
        if kind == MessageType.SUB_REQ:
            buffer.update(message)  # records the readable params and the clamped interval
            self._next_stream = now if buffer.interval > 0 else None
            logger.info(
                "%s %#x: host subscribed to %s every %g s",
                self.type_name,
                self.uid,
                ", ".join(sorted(buffer.subscription)) or "nothing",
                buffer.interval,
            )
            return [buffer.make_sub_res()]
        if kind == MessageType.DEV_READ:
            buffer.update(message)
            names = buffer.get_read()
            with buffer.transaction():
                buffer.get_update()  # forget the simulation's updates: answer exactly what was asked
                for name in names:
                    buffer.set(name, buffer.get(name))
                return list(buffer.emit_dev_data())
        if kind == MessageType.DEV_WRITE:
            buffer.update(message)
            with buffer.transaction():
                for name, value in buffer.get_write().items():
                    buffer.set(name, value)  # readable ones come back in later DEV_DATA
            return []
        if kind == MessageType.DEV_DISABLE:
            logger.info("%s %#x: disabled by the host", self.type_name, self.uid)
            self.disable()
            return []
        if kind == MessageType.HB_REQ:
            return [Message.make_hb_res(message.read_hb_req())]
        if kind in (MessageType.HB_RES, MessageType.ERROR):
            return []
        # SUB_RES and DEV_DATA travel from devices to the host only.
        self.errors += 1
        return [Message.make_error(ErrorCode.INVALID_TYPE)]

    def disable(self) -> None:
        """Stop actuating: every writeable parameter back to its default (zero, or within its bounds)."""
        with self.buffer.transaction():
            for param in self.buffer.params.values():
                if not param.writeable:
                    continue
                ctype: Any = param.platform_type
                if issubclass(ctype, ctypes.Array):
                    default: Any = ctype()
                elif param.numeric:  # the type's zero, or the nearest bound when zero is out of bounds
                    default = type(param.default)(min(max(param.default, param.lower), param.upper))
                else:
                    default = param.default
                self.buffer.set(param.name, default)

    # -- time --

    def poll(self, now: float) -> list[Message]:
        """Advance the simulation to ``now``; return the DEV_DATA and heartbeats now due."""
        if self.simulator is not None:
            dt = 0.0 if self._last_step is None else min(max(now - self._last_step, 0.0), 1.0)
            self.simulator.step(dt)
        self._last_step = now
        out: list[Message] = []
        if self._next_heartbeat is None:
            self._next_heartbeat = now + HEARTBEAT_INTERVAL
        elif now >= self._next_heartbeat:
            out.append(Message.make_hb_req(self._hb_id))
            self._hb_id = (self._hb_id + 1) & 0xFF
            self._next_heartbeat = max(self._next_heartbeat + HEARTBEAT_INTERVAL, now)
        interval = self.buffer.interval
        if self._next_stream is not None and interval > 0 and now >= self._next_stream:
            out.extend(self.buffer.emit_subscription())
            self._next_stream = max(self._next_stream + interval, now)
        return out

    def next_deadline(self, now: float) -> float:
        """When :meth:`poll` should be called next."""
        deadline = now + SIM_STEP
        if self._next_stream is not None and self.buffer.interval > 0:
            deadline = min(deadline, self._next_stream)
        if self._next_heartbeat is not None:
            deadline = min(deadline, self._next_heartbeat)
        return deadline


# ---- pseudo-terminals ---------------------------------------------------------------------------


class PtyDevice:
    """Connect a :class:`DeviceModel` to a new pseudo-terminal.

    The emulator keeps both ends open (so the terminal lives while no bridge
    has it open) and talks through the master end; a bridge opens the slave
    end, :attr:`path`. With ``link``, a symlink of that name points to it.

    Args:
        model: The device.
        link: Path of a symlink to create to the pseudo-terminal (replaced if it exists).
        garbage: Seconds between bursts of garbage bytes (0: never); for testing the host.
    """

    def __init__(self, model: DeviceModel, *, link: str | None = None, garbage: float = 0.0) -> None:
        self.model = model
        self.link = link
        self.garbage = garbage
        self.master, self.slave = os.openpty()
        try:
            tty.setraw(self.slave)
            os.set_blocking(self.master, False)
            self.path = os.ttyname(self.slave)
            if link is not None:
                # A hidden name, so that a bridge globbing DIR/* never sees the link half made.
                directory, name = os.path.split(link)
                temporary = os.path.join(directory, f".{name}.tmp{os.getpid()}")
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temporary)
                os.symlink(self.path, temporary)
                os.replace(temporary, link)
        except BaseException:
            os.close(self.master)
            os.close(self.slave)
            raise
        self._splitter = FrameSplitter()
        self._writer: FrameWriter | None = None
        self._retry: asyncio.TimerHandle | None = None

    def describe(self) -> str:
        """The line printed at start: type, UID, pseudo-terminal (and link)."""
        line = f"{self.model.type_name} {self.model.uid:#x} {self.path}"
        return f"{line} {self.link}" if self.link else line

    async def run(self) -> None:
        """Serve the device until cancelled."""
        loop = asyncio.get_running_loop()
        self._writer = FrameWriter(self.master, limit=OUTBOX_LIMIT)
        loop.add_reader(self.master, self._on_readable)
        next_garbage = loop.time() + self.garbage if self.garbage > 0 else math.inf
        try:
            while True:
                now = loop.time()
                self._send(self.model.poll(now))
                if now >= next_garbage:
                    self._send_garbage()
                    next_garbage = now + self.garbage
                deadline = min(self.model.next_deadline(now), next_garbage)
                await asyncio.sleep(max(deadline - loop.time(), 0.001))
        finally:
            if self._retry is not None:
                self._retry.cancel()
            with contextlib.suppress(Exception):
                loop.remove_reader(self.master)
            self._writer.close()

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
            self._send(self.model.receive(frame, now))

    def _send(self, messages: Iterable[Message]) -> None:
        assert self._writer is not None
        for message in messages:
            self._writer.send(message.encode() + DELIM)

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
        if self.link is not None:
            with contextlib.suppress(OSError):
                if os.readlink(self.link) == self.path:
                    os.unlink(self.link)
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


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
    """Parse ``TYPE[:UID]`` (UID in hex with 0x, or decimal; random when omitted).

    Raises:
        ValueError: Unknown or non-Smart-Device type, malformed UID, or a UID
            whose device_id is not the type's (the message says which).
    """
    type_name, _, uid_text = text.partition(":")
    buffer_type = catalog.get(type_name)
    if buffer_type is None:
        raise ValueError(f"{text!r}: unknown device type {type_name!r} (known: {', '.join(sorted(catalog))})")
    if not (issubclass(buffer_type, DeviceBuffer) and hasattr(buffer_type, "device_id")):
        raise ValueError(f"{text!r}: {type_name} is not a Smart Device (it has no device_id)")
    if not uid_text:
        return DeviceSpec(buffer_type, random_uid(buffer_type.device_id, rng))
    try:
        uid = int(uid_text, 0)
    except ValueError:
        raise ValueError(f"{text!r}: UID must be an integer (hex with 0x, or decimal)") from None
    if not 0 <= uid < 1 << 88:
        raise ValueError(f"{text!r}: UID must be an 88-bit nonnegative integer")
    device_id = uid >> 72
    if device_id != buffer_type.device_id:
        raise ValueError(
            f"{text!r}: UID {uid:#x} has device_id {device_id}, but {type_name} has device_id "
            f"{buffer_type.device_id} (uid = device_id << 72 | year << 64 | random)"
        )
    return DeviceSpec(buffer_type, uid)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``runtime emulate`` arguments to ``parser``."""
    parser.add_argument(
        "devices",
        nargs="+",
        metavar="TYPE[:UID]",
        help="device type from the catalog (e.g. limit-switch, yogi-bear), optionally with its UID "
        "(hex with 0x, or decimal; its device_id must be the type's); a random UID when omitted",
    )
    parser.add_argument(
        "--link",
        metavar="DIR",
        default=None,
        help="create a symlink DIR/<type>-<n> (n = 0, 1, ... per type) to each device's pseudo-terminal, "
        "removed at exit; e.g. run the bridge with --glob 'DIR/*'",
    )
    parser.add_argument(
        "--catalog",
        metavar="FILE",
        default=None,
        help="device catalog YAML (default: the catalog packaged with runtime)",
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="seed for random UIDs and simulated values (reproducible runs)"
    )
    parser.add_argument(
        "--still", action="store_true", help="do not simulate: sensor values change only when written"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log protocol errors")
    # Testing aid: make the devices send noise now and then.
    parser.add_argument("--garbage", type=float, default=0.0, metavar="SECONDS", help=argparse.SUPPRESS)


def _link_names(specs: Sequence[DeviceSpec], directory: str) -> list[str]:
    counts: dict[str, int] = {}
    names = []
    for spec in specs:
        type_name = spec.buffer_type.type_name
        index = counts.get(type_name, 0)
        counts[type_name] = index + 1
        names.append(os.path.join(directory, f"{type_name}-{index}"))
    return names


async def _serve(devices: Sequence[PtyDevice]) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop.set)
    tasks = [loop.create_task(device.run(), name=device.describe()) for device in devices]
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
    if not logging.getLogger().handlers:  # run directly, not by ``runtime`` (which configures logging)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if verbose:
        logger.setLevel(logging.DEBUG)
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
        os.makedirs(args.link, exist_ok=True)
        links = list(_link_names(specs, args.link))
    devices: list[PtyDevice] = []
    try:
        for index, (spec, link) in enumerate(zip(specs, links, strict=True)):
            seed = None if args.seed is None else args.seed + index
            model = DeviceModel(spec.buffer_type, spec.uid, seed=seed, simulate=not args.still)
            try:
                device = PtyDevice(model, link=link, garbage=max(float(args.garbage), 0.0))
            except BaseException:
                model.close()
                raise
            devices.append(device)
            print(device.describe(), flush=True)
        asyncio.run(_serve(devices))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"runtime emulate: {exc}", file=sys.stderr)
        return 1
    finally:
        for device in devices:
            device.close()
            device.model.close()
    return 0


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(
        prog="python -m runtime.emulator", description="Emulate Smart Devices on pseudo-terminals."
    )
    add_arguments(_parser)
    raise SystemExit(main(_parser.parse_args()))
