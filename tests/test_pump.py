"""Tests of the frame pump (:class:`runtime.link.FramePump`): the bridge's frame path in the core.

Each test drives a real pseudo-terminal: the pump serves the slave end, as the
bridge serves a serial port, and the test plays the device on the master end.
The buffers are process-local (nothing in /dev/shm); every wait has a deadline.
"""

from __future__ import annotations

import os
import select
import signal
import time
import tty
from collections.abc import Iterator
from typing import Any, TypeVar

import pytest
from e2e import SERVO, wait_for

from runtime.buffer import DeviceBuffer
from runtime.link import PORT_EVENT_LIMIT, FramePump, PumpEvent
from runtime.messaging import DELIM, ErrorCode, FrameSplitter, Message, MessageType
from runtime.testing import dev_data as make_dev_data

T = TypeVar("T")


class Link:
    """A pty: the pump reads and writes the slave end; the test is the device on the master end."""

    def __init__(self) -> None:
        self.device, self.host = os.openpty()
        tty.setraw(self.device)
        tty.setraw(self.host)
        os.set_blocking(self.host, False)
        self._splitter = FrameSplitter()

    def send(self, *messages: Message, raw: bytes = b"") -> None:
        os.write(self.device, b"".join(m.encode() + DELIM for m in messages) + raw)

    def receive(self, timeout: float = 2.0) -> list[Message]:
        """The messages the host side sent, waiting up to ``timeout`` for the first one."""
        messages: list[Message] = []
        deadline = time.monotonic() + timeout
        while not messages and (left := deadline - time.monotonic()) > 0:
            if select.select([self.device], [], [], left)[0]:
                messages += [
                    Message.decode(frame) for frame in self._splitter.feed(os.read(self.device, 4096))
                ]
        return messages

    def close(self) -> None:
        for fd in (self.device, self.host):
            try:
                os.close(fd)
            except OSError:
                pass


@pytest.fixture(name="link")
def link_fixture() -> Iterator[Link]:
    """A fresh pseudo-terminal pair (test_pump_writes.py uses it too)."""
    pty = Link()
    yield pty
    pty.close()


@pytest.fixture(name="pump")
def pump_fixture() -> Iterator[FramePump]:
    """A running frame pump, stopped after the test (test_pump_writes.py uses it too)."""
    with FramePump() as frame_pump:
        yield frame_pump


@pytest.fixture
def servo() -> Iterator[DeviceBuffer]:
    with SERVO.open("test-pump-servo", shared=False) as buffer:
        yield buffer


def dev_data(**values: float) -> Message:
    return make_dev_data(SERVO, **values)


def events(pump: FramePump, count: int = 1, timeout: float = 2.0) -> list[tuple[int, PumpEvent, Any]]:
    """At least ``count`` events, waiting for them on the pump's descriptor (as the bridge's loop does)."""
    taken: list[tuple[int, PumpEvent, Any]] = []
    deadline = time.monotonic() + timeout
    while len(taken) < count and (left := deadline - time.monotonic()) > 0:
        select.select([pump.fileno()], [], [], left)
        taken += pump.take_events()
    return taken


def test_dev_data_reaches_the_buffer_without_python(link: Link, pump: FramePump, servo: DeviceBuffer) -> None:
    port = pump.add(link.host)
    pump.attach(port, servo)
    link.send(dev_data(servo0=0.5, servo1=-0.25))
    assert servo.wait_update(2.0)
    assert servo.snapshot() == {"servo0": 0.5, "servo1": -0.25}
    assert servo.get_update() == {"servo0": 0.5, "servo1": -0.25}  # as update() records it
    assert servo.last_update == pytest.approx(time.time(), abs=2)
    assert pump.take_events() == []  # nothing for Python
    assert pump.counters(port).messages_in == 1
    assert pump.last_rx(port) == pytest.approx(time.monotonic(), abs=2)


