"""Tests of ``runtime bridge`` and ``runtime emulate``.

End to end: the bridge and the emulator run as real processes on real
pseudo-terminals, and the test watches the shared-memory buffers the bridge
keeps (or plays the device itself on a pty it drives). Unit level: the
emulator's protocol logic (:class:`runtime.testing.DeviceModel`) and the
bridge's helpers, without processes.

Every wait is a poll loop with a deadline; every child is killed in a finally.
Segments live in a namespace of their own, unlinked at the end of the module.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import e2e
import pytest
from e2e import (
    CATALOG,
    POT,
    SERVO,
    Children,
    FakeDeviceBase,
    children_fixture,
    make_uid,
    namespace_fixture,
    open_buffer,
    read_json,
    stats_entry,
    sub_res,
    wait_for,
)

from runtime.buffer import BufferStore, DeviceBuffer, DeviceBufferError, DeviceUID
from runtime.link import FrameWriter
from runtime.messaging import DELIM, ErrorCode, Message, MessageType
from runtime.testing import HEARTBEAT_INTERVAL, MOTOR_TICKS_PER_SECOND, DeviceModel, dev_data
from runtime.tools import emulate as emulator
from runtime.values import jsonable

# slow: end to end: a real bridge and emulator processes on pseudo-terminals
pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

YOGI: type[DeviceBuffer] = CATALOG["yogi-bear"]  # type: ignore[assignment]
SWITCH: type[DeviceBuffer] = CATALOG["limit-switch"]  # type: ignore[assignment]


# ---- helpers ------------------------------------------------------------------------------------


namespace = namespace_fixture("rt-test-bridge")
children = children_fixture()
store = e2e.store


def segment_inode(buffer: DeviceBuffer) -> int:
    return os.stat(f"/dev/shm/{buffer.name}").st_ino


class FakeDevice(FakeDeviceBase):
    """The test playing a Smart Device on a pty whose slave end the bridge opens."""

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def send_message(self, message: Message) -> None:
        self.send(message.encode() + DELIM)

    def expect(
        self, kind: MessageType, timeout: float = 5.0, where: Callable[[Message], bool] | None = None
    ) -> Message:
        """Wait for a message of this type (and condition), dropping everything before it."""
        deadline = time.monotonic() + timeout
        while True:
            while self.inbox:
                message = self.inbox.pop(0)
                if message.type == kind and (where is None or where(message)):
                    return message
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {kind.name} from the bridge within {timeout} s")
            self._receive(min(remaining, 0.1))

    def introduce(self, uid: int, params: int = 0, interval_ms: int = 0) -> None:
        """Answer the next PING with a SUB_RES carrying ``uid``."""
        self.expect(MessageType.PING)
        self.send_message(sub_res(uid, params, interval_ms))


def host_view(buffer_type: type[DeviceBuffer], messages: list[Message]) -> dict[str, Any]:
    """The values a host would take from DEV_DATA ``messages`` (decoded by a local buffer)."""
    with buffer_type.open("test-host-view", shared=False) as host:
        for message in messages:
            host.update(message)
        return host.get_update()


def encode_raw(raw: bytes) -> bytes:
    """COBS-encode arbitrary bytes (for frames the library refuses to build)."""
    out = bytearray()
    for block in raw.split(b"\0"):
        out += bytes([len(block) + 1]) + block
    return bytes(out)


# ---- end to end ---------------------------------------------------------------------------------


def test_emulated_devices_through_the_bridge(children: Children, store: BufferStore, tmp_path: Path) -> None:
    """Values flow, writes come back, a killed device goes invalid, the same UID comes back valid."""
    yogi_uid, pot_uid = make_uid(YOGI), make_uid(POT)
    links = tmp_path / "links"
    devices = [f"yogi-bear:{yogi_uid:#x}", f"potentiometer:{pot_uid}"]
    emulated, lines = children.emulate(*devices, "--link", str(links), count=2)
    assert [line[:2] for line in lines] == [
        ["yogi-bear", f"{yogi_uid:#x}"],
        ["potentiometer", f"{pot_uid:#x}"],
    ]
    assert all(line[2].startswith("/dev/") and os.path.realpath(line[3]) == line[2] for line in lines)
    assert lines[0][3] == str(links / "yogi-bear-0")

    stats = tmp_path / "stats.json"
    bridge_process = children.start("runtime.tools.bridge", "--glob", f"{links}/*", "--stats", str(stats))
    yogi = open_buffer(store, yogi_uid)
    pot = open_buffer(store, pot_uid)
    wait_for("the yogi-bear to be valid", lambda: yogi.valid)
    wait_for("potentiometer values", lambda: pot.valid and pot.last_update > 0)
    assert yogi.uid == yogi_uid and pot.uid == pot_uid
    assert pot.subscription == {"pot0", "pot1", "pot2"} and pot.interval == POT.sub_interval

    # Sensor values move and stay in 0..1.
    first = pot.snapshot()
    wait_for("potentiometer values to change", lambda: pot.snapshot() != first, timeout=5)
    assert all(0.0 <= value <= 1.0 for value in pot.snapshot().values())

    # A write reaches the device and comes back in its DEV_DATA within a second; the motor turns.
    start_pos = yogi.get("enc_pos")
    yogi.write("duty_cycle", 0.5)
    wait_for("duty_cycle to come back", lambda: yogi.get("duty_cycle") == 0.5, timeout=1.0)
    wait_for("enc_pos to follow the duty cycle", lambda: yogi.get("enc_pos") > start_pos + 50, timeout=5)

    entry = wait_for(
        "stats with the written value",
        lambda: (e := stats_entry(stats, yogi_uid)) and e["last_values"].get("duty_cycle") == 0.5 and e,
        timeout=5,
    )
    assert entry["type"] == "yogi-bear" and entry["connected"] is True
    assert entry["port"] == str(links / "yogi-bear-0")
    assert entry["messages_in"] > 0 and entry["messages_out"] > 0 and entry["errors"] == 0

    # Killing the emulator marks the buffers invalid (not unlinked).
    inode = segment_inode(yogi)
    children.stop(emulated, signal.SIGKILL)
    # A killed emulator leaves its links, to pseudo-terminals the system gives the next process that asks
    # (another suite's emulator, on a busy machine): this test removes them, as a supervisor would.
    for link in links.iterdir():
        link.unlink()
    wait_for("the yogi-bear to be invalid", lambda: not yogi.valid, timeout=5)
    wait_for("the potentiometer to be invalid", lambda: not pot.valid, timeout=5)
    with pytest.raises(DeviceBufferError):
        yogi.get("duty_cycle")
    wait_for(
        "stats to show the disconnect", lambda: (e := stats_entry(stats, yogi_uid)) and not e["connected"]
    )

    # The same UIDs come back: the same segments become valid again and values flow.
    emulated, lines = children.emulate(*devices, "--link", str(links), count=2)
    wait_for("the yogi-bear to be valid again", lambda: yogi.valid, timeout=10)
    assert segment_inode(yogi) == inode
    updated = yogi.last_update
    wait_for("fresh values after the reconnect", lambda: yogi.valid and yogi.last_update > updated, timeout=5)
    assert yogi.get("duty_cycle") == 0.0  # a fresh device starts idle
    wait_for("the potentiometer to be valid again", lambda: pot.valid, timeout=10)

    # SIGTERM: the emulator removes its links; the bridge exits 0, invalidates, keeps the segments.
    assert children.stop(emulated) == 0
    assert not list(links.iterdir())
    assert children.stop(bridge_process) == 0, children.log(bridge_process)
    assert not yogi.valid and not pot.valid
    assert segment_inode(yogi) == inode
    final = read_json(stats)
    ours = (
        [entry for entry in final["devices"] if int(entry["uid"], 16) in (yogi_uid, pot_uid)] if final else []
    )
    assert {entry["type"] for entry in ours} == {"yogi-bear", "potentiometer"}
    assert not any(entry["connected"] for entry in ours)
    log = children.log(bridge_process)
    assert f"yogi-bear {yogi_uid:#x} on {links / 'yogi-bear-0'}: connected" in log
    assert "disconnected" in log


def test_bridge_survives_a_misbehaving_device(children: Children, store: BufferStore, tmp_path: Path) -> None:
    """The test plays the device: garbage is answered with ERRORs, and the bridge carries on."""
    device, stranger = FakeDevice(), FakeDevice()
    try:
        stats = tmp_path / "stats.json"
        process = children.start(
            "runtime.tools.bridge", "--port", device.path, "--port", stranger.path, "--stats", str(stats)
        )
        # A device the catalog does not know: logged, its port ignored; the other device is unaffected.
        stranger.introduce(int(DeviceUID(0xBEEF, 1, 1)))
        uid = make_uid(SERVO)
        device.introduce(uid)
        servo = open_buffer(store, uid)
        wait_for("the servo to be valid", lambda: servo.valid)
        request = device.expect(MessageType.SUB_REQ)
        assert request.read_sub_req() == (0b11, 40)
        device.send_message(sub_res(uid, 0b11, 40))
        wait_for("the stranger to be logged", lambda: "unknown device id 48879" in children.log(process))
        assert not [m for m in stranger.collect(0.5) if m.type == MessageType.PING], "stranger still pinged"

        # Garbage of every kind, then one valid DEV_DATA.
        bad_checksum = bytearray(Message.make_hb_req(1).encode())
        bad_checksum[-1] ^= 0x01
        wrong_length = Message(MessageType.DEV_DATA, b"\x01\x00\x00").encode()  # servo0 needs 4 bytes
        garbage = [
            b"\x05\x01\x02",  # COBS says 4 more bytes: undecodable
            bytes(bad_checksum),
            encode_raw(bytes([0x42, 0x00, 0x42])),  # no such message type
            b"\x7f" * 300,  # longer than any frame
            wrong_length,
        ]
        device.send(DELIM.join(garbage) + DELIM)
        errors = [m for m in device.collect(0.5) if m.type == MessageType.ERROR]
        assert sorted(m.read_error() for m in errors) == sorted(
            [
                ErrorCode.UNEXPECTED_DELIMITER,
                ErrorCode.BAD_CHECKSUM,
                ErrorCode.INVALID_TYPE,
                ErrorCode.BUFFER_OVERFLOW,
                ErrorCode.GENERIC_ERROR,
            ]
        )
        with SERVO.open("test-fake-servo", shared=False) as local:
            local.set("servo0", 0.25)
            for message in local.emit_dev_data():
                device.send_message(message)
        wait_for("the value after the garbage", lambda: servo.get("servo0") == 0.25, timeout=2)

        # Heartbeats both ways, and writes go out as DEV_WRITE.
        device.send_message(Message.make_hb_req(42))  # the last thing this device says for a while
        last_said = time.monotonic()
        device.expect(MessageType.HB_RES, where=lambda m: m.read_hb_res() == 42)
        device.expect(MessageType.HB_REQ, timeout=3)
        servo.write("servo1", -0.5)
        with SERVO.open("test-fake-servo", shared=False) as local:
            local.update(device.expect(MessageType.DEV_WRITE, timeout=2))
            assert local.get_write() == {"servo1": -0.5}
        servo.read(["servo0"])
        assert device.expect(MessageType.DEV_READ, timeout=2).read_dev_read() == 0b01

        entry = wait_for(  # the file is rewritten every second: wait for one written after the value
            "stats with the errors and the value",
            lambda: (e := stats_entry(stats, uid)) and e["errors"] >= 5 and e["last_values"]["servo0"] and e,
        )
        assert entry["connected"] is True and entry["last_values"]["servo0"] == 0.25

        # Silence for three heartbeats: the device counts as gone; the bridge then pings the port again.
        wait_for("the silent servo to be invalid", lambda: not servo.valid, timeout=6)
        assert time.monotonic() - last_said > 2.9  # three heartbeat intervals of 1 s
        device.splitter.reset()
        device.inbox.clear()
        device.introduce(uid)
        wait_for("the servo to be valid again", lambda: servo.valid, timeout=5)
        assert process.poll() is None
        device.inbox.clear()
        assert children.stop(process) == 0
        device.expect(MessageType.DEV_DISABLE, timeout=2)  # safety at shutdown
        assert not servo.valid
        assert "silent" in children.log(process)
    finally:
        device.close()
        stranger.close()


def test_verbose_bridge_logs_every_frame_both_ways(children: Children, store: BufferStore) -> None:
    """--verbose: the frames the pump handles and answers by itself are logged too, and still applied."""
    device = FakeDevice()
    try:
        process = children.start("runtime.tools.bridge", "--port", device.path, "--verbose")
        uid = make_uid(SERVO)
        device.introduce(uid)
        servo = open_buffer(store, uid)
        wait_for("the servo to be valid", lambda: servo.valid)
        device.send_message(sub_res(uid, 0b11, 40))
        device.send_message(dev_data(SERVO, servo0=0.5))
        wait_for("the value", lambda: servo.get("servo0") == 0.5)
        device.send_message(Message.make_hb_req(42))
        device.expect(MessageType.HB_RES, where=lambda m: m.read_hb_res() == 42)
        frame = dev_data(SERVO, servo0=0.5).encode().hex(" ")
        answer = Message.make_hb_res(42).encode().hex(" ")
        wait_for("the frames in the log", lambda: f"<- {frame}" in (log := children.log(process)) and log)
        wait_for(
            "the answer in the log", lambda: f"-> {answer} (answered by the pump)" in children.log(process)
        )
    finally:
        device.close()


def _wakeups(pid: int) -> int:
    """How many times the main thread of process ``pid`` went to sleep and was woken (context switches)."""
    with open(f"/proc/{pid}/task/{pid}/status", encoding="ascii") as status:
        return sum(int(line.split()[1]) for line in status if "ctxt_switches" in line)


def test_sensor_frames_do_not_wake_the_bridges_python(children: Children, store: BufferStore) -> None:
    """500 DEV_DATA, one per write as a USB link delivers them: all applied, and the interpreter's
    thread hardly wakes (the frame pump's thread applies them); per-frame Python would wake it 500 times."""
    device = FakeDevice()
    try:
        process = children.start("runtime.tools.bridge", "--port", device.path)
        uid = make_uid(SERVO)
        device.introduce(uid)
        servo = open_buffer(store, uid)
        wait_for("the servo to be valid", lambda: servo.valid)
        device.expect(MessageType.SUB_REQ)
        device.send_message(sub_res(uid, 0b11, 40))
        frames = [dev_data(SERVO, servo0=k / 512).encode() + DELIM for k in range(500)]
        before = _wakeups(process.pid)
        for frame in frames:
            device.send(frame)
            time.sleep(0.001)
        wait_for("the last value", lambda: servo.get("servo0") == 499 / 512)
        woken = _wakeups(process.pid) - before
        assert woken < 50, f"the bridge's main thread woke {woken} times for 500 frames"
    finally:
        device.close()


def test_bridge_survives_emulated_noise(children: Children, store: BufferStore, tmp_path: Path) -> None:
    """An emulator sending noise on its link (hidden --garbage option) never stops the bridge."""
    uid = make_uid(SWITCH)
    emulated, lines = children.emulate(f"limit-switch:{uid:#x}", "--garbage", "0.1", count=1)
    stats = tmp_path / "stats.json"
    process = children.start("runtime.tools.bridge", "--port", lines[0][2], "--stats", str(stats))
    switch = open_buffer(store, uid)
    wait_for("the switch to be valid", lambda: switch.valid)
    wait_for("errors counted", lambda: (e := stats_entry(stats, uid)) and e["errors"] >= 6, timeout=10)
    updated = switch.last_update
    wait_for("values still flowing", lambda: switch.last_update > updated + 0.2, timeout=5)
    assert switch.valid and process.poll() is None and emulated.poll() is None
    assert children.stop(process) == 0


def test_emulator_rejects_a_uid_of_another_type(children: Children) -> None:
    """The UID's device_id must be the type's: a clear error and exit code 2."""
    process = children.start("runtime.tools.emulate", f"servo-motor:{make_uid(YOGI):#x}")
    assert process.wait(15) == 2
    assert "device_id 10, but servo-motor has device_id 7" in children.log(process)


# ---- the emulator's protocol logic, without processes -------------------------------------------


@pytest.fixture
def servo_model() -> Iterator[DeviceModel]:
    model = DeviceModel(SERVO, make_uid(SERVO), seed=1)
    try:
        yield model
    finally:
        model.close()


def test_model_answers_ping_and_subscribes(servo_model: DeviceModel) -> None:
    parts = DeviceUID.from_int(servo_model.uid)
    (answer,) = servo_model.handle(Message.make_ping(), now=0.0)
    assert answer.type == MessageType.SUB_RES
    assert answer.read_sub_res() == (0, 0, (parts.device_id, parts.year, parts.random))
    assert servo_model.poll(0.0) == []  # nothing streamed before a subscription

    (answer,) = servo_model.handle(Message.make_sub_req(0b11, 10), now=1.0)
    assert answer.read_sub_res()[:2] == (0b11, 40)  # clamped to 40..250 ms
    streamed = [m for m in servo_model.poll(1.0) if m.type == MessageType.DEV_DATA]
    assert host_view(SERVO, streamed) == {"servo0": 0.0, "servo1": 0.0}
    assert [m for m in servo_model.poll(1.02) if m.type == MessageType.DEV_DATA] == []
    assert len([m for m in servo_model.poll(1.04) if m.type == MessageType.DEV_DATA]) == 1

    (answer,) = servo_model.handle(Message.make_sub_req(0b01, 1000), now=2.0)
    assert answer.read_sub_res()[:2] == (0b01, 250)
    (answer,) = servo_model.handle(Message.make_sub_req(0b01, 0), now=3.0)
    assert answer.read_sub_res()[1] == 0
    assert [m for m in servo_model.poll(5.0) if m.type == MessageType.DEV_DATA] == []


def test_model_reads_writes_heartbeats_and_disables() -> None:
    model = DeviceModel(YOGI, make_uid(YOGI), seed=2)
    try:
        with YOGI.open("test-host", shared=False) as host:
            host.write("duty_cycle", 0.75)
            host.write("pid_pos_kp", 3.0)  # write-only: applied, never reported
            for message in host.emit_dev_rw():
                assert model.handle(message, now=0.0) == []
            assert model.buffer.get("duty_cycle") == 0.75
            assert model.buffer.get_write() == {}

            host.read(["duty_cycle", "enc_pos"])
            answers = [answer for message in host.emit_dev_rw() for answer in model.handle(message, now=0.0)]
            values = host_view(YOGI, answers)
            assert values.keys() == {"duty_cycle", "enc_pos"} and values["duty_cycle"] == 0.75

        # The motor turns with the duty cycle.
        model.poll(0.0)
        before = model.buffer.get("enc_pos")
        model.poll(0.5)
        assert model.buffer.get("enc_pos") == pytest.approx(before + 0.75 * MOTOR_TICKS_PER_SECOND * 0.5)

        (answer,) = model.handle(Message.make_hb_req(9), now=1.0)
        assert answer.type == MessageType.HB_RES and answer.read_hb_res() == 9
        beats = [m for m in model.poll(0.5 + HEARTBEAT_INTERVAL + 0.01) if m.type == MessageType.HB_REQ]
        assert len(beats) == 1

        assert model.handle(Message.make_dev_disable(), now=2.0) == []
        assert model.buffer.get("duty_cycle") == 0.0
    finally:
        model.close()


def test_model_answers_bad_input_with_errors(servo_model: DeviceModel) -> None:
    (answer,) = servo_model.receive(b"\x05\x01\x02", now=0.0)
    assert answer.read_error() == ErrorCode.UNEXPECTED_DELIMITER
    (answer,) = servo_model.handle(Message(MessageType.DEV_WRITE, b"\x01\x00\x00"), now=0.0)
    assert answer.read_error() == ErrorCode.GENERIC_ERROR
    (answer,) = servo_model.handle(Message.make_sub_res(0, 0, 7, 0, 0), now=0.0)
    assert answer.read_error() == ErrorCode.INVALID_TYPE
    assert servo_model.handle(Message.make_error(ErrorCode.BACKOFF), now=0.0) == []  # never answer an ERROR
    assert servo_model.errors == 3


@pytest.mark.parametrize(
    "type_name", ["limit-switch", "line-follower", "potentiometer", "encoder", "battery", "rfid"]
)
def test_simulated_sensors_move(type_name: str) -> None:
    buffer_type: type[DeviceBuffer] = CATALOG[type_name]  # type: ignore[assignment]
    model = DeviceModel(buffer_type, make_uid(buffer_type), seed=3)
    try:
        seen = [model.buffer.snapshot()]
        for step in range(1, 201):  # ten simulated seconds
            model.poll(step * 0.05)
            seen.append(model.buffer.snapshot())
        changed = {name for name in seen[0] if len({snapshot[name] for snapshot in seen}) > 1}
        assert changed, f"no {type_name} value moved"
        if type_name in ("line-follower", "potentiometer"):
            assert all(0.0 <= value <= 1.0 for snapshot in seen for value in snapshot.values())
        if type_name == "battery":
            assert all(10.5 < snapshot["v_batt"] < 12.6 and snapshot["calibrated"] for snapshot in seen)
    finally:
        model.close()


def test_parse_device() -> None:
    spec = emulator.parse_device("encoder", CATALOG, random.Random(5))
    assert spec.buffer_type is CATALOG["encoder"] and spec.uid >> 72 == 3
    uid = make_uid(SERVO)
    assert emulator.parse_device(f"servo-motor:{uid}", CATALOG).uid == uid
    assert emulator.parse_device(f"servo-motor:{uid:#x}", CATALOG).uid == uid
    for text, problem in [
        ("servo-motor:0x1", "device_id 0, but servo-motor has device_id 7"),
        ("servo-motor:seven", "must be an integer"),
        ("gamepad", "not a Smart Device"),
        ("toaster", "unknown device type"),
    ]:
        with pytest.raises(ValueError, match=problem):
            emulator.parse_device(text, CATALOG)


# ---- the bridge's helpers -----------------------------------------------------------------------


def test_frame_writer_queues_instead_of_blocking() -> None:
    """A peer that stops reading must not block the loop: data is queued, then dropped whole."""

    async def scenario() -> None:
        read_end, write_end = os.pipe()
        os.set_blocking(write_end, False)
        try:
            writer = FrameWriter(write_end, limit=1024)
            chunk = b"x" * 4096
            while writer.pending == 0:  # fill the pipe
                assert writer.send(chunk)
            assert not writer.send(b"y" * 2048) and writer.dropped == 1
            received = bytearray()
            while writer.pending:
                received += os.read(read_end, 1 << 20)
                await asyncio.sleep(0.01)
            assert set(received) <= {ord("x")}
            writer.close()
        finally:
            os.close(read_end)
            os.close(write_end)

    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_stats_values_are_plain_json() -> None:
    assert jsonable(float("nan")) is None
    assert jsonable(b"tag") == "tag"
    assert jsonable((1, 2.5, True)) == [1, 2.5, True]
