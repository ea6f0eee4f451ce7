"""A bridge's claim on a Smart Device it sees connected wins over a producer that is not a bridge.

``runtime replay`` serves a recorded servo's buffer in a namespace; a bridge
started there with that servo connected (a :class:`runtime.testing.FakeDevice`
on a real pty) is refused, claims the buffer (:meth:`Buffer.claim`, one log
line naming the replay's pid); the replay gives it up (one log line naming the
bridge) and the bridge serves it with the device's live values. A producer that
ignores claims keeps its buffer, the claim logged once.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import e2e
import pytest
from e2e import SERVO, Children, children_fixture, make_uid, open_buffer, sub_res, wait_for
from test_hostile_records import T0, hostile_recording

from runtime.buffer import BufferStore, DeviceBufferError
from runtime.messaging import MessageType
from runtime.testing import FakeDevice, dev_data

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

namespace = e2e.namespace_fixture("rt-test-claim")
children = children_fixture(log_tail=3000)
store = e2e.store

RECORDED = {"valid": True, "values": {"servo0": 0.5, "servo1": -0.25}}


def _served_by(store: BufferStore, uid: int, pid: int) -> bool:
    try:
        buffer = store.get_or_open(uid, create=False)
    except DeviceBufferError:
        return False
    return buffer.producer_pid == pid and buffer.valid


def _answer_pings_until(device: FakeDevice, done: Callable[[], bool], timeout: float = 20.0) -> int:
    """Answer each of the bridge's PINGs with the device's SUB_RES (its other messages kept) until
    ``done()``; how many were answered. The bridge drops the port after each refused attempt and opens
    it again, so a late PING of one attempt may be answered in vain: the next one is answered too."""
    assert device.uid is not None
    deadline = time.monotonic() + timeout
    answered = 0
    while not done():
        assert time.monotonic() < deadline, f"timed out after {timeout} s ({answered} PINGs answered)"
        device.receive(0.05)
        if any(message.type == MessageType.PING for message in device.inbox):
            device.inbox[:] = [message for message in device.inbox if message.type != MessageType.PING]
            device.send(sub_res(device.uid))
            answered += 1
    return answered


def test_a_bridge_claims_a_replayed_buffer_of_its_connected_device(
    children: Children, store: BufferStore, namespace: str, tmp_path: Path
) -> None:
    uid = make_uid(SERVO)
    states = [(T0 + step * 1_000_000_000, RECORDED) for step in range(30)]  # 30 s of a recorded servo
    recording = hostile_recording(tmp_path / "servo.mcap", states=states, uid=uid)
    replay = children.start("runtime.tools.replay", str(recording), "--namespace", namespace, "--loop")
    wait_for("the replay to serve the recorded servo", lambda: _served_by(store, uid, replay.pid), timeout=20)
    servo = open_buffer(store, uid)
    assert servo.get("servo0") == 0.5
    device = FakeDevice(uid)
    try:
        bridge = children.start("runtime.tools.bridge", "--port", device.path)
        # Refused at first (the replay serves it): the bridge claims it, tries again and serves it.
        _answer_pings_until(device, lambda: servo.producer_pid == bridge.pid and servo.valid)
        device.accept_subscription(timeout=5)
        device.send(dev_data(SERVO, servo0=-0.75))
        wait_for("the device's live value", lambda: servo.get("servo0") == -0.75, every=0.005)
        bridge_log, replay_log = children.log(bridge), children.log(replay)
        claims = [line for line in bridge_log.splitlines() if "claiming its buffer" in line]
        assert len(claims) == 1, bridge_log
        assert f"served by process {replay.pid}; claiming its buffer" in claims[0]
        assert f"claimed by process {bridge.pid}" in replay_log, replay_log
        # The replay ends: it leaves the segment (the bridge's now) in place, still served.
        assert children.stop(replay) == 0, children.log(replay)
        assert servo.producer_pid == bridge.pid and servo.valid
        assert store.get_or_open(uid, create=False) is servo
        device.send(dev_data(SERVO, servo0=0.125))
        wait_for("the next live value", lambda: servo.get("servo0") == 0.125, every=0.005)
        assert bridge.poll() is None
    finally:
        device.close()


PRODUCER = """
import sys
from runtime.buffer import BufferStore
from runtime.catalog import load
with BufferStore(load()) as store:
    buffer = store.get_or_open(int(sys.argv[1]))
    buffer.serve()
    print("serving", flush=True)
    sys.stdin.read()  # until the test closes our stdin: serve, and ignore claims
