"""The bridge under a flaky link.

End to end, with real processes on real pseudo-terminals: ``runtime emulate``
drops, duplicates, corrupts and truncates frames both ways and unplugs its
devices now and then (``--faults``, ``--faults-in``, ``--disconnect-every``);
``runtime bridge`` must stay up, bring each device back after each reconnect,
keep sensor values flowing, get every write through, and count the damaged
frames it received. Then the test plays the device itself to pin down the two
bridge behaviours that convergence rests on (writes resent until a DEV_DATA
confirms them; a stale SUB_RES does not confirm a subscription), and checks the
fault injector without processes.

Every wait is a poll loop with a deadline; every child is killed in a finally;
segments live in a namespace of their own, unlinked at the end of the module.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import e2e
import pytest
from e2e import (
    POT,
    SERVO,
    Children,
    FakeDeviceBase,
    children_fixture,
    make_uid,
    must,
    namespace_fixture,
    open_buffer,
    stats_entry,
    sub_res,
    wait_for,
)

from runtime import bridge
from runtime.buffer import BufferStore, DeviceBuffer, DeviceBufferError
from runtime.messaging import DELIM, Message, MessageError, MessageType
from runtime.testing import FaultInjector, FaultRates

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]  # slow: a real bridge over a lossy emulated link

RATES = "drop=0.1,duplicate=0.1,corrupt=0.1,truncate=0.1"
"""Every fault at 10 %, both ways: about one frame in three arrives damaged, twice, or not at all."""
CONNECTED_FOR = 3.5
"""Seconds each emulated device stays plugged in."""
UNPLUGGED_FOR = 0.7
"""Seconds each disconnect lasts."""
RUN_FOR = 17.0
"""Seconds the flaky link is watched."""


# ---- helpers ------------------------------------------------------------------------------------


namespace = namespace_fixture("rt-test-flaky")
children = children_fixture(log_tail=20_000)
store = e2e.store


def summary(lines: list[str], uid: int) -> dict[str, int]:
    """The ``key=value`` words of a device's summary line."""
    for line in lines:
        if line.startswith("summary ") and f" {uid:#x}: " in line:
            return {
                key: int(value) for key, value in (word.split("=") for word in line.split(": ", 1)[1].split())
            }
    raise AssertionError(f"no summary line for {uid:#x} in {lines}")


def value_or_none(buffer: DeviceBuffer, name: str) -> Any:
    """A readable value, or None while the buffer is invalid."""
    try:
        return buffer.get(name)
    except DeviceBufferError:
        return None


class Watch:
    """What the test saw of one device's buffer: invalid periods, comebacks, fresh data after each."""

    def __init__(self, buffer: DeviceBuffer) -> None:
        self.buffer = buffer
        self.valid = True
        self.lost_at = 0.0
        self.comebacks: list[float] = []  # when it became valid again
        self.longest_gap = 0.0
        self.baseline = self.last_seen = buffer.last_update
        self.fresh: list[bool] = []  # per comeback: did new data arrive after it?

    def poll(self, now: float) -> None:
        valid = self.buffer.valid
        if valid and not self.valid:
            self.comebacks.append(now)
            self.longest_gap = max(self.longest_gap, now - self.lost_at)
            self.fresh.append(False)
        elif not valid and self.valid:
            self.lost_at = now
            # The last data seen before the gap: a report after the comeback is newer, even one that
            # landed before this loop (slow on a busy machine) saw the comeback.
            self.baseline = self.last_seen
        self.valid = valid
        if valid:
            with contextlib.suppress(DeviceBufferError):  # invalid since
                self.last_seen = self.buffer.last_update
        if valid and self.fresh and not self.fresh[-1] and self.last_seen > self.baseline:
            self.fresh[-1] = True


# ---- end to end ---------------------------------------------------------------------------------


