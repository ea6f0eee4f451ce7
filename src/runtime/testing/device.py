"""The device side of the Smart Device protocol, without hardware and without I/O.

A :class:`DeviceModel` is one emulated Smart Device: give it the frames (or
messages) a host sends and it returns the answers a real device would send;
call :meth:`DeviceModel.poll` now and then for the values it streams once
subscribed and for its heartbeats. It keeps its state in a process-local
:class:`~runtime.buffer.DeviceBuffer` of the device type and uses the buffer's
own protocol support. A :class:`Simulator` moves the sensor values plausibly
over time (switches toggle, encoders count, battery voltages drift, motor
positions follow the duty cycle).

The model does no I/O, so it is deterministic for a given seed and clock: test
a host's protocol logic by feeding it, or put it on a pseudo-terminal with
:meth:`runtime.testing.FakeDevice.serve` (in-process) or ``runtime emulate``
(a process).

>>> from runtime import catalog
>>> from runtime.messaging import Message, MessageType
>>> servo = catalog.load()["servo-motor"]
>>> model = DeviceModel(servo, 0x07_01_0000000000000042, seed=1, simulate=False)
>>> (answer,) = model.handle(Message.make_ping(), now=0.0)       # who are you?
>>> answer.type.name, answer.read_sub_res()
('SUB_RES', (0, 0, (7, 1, 66)))
>>> host = servo.attach("host", shared=False)                  # the host's side of the buffer
>>> _ = model.handle(host.make_sub_req(interval=0.04), now=0.0)  # subscribe to every 40 ms
>>> [message.type.name for message in model.poll(now=0.0)]      # the subscribed values stream
['DEV_DATA']
>>> model.close()
>>> host.close()
"""

from __future__ import annotations

import ctypes
import datetime
import logging
import math
import random
from collections.abc import Callable, Mapping
from typing import Any

from ..buffer import DeviceBuffer, DeviceUID, Parameter
from ..messaging import ErrorCode, Message, MessageError, MessageType
from ..values import BOOL, FLOAT, INTEGER, kind_of

__all__ = [
    "FIRST_SEASON",
    "HEARTBEAT_INTERVAL",
    "HOST_SILENCE_HEARTBEATS",
    "MOTOR_TICKS_PER_SECOND",
    "SIM_STEP",
    "DeviceModel",
    "Simulator",
    "random_uid",
]

_default_logger = logging.getLogger("runtime.testing.device")

SIM_STEP = 0.05
"""Seconds between two simulation steps."""
HEARTBEAT_INTERVAL = 1.0
"""Seconds between the heartbeats an emulated device sends to the host."""
HOST_SILENCE_HEARTBEATS = 3
"""Host heartbeat intervals (the device type's ``heartbeat_interval``) of silence after which a device
that has heard from the host stops actuating, as on DEV_DISABLE (see :meth:`DeviceModel.poll`).
Three, like the bridge's ``SILENCE_HEARTBEATS`` for a silent device: one or two lost heartbeats
are a flaky link, three are a host that is gone."""
FIRST_SEASON = 2016
"""The calendar year of UID year 0 (the spring 2016 season)."""
MOTOR_TICKS_PER_SECOND = 2000.0
"""Encoder ticks per second of an emulated motor at full duty cycle."""