def test_frames_split_across_reads_and_many_per_read(
    link: Link, pump: FramePump, servo: DeviceBuffer
) -> None:
    port = pump.add(link.host)
    pump.attach(port, servo)
    frame = dev_data(servo0=0.125).encode() + DELIM
    os.write(link.device, frame[:3])
    time.sleep(0.05)  # the scenario: the pump reads the first part of the frame alone
    os.write(link.device, frame[3:] + b"".join(dev_data(servo0=k / 64).encode() + DELIM for k in range(10)))
    wait_for("all 11 frames", lambda: pump.counters(port).messages_in == 11)
    assert servo.get("servo0") == 9 / 64


def test_heartbeats_are_answered_and_noted(link: Link, pump: FramePump) -> None:
    port = pump.add(link.host)
    link.send(Message.make_hb_req(42), Message.make_hb_res(7))
    (answer,) = link.receive()
    assert answer.type == MessageType.HB_RES and answer.read_hb_res() == 42
    wait_for("both counted", lambda: pump.counters(port)[:2] == (2, 1))
    assert pump.take_events() == []


def test_everything_else_goes_to_python_whole(link: Link, pump: FramePump, servo: DeviceBuffer) -> None:
    port = pump.add(link.host)
    early = dev_data(servo0=0.75)  # before a buffer is attached: Python decides
    sub = Message.make_sub_res(0b11, 40, 7, 1, 2)
    link.send(early, sub)
    taken = events(pump, 2)
    assert [(p, e) for p, e, _ in taken] == [(port, PumpEvent.FRAME)] * 2
    assert [Message.decode(data).type for _, _, data in taken] == [MessageType.DEV_DATA, MessageType.SUB_RES]
    pump.attach(port, servo)
    misfit = Message(MessageType.DEV_DATA, b"\x01\x00\x00")  # servo0 needs 4 bytes
    corrupt = bytearray(dev_data(servo0=0.5).encode())
    corrupt[-1] ^= 1
    link.send(
        misfit,
        raw=bytes(corrupt)
        + DELIM
        + b"\x7f" * 300
        + DELIM
        + Message.make_error(ErrorCode.BACKOFF).encode()
        + DELIM,
    )
    taken = events(pump, 4)
    assert [e for _, e, _ in taken] == [PumpEvent.FRAME, PumpEvent.FRAME, PumpEvent.OVERFLOW, PumpEvent.FRAME]
    assert taken[0][2] == misfit.encode() and taken[1][2] == bytes(corrupt)
    assert servo.get("servo0") == 0.0  # none of them reached the buffer
    assert pump.counters(port).messages_in == 0


def test_a_held_lock_holds_values_back_until_it_frees(
    link: Link, pump: FramePump, servo: DeviceBuffer
) -> None:
    port = pump.add(link.host)
    pump.attach(port, servo)
    with servo.transaction():  # this thread holds the lock: the pump's thread must not wait for it
        link.send(dev_data(servo0=0.25, servo1=0.25), dev_data(servo0=0.5))
        taken = events(pump)
        assert [(e, data) for _, e, data in taken] == [(PumpEvent.STALL, 0.0)]
        wait_for("both frames read", lambda: pump.counters(port).messages_in == 2)
        assert servo.get("servo0") == 0.0
        link.send(Message.make_hb_req(1))
        assert [m.type for m in link.receive()] == [MessageType.HB_RES]  # the port is still served
    kinds = [e for _, e, _ in events(pump)]
    assert kinds[-1] == PumpEvent.UNSTALL and set(kinds[:-1]) <= {
        PumpEvent.STALL
    }  # one a second while it lasts
    assert servo.snapshot() == {"servo0": 0.5, "servo1": 0.25}  # the newest of each, none lost
    assert pump.counters(port).lock_stalls == 1


def test_a_port_that_hangs_up_is_lost(link: Link, pump: FramePump) -> None:
    pump.add(link.host)
    os.close(link.device)
    ((_, event, reason),) = events(pump)
    assert event == PumpEvent.LOST and ("end of stream" in reason or "read error" in reason)


