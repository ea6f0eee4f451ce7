"""The emulated device's side of motor safety: DEV_DISABLE and host silence make it stop actuating.

The device model (:class:`runtime.testing.DeviceModel`) is driven directly with
made-up ``now`` values: deterministic and fast, no sleeps. One test puts a model
on a real pseudo-terminal (:class:`runtime.testing.PtyDevice`) and waits,
frame by frame, for the stop a quiet host causes.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import time
from collections.abc import Iterator

import pytest

from runtime import catalog
from runtime.buffer import DeviceBuffer, DeviceUID, Parameter
from runtime.messaging import DELIM, FrameSplitter, Message, MessageType
from runtime.testing.device import HOST_SILENCE_HEARTBEATS, DeviceModel
from runtime.testing.emulator import PtyDevice

pytestmark = pytest.mark.timeout(30)

HEARTBEAT = 0.5
"""The host heartbeat interval of the test types."""

# Actuators with safe values (one float32 whose safe value float32 cannot hold exactly), and configuration.
Motor: type[DeviceBuffer] = DeviceBuffer.make_type(
    "safety-motor",
    [
        Parameter("speed", ctypes.c_float, 0, lower=-1, upper=1, writeable=True, safe=0.0),
        Parameter("brake", ctypes.c_bool, 1, writeable=True, safe=True),
        Parameter("servo", ctypes.c_float, 2, lower=-1, upper=1, writeable=True, safe=0.1),
        Parameter("gain", ctypes.c_float, 3, lower=0, writeable=True),
        Parameter("position", ctypes.c_float, 4, writeable=True),
        Parameter("sensor", ctypes.c_double, 5),
        Parameter("setpoint", ctypes.c_float, 6, writeable=True, readable=False, safe=0.0),  # write-only
    ],
    device_id=0x7E01,
    heartbeat_interval=HEARTBEAT,
)

# The same kind of device from a catalog that marks no actuator.
Unmarked: type[DeviceBuffer] = DeviceBuffer.make_type(
    "unmarked-motor",
    [
        Parameter("speed", ctypes.c_float, 0, lower=-1, upper=1, writeable=True),
        Parameter("threshold", ctypes.c_float, 1, lower=2, upper=10, writeable=True),
        Parameter("sensor", ctypes.c_double, 2),
    ],
    device_id=0x7E02,
    heartbeat_interval=HEARTBEAT,
)

LIMIT = HOST_SILENCE_HEARTBEATS * HEARTBEAT
T0 = 100.0
"""When the host first speaks in the model tests (any clock will do)."""


def uid_of(buffer_type: type[DeviceBuffer], n: int = 1) -> int:
    return int(DeviceUID(buffer_type.device_id, 9, n))


@pytest.fixture
def logger() -> logging.Logger:
    log = logging.getLogger("test.emulate_safety")
    log.setLevel(logging.INFO)
    return log


@pytest.fixture
def motor(logger: logging.Logger) -> Iterator[DeviceModel]:
    model = DeviceModel(Motor, uid_of(Motor), seed=1, simulate=False, logger=logger)
    try:
        yield model
    finally:
        model.close()


def host_writes(model: DeviceModel, now: float, **values: object) -> None:
    """The host writes ``values`` (one DEV_WRITE, as the bridge sends it) at ``now``."""
    with type(model.buffer).open("test-host", shared=False) as host:
        for name, value in values.items():
            host.write(name, value)
        for message in host.emit_dev_rw():
            assert model.handle(message, now) == []


def stop_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if "stopped actuating" in record.getMessage()]


def test_the_figure() -> None:
    assert HOST_SILENCE_HEARTBEATS == 3
    model = DeviceModel(Motor, uid_of(Motor), simulate=False)
    try:
        assert model.host_silence_limit == 3 * Motor.heartbeat_interval == LIMIT
    finally:
        model.close()


# ---- DEV_DISABLE ----------------------------------------------------------------------------------


def test_dev_disable_sets_the_safe_values_and_keeps_the_configuration(motor: DeviceModel) -> None:
    host_writes(motor, T0, speed=0.5, brake=False, servo=-0.75, gain=3.0, position=1200.0)
    assert motor.actuating
    assert motor.handle(Message.make_dev_disable(), now=T0 + 0.1) == []
    values = {name: motor.buffer.get(name) for name in ("speed", "brake", "servo", "gain", "position")}
    assert values == {
        "speed": 0.0,
        "brake": True,
        "servo": pytest.approx(0.1),
        "gain": 3.0,  # configuration: kept
        "position": 1200.0,
    }
    assert not motor.actuating  # the float32 safe value counts as safe


def test_a_write_only_actuator_counts_too(motor: DeviceModel) -> None:
    assert not motor.actuating
    host_writes(motor, T0, setpoint=0.3)  # the device cannot report it, but it holds it
    assert motor.actuating
    motor.poll(T0 + LIMIT)
    assert not motor.actuating and motor.host_silence_stops == 1


def test_dev_disable_without_safe_values_resets_every_writeable_parameter(logger: logging.Logger) -> None:
    model = DeviceModel(Unmarked, uid_of(Unmarked), simulate=False, logger=logger)
    try:
        host_writes(model, T0, speed=0.5, threshold=7.0)
        model.handle(Message.make_dev_disable(), now=T0)
        assert model.buffer.get("speed") == 0.0
        assert model.buffer.get("threshold") == 2.0  # the nearest bound to zero
    finally:
        model.close()


def safe_values(buffer_type: type[DeviceBuffer]) -> dict[str, object]:
    return {name: param.safe for name, param in buffer_type.params.items() if param.safe is not None}


def test_dev_disable_sets_the_packaged_catalog_safe_values() -> None:
    marked = {
        name: buffer_type
        for name, buffer_type in catalog.load().items()
        if issubclass(buffer_type, DeviceBuffer) and safe_values(buffer_type)
    }
    if not marked:
        pytest.skip("the packaged catalog has no safe values")
    for type_name, buffer_type in marked.items():
        safe = safe_values(buffer_type)
        model = DeviceModel(buffer_type, uid_of(buffer_type), simulate=False)
        try:
            with buffer_type.open("test-host", shared=False) as host:
                for name, value in safe.items():  # anything else than the safe value
                    if isinstance(value, bool):
                        host.write(name, not value)
                    else:
                        assert isinstance(value, (int, float))
                        upper = buffer_type.params[name].upper
                        host.write(name, value + 1 if value + 1 <= upper else value - 1)
                for message in host.emit_dev_rw():
                    model.handle(message, now=T0)
            assert model.actuating, type_name
            model.handle(Message.make_dev_disable(), now=T0)
            assert {name: model.buffer.get(name) for name in safe} == pytest.approx(safe), type_name
            assert not model.actuating, type_name
        finally:
            model.close()


# ---- host silence ---------------------------------------------------------------------------------


def test_host_silence_stops_actuating_after_three_heartbeats_and_not_before(
    motor: DeviceModel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="test.emulate_safety")
    subscribe = Message.make_sub_req(0b111, 40)  # speed, brake, servo streamed every 40 ms
    motor.handle(subscribe, now=T0)
    host_writes(motor, T0, speed=0.5, brake=False, servo=-0.75, gain=3.0)
    motor.poll(T0)
    assert motor.next_deadline(T0 + LIMIT - 0.01) <= T0 + LIMIT  # the emulator wakes in time
    for now in (T0 + 0.5, T0 + 1.0, T0 + LIMIT - 0.001):
        motor.poll(now)
        assert motor.buffer.get("speed") == 0.5 and motor.actuating, now
    assert stop_lines(caplog) == []

    out = motor.poll(T0 + LIMIT)
    assert motor.buffer.get("speed") == 0.0 and motor.buffer.get("brake") is True
    assert motor.buffer.get("gain") == 3.0  # configuration kept, as on DEV_DISABLE
    assert not motor.actuating and motor.host_silence_stops == 1
    assert stop_lines(caplog) == [
        f"safety-motor {motor.uid:#x}: heard nothing from the host for 1.5 s; stopped actuating"
    ]
    with Motor.open("test-host", shared=False) as host:  # the DEV_DATA of the same poll says so
        for message in out:
            if message.type == MessageType.DEV_DATA:
                host.update(message)
        assert host.get("speed") == 0.0 and host.get("brake") is True

    # Once: nothing more while the host stays silent, even if something actuates again.
    motor.buffer.set("speed", -0.25)
    for now in (T0 + LIMIT + 0.5, T0 + 10 * LIMIT, T0 + 1000.0):
        motor.poll(now)
    assert motor.buffer.get("speed") == -0.25 and motor.host_silence_stops == 1
    assert len(stop_lines(caplog)) == 1


def test_a_device_never_talked_to_never_stops(motor: DeviceModel, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="test.emulate_safety")
    motor.buffer.set("speed", 0.5)  # set locally, as a test may
    for now in (0.0, LIMIT, 10 * LIMIT, 1000.0):
        motor.poll(now)
    assert motor.buffer.get("speed") == 0.5 and motor.host_silence_stops == 0
    assert stop_lines(caplog) == []


def test_host_silence_with_nothing_actuating_does_nothing(
    motor: DeviceModel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="test.emulate_safety")
    host_writes(motor, T0, speed=0.0, brake=True, servo=0.1, gain=2.0)  # all safe already
    motor.poll(T0 + 10 * LIMIT)
    assert motor.host_silence_stops == 0 and stop_lines(caplog) == []
    assert motor.buffer.get("gain") == 2.0


def test_hearing_the_host_again_rearms_the_stop(motor: DeviceModel, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="test.emulate_safety")
    host_writes(motor, T0, speed=0.5)
    motor.poll(T0 + LIMIT)
    assert motor.buffer.get("speed") == 0.0 and motor.host_silence_stops == 1

    later = T0 + 10.0
    host_writes(motor, later, speed=0.4)  # the host is back and commands again
    assert motor.next_deadline(later) <= later + LIMIT
    # Heartbeat answers and even frames that do not decode are the host speaking: each re-arms.
    motor.handle(Message.make_hb_res(3), now=later + 1.0)
    assert motor.receive(b"\x05\x01\x02", now=later + 2.0)[0].type == MessageType.ERROR
    motor.poll(later + 2.0 + LIMIT - 0.001)
    assert motor.buffer.get("speed") == pytest.approx(0.4)
    motor.poll(later + 2.0 + LIMIT)
    assert motor.buffer.get("speed") == 0.0 and motor.host_silence_stops == 2
    assert len(stop_lines(caplog)) == 2


def test_host_silence_counts_on_while_unplugged(motor: DeviceModel) -> None:
    host_writes(motor, T0, speed=0.5)
    motor.forget_host()  # the link dropped: the host cannot speak
    motor.poll(T0 + LIMIT)
    assert motor.buffer.get("speed") == 0.0


def test_host_silence_leaves_a_type_without_safe_values_alone(logger: logging.Logger) -> None:
    model = DeviceModel(Unmarked, uid_of(Unmarked), simulate=False, logger=logger)
    try:
        host_writes(model, T0, speed=0.5, threshold=7.0)
        assert not model.actuating  # nothing is marked as an actuator
        model.poll(T0 + 10 * LIMIT)
        assert model.buffer.get("speed") == 0.5 and model.buffer.get("threshold") == 7.0
    finally:
        model.close()


# ---- on a real pseudo-terminal ----------------------------------------------------------------------

FAST = 0.1
"""The host heartbeat interval of the pseudo-terminal test: silence stops the device after 0.3 s."""

FastMotor: type[DeviceBuffer] = DeviceBuffer.make_type(
    "fast-safety-motor",
    [
        Parameter("speed", ctypes.c_float, 0, lower=-1, upper=1, writeable=True, safe=0.0),
        Parameter("gain", ctypes.c_float, 1, lower=0, writeable=True),
    ],
    device_id=0x7E03,
    heartbeat_interval=FAST,
)


def test_an_emulated_device_on_a_pty_stops_when_its_host_goes_quiet() -> None:
    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        model = DeviceModel(FastMotor, uid_of(FastMotor), seed=3, simulate=False)
        device = PtyDevice(model)
        serving = loop.create_task(device.run())
        host_fd = os.open(device.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        splitter = FrameSplitter()
        reports: asyncio.Queue[dict[str, object]] = asyncio.Queue()
        view = FastMotor.attach("test-pty-host", shared=False)

        def on_readable() -> None:
            try:
                data = os.read(host_fd, 4096)
            except BlockingIOError:
                return
            for frame in splitter.feed(data):
                message = Message.decode(frame)
                if message.type == MessageType.DEV_DATA:
                    view.update(message)
                    reports.put_nowait(view.get_update())

        async def report_where(predicate: str, value: float) -> dict[str, object]:
            while True:
                report = await asyncio.wait_for(reports.get(), timeout=5.0)
                if report.get(predicate) == value:
                    return report

        loop.add_reader(host_fd, on_readable)
        try:
            with FastMotor.open("test-pty-commander", shared=False) as host:
                host.write("speed", 0.5)
                host.write("gain", 2.0)
                frames = [Message.make_sub_req(0b11, 20), *host.emit_dev_rw()]
            os.write(host_fd, b"".join(message.encode() + DELIM for message in frames))
            quiet_since = time.monotonic()  # the host's last word
            await report_where("speed", 0.5)
            assert model.host_silence_stops == 0
            await report_where("speed", 0.0)  # then nothing more from the host: the device stops
            stopped_after = time.monotonic() - quiet_since
            assert model.host_silence_stops == 1 and model.buffer.get("gain") == 2.0
            return stopped_after
        finally:
            loop.remove_reader(host_fd)
            os.close(host_fd)
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)
            device.close()
            view.close()
            model.close()

    stopped_after = asyncio.run(scenario())
    assert stopped_after >= HOST_SILENCE_HEARTBEATS * FAST  # not before the limit
