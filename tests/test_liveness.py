"""Liveness end to end: validity owned by the bridge, ended by its death; the bridge never stuck.

Real processes on real pseudo-terminals: ``runtime emulate`` plays the devices,
``runtime bridge`` serves them, and the test (or a child it starts) plays the
student code and the consumers that misbehave.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path
from typing import Any

import e2e
import pytest
from e2e import (
    CATALOG,
    POT,
    Children,
    children_fixture,
    make_uid,
    namespace_fixture,
    open_buffer,
    stats_entry,
    wait_for,
)

from runtime.buffer import BufferStore, DeviceBuffer, DeviceBufferError

# slow: bridges started, killed and restarted as processes
pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

YOGI: type[DeviceBuffer] = CATALOG["yogi-bear"]  # type: ignore[assignment]
FORK = multiprocessing.get_context("fork")

namespace = namespace_fixture("rt-test-liveness")
children = children_fixture()
store = e2e.store


def updates_flow(buffer: DeviceBuffer, seconds: float = 0.5) -> bool:
    """Whether the buffer's last_update moves forward within ``seconds``."""
    before = buffer.last_update
    return bool(wait_for("a fresh update", lambda: buffer.last_update > before, timeout=seconds))


def test_bridge_killed_invalidates_its_buffers_at_once_and_a_restart_takes_over(
    children: Children, store: BufferStore, tmp_path: Path
) -> None:
    yogi_uid, pot_uid = make_uid(YOGI), make_uid(POT)
    links = tmp_path / "links"
    children.emulate(f"yogi-bear:{yogi_uid:#x}", f"potentiometer:{pot_uid:#x}", "--link", str(links), count=2)
    first = children.start("runtime.tools.bridge", "--glob", f"{links}/*")
    yogi, pot = open_buffer(store, yogi_uid), open_buffer(store, pot_uid)
    wait_for("both devices valid", lambda: yogi.valid and pot.valid)
    assert yogi.producer_pid == first.pid
    inode = os.stat(f"/dev/shm/{yogi.name}").st_ino

    first.kill()
    assert first.wait(10) == -signal.SIGKILL
    # No timeout, no polling daemon: the very next look says invalid.
    assert not yogi.valid and not pot.valid
    assert yogi.producer_pid is None
    with pytest.raises(DeviceBufferError, match="producer died"):
        yogi.get("enc_pos")
    with pytest.raises(DeviceBufferError):
        yogi.write("duty_cycle", 0.5)  # accepted by nobody, so refused

    second = children.start("runtime.tools.bridge", "--glob", f"{links}/*")
    wait_for("both devices valid again", lambda: yogi.valid and pot.valid, timeout=15)
    assert yogi.producer_pid == second.pid
    assert os.stat(f"/dev/shm/{yogi.name}").st_ino == inode  # the same segment, taken over
    assert updates_flow(yogi, 2.0)
    assert "taking over from a producer that died" in children.log(second)
    assert children.stop(second) == 0
    assert not yogi.valid  # a clean stop ends validity too


def student_code(uid: int, opened: Any, finish: Any, results: Any) -> None:
    """Opens the device's buffer before the bridge does (it creates it), then exits."""
    with BufferStore(CATALOG) as store:
        motor = store.get_or_open(uid)
        results.put(("created", motor.valid))
        opened.set()
        finish.wait(30)
        results.put(("before exit", motor.valid))
        motor.write("duty_cycle", 0.25)


def test_student_code_first_then_exiting_never_invalidates_the_device(
    children: Children, store: BufferStore, tmp_path: Path
) -> None:
    uid = make_uid(YOGI)
    opened, finish = FORK.Event(), FORK.Event()
    results = FORK.Queue()
    student = FORK.Process(target=student_code, args=(uid, opened, finish, results), daemon=True)
    student.start()
    try:
        assert opened.wait(30)
        assert results.get(timeout=30) == ("created", False)  # no default passes for a reading
        _, lines = children.emulate(f"yogi-bear:{uid:#x}", count=1)
        bridge = children.start("runtime.tools.bridge", "--port", lines[0][2])
        motor = open_buffer(store, uid)
        wait_for("the device valid", lambda: motor.valid)
        finish.set()
        assert results.get(timeout=30) == ("before exit", True)
        student.join(30)
        assert student.exitcode == 0
        # The student process (the segment's creator) exited: the device stays live.
        assert motor.valid and updates_flow(motor, 2.0)
        assert motor.valid
        assert bridge.poll() is None
    finally:
        if student.is_alive():
            student.kill()
        student.join(10)


def hold_in_transaction(uid: int, holding: Any) -> None:
    with BufferStore(CATALOG) as store:
        buffer = store.get_or_open(uid, create=False)
        with buffer.transaction():
            holding.set()
            time.sleep(120)  # stopped here by the test, then killed


def test_a_stopped_consumer_holding_one_lock_never_stalls_the_other_devices(
    children: Children, store: BufferStore, tmp_path: Path
) -> None:
    yogi_uid, pot_uid = make_uid(YOGI), make_uid(POT)
    links = tmp_path / "links"
    children.emulate(f"yogi-bear:{yogi_uid:#x}", f"potentiometer:{pot_uid:#x}", "--link", str(links), count=2)
    stats = tmp_path / "stats.json"
    bridge = children.start("runtime.tools.bridge", "--glob", f"{links}/*", "--stats", str(stats))
    yogi, pot = open_buffer(store, yogi_uid), open_buffer(store, pot_uid)
    wait_for("both devices valid", lambda: yogi.valid and pot.valid and pot.last_update > 0)

    holding = FORK.Event()
    consumer = FORK.Process(target=hold_in_transaction, args=(yogi_uid, holding), daemon=True)
    consumer.start()
    try:
        assert holding.wait(30)
        assert consumer.pid is not None
        os.kill(consumer.pid, signal.SIGSTOP)  # Ctrl-Z inside transaction(): the lock stays held
        # The other device goes on, update after update, for longer than a lock timeout.
        stalled_at = time.monotonic()
        seen = 0
        while time.monotonic() - stalled_at < 2.5:
            assert updates_flow(pot, 0.3)
            seen += 1
        assert seen >= 8
        assert yogi.valid  # the stuck device is still served (its lock is merely busy)
        wait_for("the stall counted", lambda: (e := stats_entry(stats, yogi_uid)) and e["lock_stalls"] >= 1)
        wait_for("the stall logged", lambda: "held the buffer's lock" in children.log(bridge), timeout=5)
        os.kill(consumer.pid, signal.SIGKILL)  # its lock is recovered; the held-back values land
        consumer.join(10)
        wait_for("the lock free again", lambda: "lock free again" in children.log(bridge), timeout=5)
        assert updates_flow(yogi, 2.0)
    finally:
        if consumer.is_alive():
            consumer.kill()
        consumer.join(10)
    assert bridge.poll() is None


def test_an_explicit_port_that_does_not_exist_yet_is_announced_then_served(
    children: Children, store: BufferStore, tmp_path: Path
) -> None:
    uid = make_uid(POT)
    links = tmp_path / "links"
    port = links / "potentiometer-0"
    bridge = children.start("runtime.tools.bridge", "--port", str(port))
    wait_for("the bridge to say it waits", lambda: f"waiting for {port}" in children.log(bridge))
    children.emulate(f"potentiometer:{uid:#x}", "--link", str(links), count=1)
    pot = open_buffer(store, uid, timeout=15)
    wait_for("the device valid", lambda: pot.valid)
    assert f"port {port}: appeared" in children.log(bridge)
    assert children.log(bridge).count(f"waiting for {port}") == 1  # said once, not every scan
