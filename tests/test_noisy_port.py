"""One noisy port never starves another (issue 22, "the bridge under one noisy port").

* The frame pump (:class:`runtime.link.FramePump`) on real ptys: ports flooding
  frames for Python (garbage) fill only their own share of the event queue; a
  quiet port's frame still reaches Python, and only the flooders count drops.
* The bridge as a real process: while four ports flood garbage as fast as the
  ptys take it, a good device's handshake completes at once (its one SUB_RES is
  not dropped) and its data flows.
* A device that reconnects under a new UID every time: the bridge releases what
  a UID that stays away holds (its mapping; its segment when nobody else maps it)
  after the grace, and never holds more than the cap; a UID that comes back
  within the grace, or whose segment another process holds, gets the same
  segment.

Every wait has a deadline; child processes are killed at the end of each test.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import select
import subprocess
import time
import tty
from collections.abc import Iterator

import e2e
import pytest
from e2e import (
    CATALOG,
    SERVO,
    Children,
    children_fixture,
    make_uid,
    namespace_prefix,
    namespace_segments,
    open_buffer,
    sub_res,
    try_open,
    wait_for,
)

from runtime.buffer import SHM_DIR, BufferStore, DeviceBuffer
from runtime.link import PORT_EVENT_LIMIT, FramePump, PumpEvent
from runtime.messaging import DELIM, FrameSplitter, Message, MessageType
from runtime.testing import FakeDevice, dev_data

namespace = e2e.namespace_fixture("rt-test-noisy")
children = children_fixture(log_tail=3000)
store = e2e.store

FLOODERS = 4
BAD_CHECKSUM = bytes(Message.make_hb_req(1).encode()[:-1]) + b"\x55"
"""An HB_REQ whose checksum is wrong: decodes in no one's book, so it goes to Python (one event)."""
GARBAGE = (BAD_CHECKSUM + DELIM + b"\x05\x01\x02" + DELIM) * 256
"""About 3 KB of frames that do not decode, to write again and again."""


class Pty:
    """A raw pty: ``host`` is what a pump or bridge reads; the test writes ``device``."""

    def __init__(self) -> None:
        self.device, self.host = os.openpty()
        tty.setraw(self.host)
        os.set_blocking(self.host, False)

    def expect_heartbeat(self, number: int, timeout: float = 5.0) -> None:
        """Wait for the HB_RES answering HB_REQ ``number`` on the device's end."""
        splitter = FrameSplitter()
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if select.select([self.device], [], [], left)[0]:
                for frame in splitter.feed(os.read(self.device, 4096)):
                    message = Message.decode(frame)
                    if message.type == MessageType.HB_RES and message.read_hb_res() == number:
                        return
        raise AssertionError(f"no HB_RES {number} within {timeout:g} s")

    def close(self) -> None:
        for fd in (self.device, self.host):
            with contextlib.suppress(OSError):
                os.close(fd)


@pytest.fixture
def ptys() -> Iterator[list[Pty]]:
    made = [Pty() for _ in range(FLOODERS + 1)]
    try:
        yield made
    finally:
        for pty in made:
            pty.close()


# ---- the pump ------------------------------------------------------------------------------------


def test_flooding_ports_fill_only_their_own_share_of_the_events(ptys: list[Pty]) -> None:
    """Four ports send far more frames for Python than it takes; a fifth port's SUB_RES is not dropped."""
    *noisy, quiet = ptys
    with FramePump() as pump:
        flooders = [pump.add(pty.host) for pty in noisy]
        good = pump.add(quiet.host)
        frames_each = 0
        while frames_each < 2 * 1024:  # each alone fills the whole queue of the pump before issue 22
            for pty in noisy:
                os.write(pty.device, GARBAGE)
            frames_each += GARBAGE.count(DELIM)
        for number, pty in enumerate(noisy):  # the pump answers in order: the flood before was handled
            os.write(pty.device, Message.make_hb_req(number).encode() + DELIM)
            pty.expect_heartbeat(number)
        for port in flooders:
            assert pump.counters(port).events_dropped == frames_each - PORT_EVENT_LIMIT
        answer = sub_res(make_uid(SERVO))
        os.write(quiet.device, answer.encode() + DELIM)
        taken: list[tuple[int, PumpEvent, object]] = []
        deadline = time.monotonic() + 5
        while not any(port == good for port, _, _ in taken) and time.monotonic() < deadline:
            select.select([pump.fileno()], [], [], 0.1)
            taken += pump.take_events()
        assert (good, PumpEvent.FRAME, answer.encode()) in taken
        assert pump.counters(good).events_dropped == 0
        for port in flooders:
            assert sum(1 for who, _, _ in taken if who == port) == PORT_EVENT_LIMIT
        # Once taken, each flooder has its share again.
        os.write(noisy[0].device, BAD_CHECKSUM + DELIM)
        wait_for("the next frame", lambda: [e for e in pump.take_events() if e[0] == flooders[0]])