def random_uid(device_id: int, rng: random.Random | None = None) -> int:
    """A fresh UID for a device type: this season's year and 64 random bits (from ``rng`` if given).

    >>> uid = random_uid(10, random.Random(1))
    >>> uid >> 72, DeviceUID.from_int(uid).device_id
    (10, 10)
    """
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
        kind = kind_of(ctype)
        if kind == BOOL:
            self._add_toggle(param.name)
        elif kind == FLOAT:
            self._add_wander(param)
        elif kind == INTEGER:
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

    Safety, as real devices do it: the device starts with its actuators (the
    parameters with a ``safe`` value) at their safe values; DEV_DISABLE stops
    actuating (:meth:`disable`: the actuators go back to them), and so does
    host silence: once the device has heard from the host, hearing nothing
    from it (no frame at all) for :data:`HOST_SILENCE_HEARTBEATS` of the
    type's ``heartbeat_interval`` (:attr:`host_silence_limit`) while
    :attr:`actuating` makes :meth:`poll` call :meth:`disable`, once, with one
    log line; the next frame from the host re-arms it. A device never talked
    to does nothing, and the silence counts on while the device is unplugged
    (:meth:`forget_host`), as a real device loses its power.

    Args:
        buffer_type: The device type (a :class:`~runtime.buffer.DeviceBuffer` subclass).
        uid: The device's 88-bit UID; its device_id must be the type's (``ValueError``).
        seed: Seeds the simulation (None: random).
        simulate: Whether sensor values move over time.
        logger: Where the model logs protocol events (subscriptions and safety stops at INFO, bad
            input at DEBUG); default ``runtime.testing.device``.

    Attributes:
        buffer: The device's own values (process-local): ``buffer.set(...)`` changes what it reports.
        host_silence_limit: Seconds of host silence after which the device stops actuating.

    >>> from runtime import catalog
    >>> yogi = catalog.load()["yogi-bear"]
    >>> model = DeviceModel(yogi, random_uid(yogi.device_id), seed=2, simulate=False)
    >>> model.buffer.set("enc_pos", 1200.0)          # what the device will report
    >>> host = yogi.attach("host", shared=False)     # the host's side, as the bridge keeps it
    >>> [answer.type.name for answer in model.handle(host.make_sub_req(["enc_pos"], 0.04), now=0.0)]
    ['SUB_RES']
    >>> for message in model.poll(now=0.0):
    ...     host.update(message)
    >>> host.get("enc_pos")
    1200.0
    >>> host.close()
    >>> model.close()
    """

    def __init__(
        self,
        buffer_type: type[DeviceBuffer],
        uid: int,
        *,
        seed: int | None = None,
        simulate: bool = True,
        logger: logging.Logger | None = None,
    ) -> None:
        parts = DeviceUID.from_int(uid)
        if parts.device_id != buffer_type.device_id:
            raise ValueError(
                f"UID {uid:#x} has device_id {parts.device_id}, but a {buffer_type.type_name} has "
                f"device_id {buffer_type.device_id}"
            )
        self.uid = uid
        self.logger = logger if logger is not None else _default_logger
        self.type_name = buffer_type.type_name
        self.buffer: DeviceBuffer = buffer_type.attach(f"emulated-{self.type_name}-{uid:x}", shared=False)
        self.buffer.uid = uid
        self.rng = random.Random(seed)
        self.host_silence_limit = HOST_SILENCE_HEARTBEATS * float(buffer_type.heartbeat_interval)
        self.host_silence_stops = 0
        """Times the device stopped actuating because the host went silent."""
        # The actuators and their safe values as the buffer stores them (a float32 0.1 is not 0.1).
        self._safe: dict[str, Any] = {
            name: self.buffer.params[name].platform_type(safe).value
            for name, safe in self.buffer.safe_values().items()
        }
        # What the write-only actuators hold (the buffer cannot get them).
        self._write_only: dict[str, Any] = {
            name: safe for name, safe in self._safe.items() if not self.buffer.params[name].readable
        }
        self._last_heard: float | None = None  # when the host was last heard (None: never)
        self._silence_armed = False  # whether host silence will still stop the device
        if self._safe:
            self.disable()  # a device powers up with its actuators in their safe state
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
        self._heard(now)  # even a damaged frame says the host is there
        try:
            message = Message.decode(frame)
        except MessageError as exc:
            self.errors += 1
            self.logger.debug("%s %#x: bad frame (%s)", self.type_name, self.uid, exc)
            return [Message.make_error(exc.error_code)]
        return self.handle(message, now)

    def handle(self, message: Message, now: float) -> list[Message]:
        """Digest one message from the host; return the answers to send."""
        self.messages_in += 1
        self._heard(now)
        try:
            return self._handle(message, now)
        except MessageError as exc:  # a payload that does not fit its type or this device
            self.errors += 1
            self.logger.debug("%s %#x: bad %s (%s)", self.type_name, self.uid, message.type.name, exc)
            return [Message.make_error(exc.error_code)]

    def _handle(self, message: Message, now: float) -> list[Message]:
        buffer = self.buffer
        kind = message.type
        if kind == MessageType.PING:
            return [buffer.make_sub_res()]
        if kind == MessageType.SUB_REQ:
            buffer.update(message)  # records the readable params and the clamped interval
            self._next_stream = now if buffer.interval > 0 else None
            self.logger.info(
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
                    if name in self._write_only:
                        self._write_only[name] = value
            return []
        if kind == MessageType.DEV_DISABLE:
            self.logger.info("%s %#x: disabled by the host", self.type_name, self.uid)
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

    def _heard(self, now: float) -> None:
        """The host was heard at ``now``: the host-silence stop counts from here (again)."""
        self._last_heard = now
        self._silence_armed = True

    def forget_host(self) -> None:
        """The link dropped: forget the subscription (a re-enumerated device starts unsubscribed).

        The host-silence stop is not disarmed: unplugged for long enough, the device stops actuating.
        """
        self.buffer.update(Message.make_sub_req(0, 0))
        self._next_stream = None

    @property
    def actuating(self) -> bool:
        """Whether a parameter with a safe value (an actuator) holds another value."""
        return any(
            (self._write_only[name] if name in self._write_only else self.buffer.get(name)) != safe
            for name, safe in self._safe.items()
        )

    def disable(self) -> None:
        """Stop actuating, as on DEV_DISABLE: the actuators to their safe values, the configuration kept.

        Every parameter with a ``safe`` value (a motor's duty cycle, a servo's
        position) goes to it; every other parameter keeps its value (PID gains,
        thresholds, encoder positions, LEDs: configuration, which a real device
        keeps). A device type with no safe-valued parameter at all (a catalog
        that does not mark its actuators) falls back to what the emulator did
        before safe values existed: every writeable parameter back to its
        default (zero, or the nearest bound when zero is out of bounds).
        """
        with self.buffer.transaction():
            if self._safe:
                for name, safe in self._safe.items():
                    self.buffer.set(name, safe)
                    if name in self._write_only:
                        self._write_only[name] = safe
                return
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

    def _check_host_silence(self, now: float) -> None:
        """Stop actuating, once, when the host has been silent for :attr:`host_silence_limit`."""
        if not self._silence_armed or self._last_heard is None:
            return
        silent = now - self._last_heard
        if silent < self.host_silence_limit:
            return
        self._silence_armed = False  # once per silence: only a frame from the host re-arms it
        if not self.actuating:
            return
        self.host_silence_stops += 1
        self.logger.info(  # INFO, as "disabled by the host": what a device does, not a fault of the emulator
            "%s %#x: heard nothing from the host for %.1f s; stopped actuating",
            self.type_name,
            self.uid,
            silent,
        )
        self.disable()

    # -- time --

    def poll(self, now: float) -> list[Message]:
        """Advance the simulation to ``now``; return the DEV_DATA and heartbeats now due.

        Also stops actuating when the host has been silent too long (see the class).
        """
        if self.simulator is not None:
            dt = 0.0 if self._last_step is None else min(max(now - self._last_step, 0.0), 1.0)
            self.simulator.step(dt)
        self._last_step = now
        self._check_host_silence(now)
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
        if self._silence_armed and self._last_heard is not None:
            deadline = min(deadline, self._last_heard + self.host_silence_limit)
        return deadline
