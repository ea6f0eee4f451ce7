"""Tests of the frame pump's writer thread (:meth:`runtime.link.FramePump.serve_writes`): the bridge's
write path in the core.

Each test drives a real pseudo-terminal and a real buffer: this process writes
the buffer as student code would and plays the device on the master end; no
asyncio loop runs, so whatever reaches the pty came from the pump's threads
alone. Every wait has a deadline; the buffer of another process is unlinked
at the end.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from e2e import SERVO, wait_for
from test_pump import Link, events, link_fixture, pump_fixture  # noqa: F401 (the fixtures link, pump)

from runtime.buffer import DeviceBuffer
from runtime.commands import my_commander
from runtime.link import FramePump, PumpEvent
from runtime.messaging import Message, MessageType
from runtime.testing import dev_data as make_dev_data

LONG_INTERVAL = 3600.0
"""A write_interval no test outlasts: a batch held back by it goes only when asked."""


@pytest.fixture
def servo() -> Iterator[DeviceBuffer]:
    with SERVO.open("test-pump-writes-servo", shared=False) as buffer:
        yield buffer


@pytest.fixture
def scratch() -> Iterator[DeviceBuffer]:
    """Reads the values of the DEV_WRITE frames that reached the device."""
    with SERVO.open("test-pump-writes-scratch", shared=False) as buffer:
        yield buffer


def written(scratch: DeviceBuffer, messages: list[Message]) -> list[dict[str, Any]]:
    """The values of each DEV_WRITE in ``messages`` (which must all be DEV_WRITE)."""
    assert [m.type for m in messages] == [MessageType.DEV_WRITE] * len(messages), messages
    values = []
    for message in messages:
        scratch.update(message)
        values.append(scratch.get_write())
    return values


def receive(link: Link, count: int) -> list[Message]:
    """The next ``count`` messages the host side sent (however many reads they take)."""
    messages: list[Message] = []
    while len(messages) < count and (more := link.receive()):
        messages += more
    assert len(messages) == count, messages
    return messages


def nothing_arrives(link: Link, within: float = 0.2) -> bool:
    """Whether the device side stays silent for ``within`` seconds (only where nothing may come)."""
    return not select.select([link.device], [], [], within)[0]


def serving(pump: FramePump, link: Link, buffer: DeviceBuffer, interval: float = 0.0) -> int:
    """A port whose writes the pump serves, this process's commands already checked."""
    port = pump.add(link.host)
    pump.attach(port, buffer)
    pump.serve_writes(port, interval)
    pump.commanders_checked(port, [my_commander()])
    return port


def test_a_write_reaches_the_device_without_python(
    link: Link, pump: FramePump, servo: DeviceBuffer, scratch: DeviceBuffer
) -> None:
    port = pump.add(link.host)
    pump.attach(port, servo)
    pump.serve_writes(port, 0.0)
    servo.write("servo0", 0.5)
    # A commander the pump was not told of holds the port's writes until Python checked it.
    assert [(p, e, data) for p, e, data in events(pump)] == [(port, PumpEvent.COMMANDER, None)]
    assert nothing_arrives(link)
    pump.commanders_checked(port, [my_commander()])
    assert written(scratch, link.receive()) == [{"servo0": 0.5}]
    for value in (0.25, -0.75):  # from now on a write goes out with nothing for Python
        servo.write("servo1", value)
        assert written(scratch, link.receive()) == [{"servo1": value}]
    assert pump.take_events() == []
    assert pump.counters(port).messages_out == 3
    assert servo.get_write() == {}  # the pump took the pending writes
    servo.read(["servo0"])
    assert [m.type for m in link.receive()] == [MessageType.DEV_READ]


def test_write_interval_holds_back_and_the_newest_value_wins(
    link: Link, pump: FramePump, servo: DeviceBuffer, scratch: DeviceBuffer
) -> None:
    serving(pump, link, servo, LONG_INTERVAL)
    servo.write("servo0", 0.125)
    assert written(scratch, link.receive()) == [{"servo0": 0.125}]  # the first batch goes at once
    servo.write("servo0", 0.25)
    servo.write("servo0", 0.375)
    servo.write("servo1", -0.5)
    assert nothing_arrives(link)  # within write_interval of the first batch


def test_send_writes_now_sends_the_pending_batch_regardless_of_the_interval(
    link: Link, pump: FramePump, servo: DeviceBuffer, scratch: DeviceBuffer
) -> None:
    port = serving(pump, link, servo, LONG_INTERVAL)
    servo.write("servo0", 0.125)
    link.receive()
    servo.write("servo0", 0.25)
    servo.write("servo0", 0.375)
    pump.send_writes_now(port)
    assert written(scratch, link.receive()) == [{"servo0": 0.375}]  # one batch, the newest value


def test_an_unconfirmed_write_is_resent_then_given_up(
    link: Link, pump: FramePump, servo: DeviceBuffer, scratch: DeviceBuffer
) -> None:
    port = serving(pump, link, servo)
    pump.confirm_writes(port, 0b01, 0.05, 2, subscribed=True)
    servo.write("servo0", 0.5)
    copies = receive(link, 3)  # the write and two resends
    assert written(scratch, copies) == [{"servo0": 0.5}] * 3
    (taken,) = events(pump)
    assert taken[:2] == (port, PumpEvent.GAVE_UP)
    assert written(scratch, [Message.decode(taken[2])]) == [{"servo0": 0.5}]
    assert pump.counters(port).writes_resent == 2