def test_bridge_under_a_flaky_link(children: Children, store: BufferStore, tmp_path: Path) -> None:
    """Faults both ways and periodic disconnects: the bridge stays up, values converge, errors are counted."""
    servo_uid, pot_uid = make_uid(SERVO), make_uid(POT)
    links, emulator_stats, bridge_stats = (
        tmp_path / "links",
        tmp_path / "emulator.json",
        tmp_path / "bridge.json",
    )
    emulated = children.start(
        "runtime.tools.emulate",
        f"servo-motor:{servo_uid:#x}",
        f"potentiometer:{pot_uid:#x}",
        "--link",
        str(links),
        "--faults",
        RATES,
        "--faults-in",
        RATES,
        "--disconnect-every",
        str(CONNECTED_FOR),
        "--disconnect-for",
        str(UNPLUGGED_FOR),
        "--seed",
        "7",
        "--stats",
        str(emulator_stats),
        stdout=True,
    )
    children.read_lines(emulated, 2)
    process = children.start("runtime.tools.bridge", "--glob", f"{links}/*", "--stats", str(bridge_stats))
    servo, pot = open_buffer(store, servo_uid), open_buffer(store, pot_uid)
    wait_for("both devices to be valid", lambda: servo.valid and pot.valid)
    watches = [Watch(servo), Watch(pot)]

    # Write servo0 over and over while the link misbehaves; each value must come back in DEV_DATA.
    # A write still unconfirmed when the device is unplugged may be lost with the connection (the
    # bridge resends within a connection only, and nobody can write while the buffer is invalid): the
    # test writes it again after the reconnect, the application's job. Any other write must get
    # through alone: the bridge resends it until a DEV_DATA confirms it.
    converged: list[float] = []  # seconds each write took to read back
    rewritten = 0
    target: float | None = None
    written_at = 0.0
    interrupted = False
    pot_values: set[float] = set()
    started = time.monotonic()
    while (now := time.monotonic()) - started < RUN_FOR:
        assert process.poll() is None, f"the bridge exited: {children.log(process)}"
        assert emulated.poll() is None, f"the emulator exited: {children.log(emulated)}"
        for watch in watches:
            watch.poll(now)
        if (value := value_or_none(pot, "pot0")) is not None:
            pot_values.add(value)
        if target is not None and not servo.valid:
            interrupted = True
        elif target is not None and value_or_none(servo, "servo0") == target:
            converged.append(now - written_at)
            target = None
        elif target is not None and interrupted:
            with contextlib.suppress(DeviceBufferError):
                servo.write("servo0", target)
                rewritten += 1
                written_at, interrupted = now, False
        elif target is not None:
            assert now - written_at < 5.0, f"servo0 = {target} never read back: {children.log(process)}"
        elif servo.valid and now - written_at > 0.1:
            last = value_or_none(servo, "servo0")
            target = random.choice([k / 64 for k in range(-64, 65) if k / 64 != last])  # exact in a float
            with contextlib.suppress(DeviceBufferError):
                servo.write("servo0", target)
                written_at, interrupted = now, False
        time.sleep(0.01)

    # Let the last reconnect settle, then stop both, the bridge first (its final stats).
    wait_for("both devices valid at the end", lambda: servo.valid and pot.valid, timeout=CONNECTED_FOR + 5)
    assert children.stop(process) == 0, children.log(process)
    assert children.stop(emulated) == 0, children.log(emulated)
    lines = children.output[emulated.pid].decode().splitlines()
    figures = {uid: summary(lines, uid) for uid in (servo_uid, pot_uid)}
    injected = {uid: must(stats_entry(emulator_stats, uid)) for uid in (servo_uid, pot_uid)}
    counted = {uid: must(stats_entry(bridge_stats, uid)) for uid in (servo_uid, pot_uid)}
    report = {
        "writes converged": len(converged),
        "rewritten after a disconnect": rewritten,
        "slowest write (s)": round(max(converged, default=0.0), 3),
        "comebacks seen": [len(watch.comebacks) for watch in watches],
        "longest gap (s)": [round(watch.longest_gap, 2) for watch in watches],
        "emulator": {f"{uid:#x}": item for uid, item in figures.items()},
        "bridge": {
            f"{uid:#x}": {k: v for k, v in e.items() if k != "last_values"} for uid, e in counted.items()
        },
    }
    print(json.dumps(report, indent=1, default=str))

    # The summary line and the stats file agree.
    for uid in (servo_uid, pot_uid):
        assert figures[uid]["mutated"] == injected[uid]["out"]["mutated"]
        assert figures[uid]["disconnects"] == injected[uid]["disconnects"]

    for uid, watch in zip((servo_uid, pot_uid), watches, strict=True):
        out, inward, done = figures[uid], injected[uid]["in"], counted[uid]
        # The faults happened, at about the rates asked for.
        assert out["frames"] > 200 and inward["frames"] > 20
        for kind in ("dropped", "duplicated", "corrupted", "truncated"):
            assert 0.03 < out[kind] / out["frames"] < 0.2, (kind, out)
        assert out["delivered"] == out["frames"] - out["dropped"] + out["duplicated"]
        # Each disconnect was followed by a comeback that the bridge noticed, and data flowed again.
        assert out["disconnects"] >= 3 and out["reconnects"] >= out["disconnects"] - 1
        assert len(watch.comebacks) >= out["reconnects"] - 1 >= 2, (uid, watch.comebacks)
        assert watch.longest_gap < UNPLUGGED_FOR + 2.5
        assert all(watch.fresh[:-1]), f"no data after a reconnect of {uid:#x}: {watch.fresh}"
        # Every damaged frame that reached the bridge is at most one error there, and most of them did.
        assert 0.5 * out["mutated"] <= done["errors"] <= out["mutated"], (out, done)
        # The same the other way: the device answered the bridge's damaged frames with ERRORs.
        assert 0 < out["errors"] <= inward["mutated"], (out, inward)
        assert done["connected"] is False and done["messages_in"] > out["frames"] / 2
    # Values converged: each write came back (retransmitted when lost), the sensor kept moving.
    assert len(converged) >= 15
    assert counted[servo_uid]["writes_resent"] > 0 and counted[servo_uid]["writes_unconfirmed"] == 0
    assert len(pot_values) > 50