"""


def test_a_producer_that_ignores_claims_keeps_the_buffer_and_the_claim_is_logged_once(
    children: Children, store: BufferStore
) -> None:
    uid = make_uid(SERVO)
    producer = subprocess.Popen(
        [sys.executable, "-c", PRODUCER, str(uid)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    device = FakeDevice(uid)
    try:
        assert producer.stdout is not None and producer.stdout.readline() == b"serving\n"
        servo = open_buffer(store, uid)
        bridge = children.start("runtime.tools.bridge", "--port", device.path)

        def tried_thrice() -> bool:  # refused and claimed twice (the second after the short delay)
            return children.log(bridge).count("opened; waiting for a Smart Device") >= 3

        _answer_pings_until(device, tried_thrice)
        assert servo.claimed == bridge.pid
        assert servo.producer_pid == producer.pid and servo.valid
        log = children.log(bridge)
        assert sum("claiming its buffer" in line for line in log.splitlines()) == 1, log
        assert f"served by process {producer.pid}; claiming its buffer" in log
        assert bridge.poll() is None
    finally:
        device.close()
        assert producer.stdin is not None
        producer.stdin.close()
        producer.wait(10)
        if producer.stdout is not None:
            producer.stdout.close()


def test_claimed_names_a_live_claimant_that_does_not_serve(store: BufferStore) -> None:
    """claim() from another process shows in claimed (its pid); gone with it; granted when it serves."""
    servo = store.get_or_open(make_uid(SERVO))
    servo.serve()
    try:
        assert servo.claimed is None
        claimant = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys; from runtime.buffer import BufferStore; from runtime.catalog import load\n"
                "with BufferStore(load()) as s:\n"
                f"    s.get_or_open({servo.uid}).claim(); print('claimed', flush=True); sys.stdin.read()",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert claimant.stdout is not None and claimant.stdin is not None
        assert claimant.stdout.readline() == b"claimed\n"
        assert servo.claimed == claimant.pid
        assert servo.serving and servo.valid  # a claim asks: it never takes
        claimant.stdin.close()
        claimant.wait(10)
        claimant.stdout.close()
        assert servo.claimed is None  # its claimant is gone
    finally:
        servo.stop_serving()


def test_a_second_bridge_on_a_served_port_says_once_which_bridge_serves_it_and_takes_it_over_later(
    children: Children, store: BufferStore
) -> None:
    uid = make_uid(SERVO)
    device = FakeDevice(uid)
    try:
        first = children.start("runtime.tools.bridge", "--port", device.path)
        _answer_pings_until(device, lambda: _served_by(store, uid, first.pid))
        device.accept_subscription(timeout=5)
        servo = open_buffer(store, uid)
        second = children.start("runtime.tools.bridge", "--port", device.path, "--verbose")
        # It tries the port every RETRY_DELAY, quietly after the first time (debug lines with --verbose).

        def tried_thrice() -> bool:  # the device talks on meanwhile: the first bridge keeps it
            device.send(dev_data(SERVO, servo0=0.25))
            device.receive(0)
            device.inbox.clear()
            return children.log(second).count(f"port {device.path}: still served by") >= 2

        wait_for("the second bridge to try the port thrice", tried_thrice, timeout=20, every=0.1)
        log = children.log(second)
        said = [line for line in log.splitlines() if f"port {device.path}: served by" in line]
        assert said == [said[0]] and f"served by another runtime bridge (pid {first.pid})" in said[0], log
        assert "ERROR" not in log and "opened; waiting" not in log, log
        assert servo.producer_pid == first.pid and servo.valid and second.poll() is None, children.log(first)
        # The first one ends: the second takes the port.
        assert children.stop(first) == 0, children.log(first)
        _answer_pings_until(device, lambda: servo.producer_pid == second.pid and servo.valid)
    finally:
        device.close()
