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

To test the host, the link can be made flaky (:class:`FaultInjector`, options
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
import ctypes
import dataclasses
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

from .. import catalog as catalog_module
from ..buffer import Buffer, DeviceBuffer, DeviceUID, Parameter
from ..exception import RuntimeBaseException
from ..jsonio import write_json_atomically
from ..link import FrameWriter
from ..messaging import DELIM, ErrorCode, FrameSplitter, Message, MessageError, MessageType

__all__ = [
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

SIM_STEP = 0.05
"""Seconds between two simulation steps."""
HEARTBEAT_INTERVAL = 1.0
"""Seconds between the heartbeats an emulated device sends to the host."""
OUTBOX_LIMIT = 4096
"""Bytes an emulated device queues while nobody reads its port (then it drops data, like a UART)."""
DISCONNECT_FOR = 1.0
"""Seconds an emulated disconnect lasts by default."""
STATS_INTERVAL = 0.5
"""Seconds between two writes of the ``--stats`` file."""
FIRST_SEASON = 2016
"""The calendar year of UID year 0 (the spring 2016 season)."""
MOTOR_TICKS_PER_SECOND = 2000.0
"""Encoder ticks per second of an emulated motor at full duty cycle."""


def _seeded(seed: int | None, label: str) -> random.Random:
    """A generator for one purpose: reproducible from ``seed`` (random when None), independent per label."""
    return random.Random(None if seed is None else f"{seed}-{label}")


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
        """Messages received (frames that decoded)."""
        self.errors = 0
        """Frames and messages from the host that were answered with an ERROR."""
        self.errors_received = 0
        """ERROR messages received from the host (its answers to frames it rejected)."""
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
        if kind == MessageType.ERROR:
            self.errors_received += 1
            return []  # never answer an ERROR: no echo loops
        if kind == MessageType.HB_RES:
            return []
        # SUB_RES and DEV_DATA travel from devices to the host only.
        self.errors += 1
        return [Message.make_error(ErrorCode.INVALID_TYPE)]

    def forget_host(self) -> None:
        """The link dropped: forget the subscription (a re-enumerated device starts unsubscribed)."""
        self.buffer.update(Message.make_sub_req(0, 0))
        self._next_stream = None

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


# ---- a flaky link -------------------------------------------------------------------------------

FAULT_KINDS = ("drop", "duplicate", "corrupt", "truncate")
"""What a flaky link does to frames, in the order the decisions are drawn for each frame."""


@dataclasses.dataclass(frozen=True)
class FaultRates:
    """How often a flaky link damages frames: one probability (0..1) per kind, drawn independently per frame.

    * ``drop``: the frame is lost (nothing else happens to it).
    * ``duplicate``: an intact copy of the frame follows it.
    * ``corrupt``: one random bit of the encoded frame flips, never turning a
      byte into 0x00 (so the frame stays one frame). The checksum or the COBS
      structure almost always gives it away; a flipped COBS code byte moves
      zero bytes around, which the 8-bit XOR checksum misses now and then
      (about 1 in 50 corrupted frames of a message full of zeros).
    * ``truncate``: the encoded frame is cut short; its delimiter still follows.

    A frame both corrupted and truncated counts once as *mutated*: each mutated
    frame is exactly one bad frame on the wire.

    >>> FaultRates.parse('drop=0.1,corrupt=0.05')
    FaultRates(drop=0.1, duplicate=0.0, corrupt=0.05, truncate=0.0)
    >>> str(FaultRates.parse('all=0.1'))
    'drop=0.1,duplicate=0.1,corrupt=0.1,truncate=0.1'
    """

    drop: float = 0.0
    duplicate: float = 0.0
    corrupt: float = 0.0
    truncate: float = 0.0

    def __post_init__(self) -> None:
        for kind in FAULT_KINDS:
            rate = getattr(self, kind)
            if not 0.0 <= rate <= 1.0:  # also refuses NaN
                raise ValueError(f"{kind} rate must be in 0..1, not {rate!r}")

    @classmethod
    def parse(cls, text: str) -> FaultRates:
        """Parse ``KIND=RATE[,KIND=RATE...]`` (``all=RATE`` sets every kind; later items win).

        Raises:
            ValueError: Unknown kind, malformed item, or a rate outside 0..1.
        """
        rates: dict[str, float] = {}
        for item in text.split(","):
            item = item.strip()
            if not item:
                continue
            kind, sep, value = item.partition("=")
            kind = kind.strip()
            if not sep:
                raise ValueError(f"{item!r}: expected KIND=RATE")
            if kind != "all" and kind not in FAULT_KINDS:
                raise ValueError(f"{item!r}: unknown fault {kind!r} (known: {', '.join(FAULT_KINDS)}, all)")
            try:
                rate = float(value)
            except ValueError:
                raise ValueError(f"{item!r}: the rate must be a number in 0..1") from None
            for name in FAULT_KINDS if kind == "all" else (kind,):
                rates[name] = rate
        return cls(**rates)

    @property
    def active(self) -> bool:
        """Whether any rate is above zero."""
        return any(getattr(self, kind) > 0 for kind in FAULT_KINDS)

    def __str__(self) -> str:
        return ",".join(f"{kind}={getattr(self, kind):g}" for kind in FAULT_KINDS)


@dataclasses.dataclass
class FaultCounts:
    """What a :class:`FaultInjector` did, frame by frame."""

    frames: int = 0
    """Frames offered to the link."""
    delivered: int = 0
    """Frames the link passed on (``frames - dropped + duplicated``), damaged or not."""
    dropped: int = 0
    duplicated: int = 0
    corrupted: int = 0
    truncated: int = 0
    mutated: int = 0
    """Frames corrupted, truncated or both: each is one bad frame delivered."""

    def to_json(self) -> dict[str, int]:
        """The counts as a JSON object."""
        return dataclasses.asdict(self)


class FaultInjector:
    """Damage frames the way a flaky link does, at the given rates, reproducibly for a given ``rng``.

    Four random numbers are drawn per frame (when any rate is nonzero), so the
    decisions for the n-th frame depend only on the seed, not on the frames'
    contents or timing.

    >>> injector = FaultInjector(FaultRates(truncate=1.0), random.Random(1))
    >>> [len(frame) < 6 for frame in injector.apply(bytes.fromhex('04 13 02 06 02 17'))]
    [True]
    >>> injector.counts.truncated, injector.counts.mutated
    (1, 1)
    """

    def __init__(self, rates: FaultRates, rng: random.Random) -> None:
        self.rates = rates
        self.rng = rng
        self.counts = FaultCounts()

    def apply(self, frame: bytes) -> list[bytes]:
        """What the link delivers for one COBS frame (without delimiter): none, one or two frames."""
        counts = self.counts
        counts.frames += 1
        if not self.rates.active:
            counts.delivered += 1
            return [frame]
        rng, rates = self.rng, self.rates
        drop, duplicate, corrupt, truncate = (
            rng.random() < rate for rate in (rates.drop, rates.duplicate, rates.corrupt, rates.truncate)
        )
        if drop:
            counts.dropped += 1
            return []
        damaged = frame
        if corrupt and frame:
            damaged = self._flip_a_bit(damaged)
            counts.corrupted += 1
        if truncate and len(frame) > 1:
            damaged = damaged[: rng.randrange(1, len(damaged))]
            counts.truncated += 1
        if damaged is not frame:
            counts.mutated += 1
        delivered = [damaged, frame] if duplicate else [damaged]
        counts.duplicated += duplicate
        counts.delivered += len(delivered)
        return delivered

    def _flip_a_bit(self, frame: bytes) -> bytes:
        data = bytearray(frame)
        while True:  # ends soon: only one of the 8 bits of a nonzero byte can turn it into 0x00
            index, bit = self.rng.randrange(len(data)), self.rng.randrange(8)
            if data[index] ^ (1 << bit):  # a 0x00 would be a delimiter: the frame would split
                data[index] ^= 1 << bit
                return bytes(data)


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
        type=_link_directory,
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
        "but forgets its subscription. The first disconnects of several devices are staggered. "
        "0 (default): never",
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
    parser.add_argument("--garbage", type=float, default=0.0, metavar="SECONDS", help=argparse.SUPPRESS)


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


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number of seconds >= 0")
    return value


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
            model = DeviceModel(spec.buffer_type, spec.uid, seed=seed, simulate=not args.still)
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


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(
        prog="python -m runtime.tools.emulate", description="Emulate Smart Devices on pseudo-terminals."
    )
    add_arguments(_parser)
    raise SystemExit(main(_parser.parse_args()))