# ---- the bridge's side of convergence, with the test playing the device -------------------------


class FakeDevice(FakeDeviceBase):
    """The test playing a Smart Device on a pty whose slave end the bridge opens."""

    def send(self, *messages: Message) -> None:
        """Send messages, framed."""
        os.write(self.master, b"".join(message.encode() + DELIM for message in messages))

    def expect(self, kind: MessageType, timeout: float = 5.0) -> tuple[Message, list[Message]]:
        """Wait for a message of this type; return it and what came before it."""
        deadline = time.monotonic() + timeout
        seen: list[Message] = []
        while time.monotonic() < deadline:
            seen += self.collect(0.02)
            for index, message in enumerate(seen):
                if message.type == kind:
                    self.inbox = seen[index + 1 :]
                    return message, seen[:index]
        raise AssertionError(f"no {kind.name} from the bridge within {timeout} s (got {seen})")


def introduce(
    fake: FakeDevice, uid: int, children: Children, process: subprocess.Popen[bytes], timeout: float = 10.0
) -> Message:
    """Answer the bridge's PINGs with a SUB_RES naming ``uid``, as a device does, until its SUB_REQ comes.

    Every PING is answered, not only the first: a bridge that closed and opened
    the port again meanwhile (which flushes what the port held) still gets its
    answer. Fails with the bridge's log when no SUB_REQ comes.
    """
    deadline = time.monotonic() + timeout
    seen: list[Message] = []
    while time.monotonic() < deadline:
        received = fake.collect(0.02)
        for index, message in enumerate(received):
            seen.append(message)
            if message.type == MessageType.PING:
                fake.send(sub_res(uid, 0, 0))
            elif message.type == MessageType.SUB_REQ:
                fake.inbox = received[index + 1 :]  # what came after it is the test's
                return message
    kinds = [MessageType(message.type).name for message in seen]
    log = children.log(process)
    raise AssertionError(f"no SUB_REQ from the bridge within {timeout} s (got {kinds}); its log: {log}")


def dev_data(**values: float) -> Message:
    with SERVO.open("test-flaky-device", shared=False) as local:
        for name, value in values.items():
            local.set(name, value)
        (message,) = local.emit_dev_data()
        return message


def written(message: Message) -> dict[str, Any]:
    with SERVO.open("test-flaky-host", shared=False) as local:
        local.update(message)
        return local.get_write()