def test_a_report_of_the_value_confirms_the_write(
    link: Link, pump: FramePump, servo: DeviceBuffer, scratch: DeviceBuffer
) -> None:
    port = serving(pump, link, servo)
    pump.confirm_writes(port, 0b11, 60.0, 2, subscribed=True)
    servo.write("servo1", 0.25)
    assert written(scratch, link.receive()) == [{"servo1": 0.25}]
    link.send(make_dev_data(SERVO, servo1=0.25))
    wait_for("the write settled", lambda: pump.settled(port) & 0b10)


def test_resends_wait_for_the_subscription(
    link: Link, pump: FramePump, servo: DeviceBuffer, scratch: DeviceBuffer
) -> None:
    port = serving(pump, link, servo)
    pump.confirm_writes(port, 0b01, 0.05, 8, subscribed=False)
    servo.write("servo0", -0.25)
    assert written(scratch, link.receive()) == [{"servo0": -0.25}]
    assert nothing_arrives(link)  # no DEV_DATA could confirm it yet: not resent
    pump.confirm_writes(port, 0b01, 0.05, 8, subscribed=True)
    assert written(scratch, link.receive())[0] == {"servo0": -0.25}  # resent (maybe more than once by now)
    wait_for("the resend counted", lambda: pump.counters(port).writes_resent >= 1)


def test_commanders_and_the_disabled_flag_are_reported(
    link: Link, pump: FramePump, servo: DeviceBuffer, scratch: DeviceBuffer
) -> None:
    port = serving(pump, link, servo)
    servo._access.set_disabled(True)
    assert [(e, data) for _, e, data in events(pump)] == [(PumpEvent.DISABLED, 1.0)]
    # Disabling put the safe values back as pending writes by nobody: they need no check.
    assert written(scratch, link.receive()) == [{"servo0": 0.0, "servo1": 0.0}]
    servo._access.set_disabled(False)
    assert [(e, data) for _, e, data in events(pump)] == [(PumpEvent.DISABLED, 0.0)]
    pump.commanders_checked(port, [])  # a commander left out is reported again when it commands
    servo.write("servo0", 0.5)
    assert [e for _, e, _ in events(pump)] == [PumpEvent.COMMANDER]
    pump.commanders_checked(port, [my_commander()])
    assert written(scratch, link.receive()) == [{"servo0": 0.5}]


def test_removing_a_port_while_writes_pend_leaves_them_in_the_buffer(
    link: Link, pump: FramePump, servo: DeviceBuffer
) -> None:
    port = serving(pump, link, servo, LONG_INTERVAL)
    servo.write("servo0", 0.125)
    link.receive()
    servo.write("servo0", 0.25)
    pump.remove(port)
    assert servo.get_write() == {"servo0": 0.25}  # not taken: the next bridge sends it
    servo.write("servo0", 0.5)  # nothing sleeps on the word any more; the write still works
    assert nothing_arrives(link)


HOLD_LOCK = """
import sys
import runtime.catalog
buffer_type = runtime.catalog.load()["servo-motor"]
with buffer_type.open(sys.argv[1], create=False) as buffer, buffer.transaction():
    print("held", flush=True)
    sys.stdin.readline()
"""


def test_a_lock_another_process_holds_delays_the_write_and_loses_nothing(
    link: Link, pump: FramePump, scratch: DeviceBuffer
) -> None:
    name = f"rt-test-pump-writes-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with SERVO.open(name) as servo:
            port = serving(pump, link, servo, LONG_INTERVAL)
            servo.write("servo0", 0.125)
            link.receive()
            servo.write("servo0", 0.25)  # pending: held back by write_interval
            holder = subprocess.Popen(
                [sys.executable, "-c", HOLD_LOCK, name],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            try:
                assert holder.stdout is not None and holder.stdin is not None
                assert holder.stdout.readline() == "held\n"
                pump.send_writes_now(port)
                wait_for("the busy lock met", lambda: pump.counters(port).lock_stalls == 1)
                holder.stdin.write("\n")
                holder.stdin.flush()
                assert holder.wait(10) == 0
            finally:
                if holder.poll() is None:
                    holder.kill()
                    holder.wait()
            assert written(scratch, link.receive()) == [{"servo0": 0.25}]
            pump.remove(port)
    finally:
        SERVO.unlink(name)


def test_with_forward_all_python_gets_a_copy_of_each_write_sent(link: Link) -> None:
    with (
        FramePump(forward_all=True) as pump,
        SERVO.open("test-pump-writes-verbose", shared=False) as servo,
    ):
        port = serving(pump, link, servo)
        servo.write("servo0", 0.75)
        (sent,) = link.receive()
        assert [(p, e, Message.decode(data)) for p, e, data in events(pump)] == [(port, PumpEvent.SENT, sent)]


def test_ports_beyond_what_one_futex_waitv_takes_are_polled(scratch: DeviceBuffer) -> None:
    count = 129  # futex_waitv takes 128 words, one of them the pump's own: the last two are polled
    links = [Link() for _ in range(count)]
    buffers = [SERVO.attach(f"test-pump-writes-many-{n}", shared=False) for n in range(count)]
    try:
        with FramePump() as pump:
            for link, buffer in zip(links, buffers, strict=True):
                serving(pump, link, buffer)
            for n in (0, count - 2, count - 1):
                buffers[n].write("servo1", n / 256)
                assert written(scratch, links[n].receive()) == [{"servo1": n / 256}]
    finally:
        for link, buffer in zip(links, buffers, strict=True):
            buffer.close()
            link.close()