def test_writes_queue_when_the_device_does_not_read_and_drop_beyond_the_limit(
    link: Link, pump: FramePump
) -> None:
    port = pump.add(link.host)
    chunk = b"x" * 4096
    sent = 0
    while pump.pending(port) == 0:
        assert pump.send(port, chunk)
        sent += 1
    while pump.send(port, chunk):
        sent += 1
    assert 60 * 1024 <= pump.pending(port) <= 64 * 1024
    received = 0
    deadline = time.monotonic() + 5
    while received < sent * len(chunk):
        assert time.monotonic() < deadline
        if select.select([link.device], [], [], 0.1)[0]:
            received += len(os.read(link.device, 1 << 16))
    assert received == sent * len(chunk) and pump.pending(port) == 0


def test_writes_are_settled_by_the_reports_that_follow(
    link: Link, pump: FramePump, servo: DeviceBuffer
) -> None:
    port = pump.add(link.host)
    pump.attach(port, servo)
    link.send(dev_data(servo0=0.0, servo1=0.0))
    wait_for("the first report", lambda: pump.counters(port).messages_in == 1)
    with SERVO.open("test-pump-host", shared=False) as host:
        host.write("servo0", 0.5)
        host.write("servo1", 0.5)
        (write,) = list(host.emit_dev_rw())
    pump.watch_writes(port, write, 0b11)
    link.send(dev_data(servo0=0.0, servo1=0.0))  # the device has not seen the write yet
    wait_for("the second report", lambda: pump.counters(port).messages_in == 2)
    assert pump.settled(port) == 0
    link.send(dev_data(servo0=0.5, servo1=0.75))  # servo0 as written; servo1 moved by the device itself
    wait_for("the third report", lambda: pump.counters(port).messages_in == 3)
    assert pump.settled(port) == 0b11
    assert pump.settled(port) == 0  # taken


def test_a_removed_port_leaves_nothing_behind(link: Link, pump: FramePump) -> None:
    port = pump.add(link.host)
    link.send(Message.make_ping())
    wait_for("the frame", lambda: select.select([pump.fileno()], [], [], 0)[0])
    pump.remove(port)
    assert pump.take_events() == []  # not delivered to whoever gets the port id next
    with pytest.raises(ValueError, match="no port"):
        pump.send(port, b"x")
    os.write(link.host, b"still open")  # the descriptor stays the caller's
    assert pump.add(link.host) == port  # the id is reused


def test_events_python_does_not_take_are_bounded(link: Link, pump: FramePump) -> None:
    port = pump.add(link.host)
    ping = Message.make_ping().encode() + DELIM  # not the pump's to handle: one event each
    for _ in range(12):
        os.write(link.device, ping * 100)
        time.sleep(0.005)
    wait_for(
        "the overflow to be counted", lambda: pump.counters(port).events_dropped == 1200 - PORT_EVENT_LIMIT
    )
    taken = pump.take_events()  # the port's share of the queue (tests/test_noisy_port.py: other ports')
    assert len(taken) == PORT_EVENT_LIMIT and all(event == PumpEvent.FRAME for _, event, _ in taken)
    link.send(Message.make_ping())
    assert len(events(pump)) == 1  # room again


def _blocked_signals(tid: int) -> int:
    with open(f"/proc/{os.getpid()}/task/{tid}/status", encoding="ascii") as status:
        return next(int(line.split()[1], 16) for line in status if line.startswith("SigBlk"))


def test_signals_go_to_the_interpreter_not_the_pumps_thread(pump: FramePump) -> None:
    """A Ctrl-C must reach Python's handler (the main thread), never interrupt the reader thread."""
    sigint_and_sigterm = 1 << (signal.SIGINT - 1) | 1 << (signal.SIGTERM - 1)
    others = [int(tid) for tid in os.listdir(f"/proc/{os.getpid()}/task") if int(tid) != os.getpid()]
    assert any(_blocked_signals(tid) & sigint_and_sigterm == sigint_and_sigterm for tid in others)
    assert not _blocked_signals(os.getpid()) & sigint_and_sigterm