@pytest.fixture
def device(children: Children, store: BufferStore, tmp_path: Path) -> Iterator[tuple[FakeDevice, int]]:
    """A servo the test plays, served by a bridge, handshake done and subscription confirmed."""
    fake = FakeDevice()
    try:
        bridge_process = children.start(
            "runtime.tools.bridge", "--port", fake.path, "--stats", str(tmp_path / "bridge.json")
        )
        uid = make_uid(SERVO)
        request = introduce(fake, uid, children, bridge_process)
        assert request.read_sub_req() == (0b11, 40)
        fake.send(sub_res(uid, 0b11, 40), dev_data(servo0=0.0, servo1=0.0))
        wait_for("the servo to be valid", lambda: open_buffer(store, uid).valid)
        yield fake, uid
    finally:
        fake.close()


def test_lost_writes_are_resent_until_confirmed(
    device: tuple[FakeDevice, int], store: BufferStore, tmp_path: Path
) -> None:
    """Writes of parameters the device reports are resent until its DEV_DATA shows them (bounded)."""
    fake, uid = device
    stats_path = tmp_path / "bridge.json"
    servo = open_buffer(store, uid)
    servo.write("servo0", 0.5)
    first, _ = fake.expect(MessageType.DEV_WRITE)
    assert written(first) == {"servo0": 0.5}
    # Lost on the way: the device keeps reporting its old value, so the bridge sends the write again.
    fake.send(dev_data(servo0=0.0, servo1=0.0))
    sent = time.monotonic()
    again, _ = fake.expect(MessageType.DEV_WRITE, timeout=2)
    assert written(again) == {"servo0": 0.5}
    assert time.monotonic() - sent >= bridge.WRITE_CONFIRM_TIMEOUT - 0.1
    # Confirmed: no more resends.
    fake.send(dev_data(servo0=0.5, servo1=0.0))
    wait_for("servo0 read back", lambda: servo.get("servo0") == 0.5)
    assert not [m for m in fake.collect(1.0) if m.type == MessageType.DEV_WRITE]

    # A newer write replaces an older unconfirmed one; a report of the older value does not confirm it.
    servo.write("servo1", 0.25)
    fake.expect(MessageType.DEV_WRITE)
    servo.write("servo1", -0.25)
    fake.expect(MessageType.DEV_WRITE)
    fake.send(dev_data(servo0=0.5, servo1=0.25))
    again, _ = fake.expect(MessageType.DEV_WRITE, timeout=2)
    assert written(again) == {"servo1": -0.25}
    fake.send(dev_data(servo0=0.5, servo1=-0.25))

    # A value the device changed by itself (neither the old one nor the one written) settles the write:
    # resending would fight the device.
    servo.write("servo0", 0.75)
    fake.expect(MessageType.DEV_WRITE)
    fake.send(dev_data(servo0=0.7, servo1=-0.25))
    assert not [m for m in fake.collect(1.0) if m.type == MessageType.DEV_WRITE]

    # A device that never confirms gets the write WRITE_RETRIES more times, then the bridge gives up.
    servo.write("servo1", 1.0)
    fake.expect(MessageType.DEV_WRITE)
    resends: list[Message] = []
    for _ in range(bridge.WRITE_RETRIES + 2):  # a little longer than the bridge keeps trying
        fake.send(Message.make_hb_req(1))  # not silent
        resends += [m for m in fake.collect(bridge.WRITE_CONFIRM_TIMEOUT) if m.type == MessageType.DEV_WRITE]
    assert len(resends) == bridge.WRITE_RETRIES and all(written(m) == {"servo1": 1.0} for m in resends)
    fake.send(Message.make_hb_req(2))
    stats = wait_for(
        "the stats", lambda: (e := stats_entry(stats_path, uid)) and e["writes_unconfirmed"] and e
    )
    assert stats["writes_unconfirmed"] == 1 and stats["writes_resent"] >= 2 + bridge.WRITE_RETRIES