# ---- the bridge ----------------------------------------------------------------------------------


def _flood(devices: list[int], stop: multiprocessing.synchronize.Event) -> None:
    """Write garbage to every pty as fast as it takes it (and read what the bridge answers) until stopped."""
    for fd in devices:
        os.set_blocking(fd, False)
    while not stop.is_set():
        readable, writable, _ = select.select(devices, devices, [], 0.05)
        for fd in readable:
            with contextlib.suppress(OSError):
                os.read(fd, 65536)
        for fd in writable:
            with contextlib.suppress(BlockingIOError, OSError):
                os.write(fd, GARBAGE)


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_a_good_device_connects_and_streams_while_four_ports_flood(
    children: Children, store: BufferStore, ptys: list[Pty]
) -> None:
    """The good device answers one PING once: its SUB_RES must not be dropped, nor wait behind the flood."""
    *noisy, _ = ptys
    context = multiprocessing.get_context("fork")
    stop = context.Event()
    flooder = context.Process(target=_flood, args=([pty.device for pty in noisy], stop), daemon=True)
    device = FakeDevice(make_uid(SERVO))
    try:
        flooder.start()
        args = [arg for pty in noisy for arg in ("--port", os.ttyname(pty.host))]
        process = children.start("runtime.tools.bridge", *args, "--port", device.path)
        wait_for("the flood to be answered", lambda: "bad frame" in children.log(process), timeout=15)
        assert device.uid is not None
        device.introduce(timeout=10)  # the bridge PINGs every 0.2 s; answered once
        answered = time.monotonic()
        uid = device.uid
        servo = wait_for("the good device's buffer", lambda: try_open(store, uid), timeout=5, every=0.001)
        wait_for("the good device to be served", lambda: servo.valid, timeout=5, every=0.001)
        connected_after = time.monotonic() - answered
        device.accept_subscription(timeout=5)
        delays = []
        for step in range(1, 21):
            device.send(dev_data(SERVO, servo0=step / 32))
            sent = time.monotonic()
            wait_for(f"value {step}", lambda s=step: servo.get("servo0") == s / 32, timeout=2, every=0.001)
            delays.append(time.monotonic() - sent)
        latest = max(delays) * 1e3
        print(f"under the flood: handshake {connected_after * 1e3:.1f} ms, values {latest:.1f} ms at most")
        assert max(delays) < 1.0
        device.send(Message.make_hb_req(7))
        device.expect(MessageType.HB_RES, timeout=2, where=lambda m: m.read_hb_res() == 7)
        assert connected_after < 1.0, f"the handshake took {connected_after:.2f} s under the flood"
        log = children.log(process)
        assert f"on {device.path}: connected" in log
        assert "frame(s) dropped" not in "\n".join(line for line in log.splitlines() if device.path in line)
        assert process.poll() is None
    finally:
        stop.set()
        flooder.join(5)
        if flooder.is_alive():
            flooder.kill()
            flooder.join(5)
        device.close()


# ---- UIDs that never come back -------------------------------------------------------------------


def _mapped_segments(pid: int) -> set[str]:
    """The segments of this namespace that process ``pid`` maps."""
    marker = f"{SHM_DIR.rstrip('/')}/"
    prefix = namespace_prefix()
    with open(f"/proc/{pid}/maps") as maps:
        return {
            name
            for line in maps
            if marker in line and (name := line.split(marker, 1)[1].split()[0]).startswith(prefix)
        }