def test_a_stale_sub_res_does_not_confirm_the_subscription(
    children: Children, store: BufferStore, tmp_path: Path
) -> None:
    """A SUB_RES without a subscription (a late answer to a handshake PING) after a lost SUB_REQ."""
    fake = FakeDevice()
    try:
        bridge_process = children.start("runtime.tools.bridge", "--port", fake.path)
        uid = make_uid(SERVO)
        introduce(fake, uid, children, bridge_process)  # its SUB_REQ: lost on the way
        fake.send(sub_res(uid, 0, 0))  # a PING answered late, or a duplicate: not the subscription
        servo = open_buffer(store, uid)
        request, _ = fake.expect(MessageType.SUB_REQ, timeout=bridge.SUB_RETRY_INTERVAL + 1.0)
        assert request.read_sub_req() == (0b11, 40)
        fake.send(sub_res(uid, 0b11, 40))
        wait_for("the subscription", lambda: servo.subscription == {"servo0", "servo1"})
        # Once confirmed, a stale SUB_RES changes nothing recorded, but makes the bridge ask again.
        fake.collect(0.1)
        fake.send(sub_res(uid, 0, 0))
        fake.expect(MessageType.SUB_REQ, timeout=bridge.SUB_RETRY_INTERVAL + 1.0)
        assert servo.subscription == {"servo0", "servo1"} and servo.interval == 0.04
        fake.send(sub_res(uid, 0b11, 40))
        assert not [m for m in fake.collect(1.5) if m.type == MessageType.SUB_REQ]
    finally:
        fake.close()


# ---- the fault injector, without processes -------------------------------------------------------


def test_fault_rates_parse() -> None:
    assert FaultRates.parse("drop=0.1, truncate=1") == FaultRates(drop=0.1, truncate=1.0)
    assert FaultRates.parse("all=0.2,drop=0") == FaultRates(0.0, 0.2, 0.2, 0.2)
    assert not FaultRates.parse("").active and FaultRates.parse("corrupt=0.01").active
    for text, problem in [
        ("drop=2", "in 0..1"),
        ("drop=nan", "in 0..1"),
        ("drop", "KIND=RATE"),
        ("lose=0.1", "unknown fault"),
        ("drop=often", "must be a number"),
    ]:
        with pytest.raises(ValueError, match=problem):
            FaultRates.parse(text)


def test_fault_injector_damages_frames_as_counted() -> None:
    frames = [Message.make_hb_req(n).encode() for n in range(256)] + [
        dev_data(servo0=0.1 * n).encode() for n in range(10)
    ]

    def run(seed: int) -> tuple[list[list[bytes]], FaultInjector]:
        injector = FaultInjector(FaultRates.parse("all=0.25"), random.Random(seed))
        return [injector.apply(frame) for frame in frames * 20], injector

    delivered, injector = run(5)
    assert delivered == run(5)[0] and delivered != run(6)[0]  # reproducible from the seed
    counts = injector.counts
    assert counts.frames == len(frames) * 20
    assert counts.delivered == sum(map(len, delivered)) == counts.frames - counts.dropped + counts.duplicated
    bad = 0
    for original, out in zip(frames * 20, delivered, strict=True):
        for frame in out:
            assert frame and 0 not in frame  # still one frame on the wire
            if frame == original:
                continue
            bad += 1
            assert (
                len(frame) < len(original)
                or bin(int.from_bytes(frame) ^ int.from_bytes(original)).count("1") == 1
            )
            with contextlib.suppress(MessageError):
                Message.decode(frame)
                assert len(frame) == len(original)  # only a flipped COBS code byte can slip through
        if len(out) == 2:
            assert out[1] == original  # the duplicate is intact
    assert bad == counts.mutated and 0.15 < counts.mutated / counts.frames < 0.35


def test_emulator_options(children: Children) -> None:
    process = children.start("runtime.tools.emulate", "servo-motor", "--faults", "drop=1.5")
    assert process.wait(15) == 2
    assert "drop rate must be in 0..1" in children.log(process)
    text = subprocess.run(
        [sys.executable, "-m", "runtime.tools.emulate", "--help"], capture_output=True, text=True, timeout=30
    ).stdout
    for option in ("--faults ", "--faults-in", "--disconnect-every", "--disconnect-for", "--stats", "--seed"):
        assert option in text