def _inode(name: str) -> int | None:
    try:
        return os.stat(os.path.join(SHM_DIR, name)).st_ino
    except FileNotFoundError:
        return None


def _name_itself(device: FakeDevice, uid: int) -> tuple[str, int]:
    """Have the device on the bridge's port become ``uid`` (the bridge drops the port, opens it again and
    serves that UID); its segment's name and inode. The test's own mapping is gone when this returns."""
    if device.uid is not None:  # a device that names another UID: the bridge reconnects
        device.send(sub_res(uid))
    device.inbox.clear()
    device.uid = uid
    device.introduce(timeout=10)
    with BufferStore(CATALOG) as view:
        name = open_buffer(view, uid, timeout=10).name
        wait_for(f"uid {uid:#x} to be served", lambda: view.get_or_open(uid).valid)
    gc.collect()  # the view's buffer unmapped: the bridge must not see this process holding it
    inode = _inode(name)
    assert inode is not None
    return name, inode


def _start_bridge(children: Children, device: FakeDevice, grace: float, cap: int) -> subprocess.Popen[bytes]:
    return children.start(
        "runtime.tools.bridge",
        "--port",
        device.path,
        "--unplugged-grace",
        str(grace),
        "--unplugged-cap",
        str(cap),
    )


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_uids_that_never_come_back_are_capped(children: Children) -> None:
    """A device reconnecting under fresh UIDs: the bridge maps at most the cap of unplugged ones, the
    namespace's segments stay as few; a UID back (within the grace, here longer than the test), or whose
    segment another process maps, gets the same segment."""
    cap = 3
    base = namespace_segments()
    device = FakeDevice()
    held: DeviceBuffer | None = None
    try:
        process = _start_bridge(children, device, grace=3600, cap=cap)  # only the cap releases here
        kept_name, kept_inode = _name_itself(device, make_uid(SERVO))
        held = SERVO.attach(kept_name, create=False)  # another process maps this one
        seen: list[tuple[str, int]] = []
        for _ in range(10):
            seen.append(_name_itself(device, make_uid(SERVO)))
            mapped = _mapped_segments(process.pid)
            # The one connected, at most `cap` unplugged ones, and the robot's state.
            assert len(mapped) <= cap + 2, f"the bridge maps {len(mapped)} segments: {sorted(mapped)}"
            assert len(namespace_segments() - base) <= cap + 3, sorted(namespace_segments() - base)
        assert _inode(kept_name) == kept_inode, "a segment another process maps was removed"
        assert kept_name not in _mapped_segments(process.pid)  # released by the bridge all the same
        # Back within the grace: the same segment; back after its release, but still mapped elsewhere: too.
        for name, inode in (seen[-2], (kept_name, kept_inode)):
            assert _name_itself(device, int(name.rsplit("-", 1)[1], 16)) == (name, inode)
        assert "unplugged buffer released (more than 3 devices unplugged)" in children.log(process)
        assert "gone for more than" not in children.log(process)
        assert process.poll() is None
    finally:
        if held is not None:
            held.close()
        device.close()


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_an_unplugged_uid_is_released_after_the_grace(children: Children) -> None:
    """Gone for longer than the grace: unmapped at once; its segment unlinked once nobody maps it."""
    grace = 1.0
    base = namespace_segments()
    device = FakeDevice()
    held: DeviceBuffer | None = None
    try:
        process = _start_bridge(children, device, grace=grace, cap=128)
        gone_name, _ = _name_itself(device, make_uid(SERVO))
        held = SERVO.attach(gone_name, create=False)  # another process maps it
        current, _ = _name_itself(device, make_uid(SERVO))
        wait_for(
            "the bridge to unmap the unplugged one",
            lambda: gone_name not in _mapped_segments(process.pid),
            timeout=10 * grace + 10,
        )
        assert _inode(gone_name) is not None, "a segment another process maps was removed"
        held.close()
        held = None
        gc.collect()

        def devices_left() -> set[str]:
            return {name for name in namespace_segments() - base if SERVO.type_name in name}

        wait_for("its segment to go", lambda: devices_left() == {current}, timeout=10 * grace + 10)
        assert "unplugged buffer released (gone for more than 1 s)" in children.log(process)
        assert process.poll() is None
    finally:
        if held is not None:
            held.close()
        device.close()
