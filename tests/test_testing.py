"""The public test kit, ``runtime.testing``: real processes, real pseudo-terminals, shared memory cleaned up.

* :class:`~runtime.testing.FakeDevice` against a pyserial host and against the real bridge;
* :func:`~runtime.testing.emulated_robot`: start, buffers, bridge restart, and cleanup
  (no process, segment or directory left) whether the block ends well or not;
* the pytest plugin, in a pytest run of its own;
* which way imports point (the kit never imports the tools; the library never imports the kit).
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import serial
from e2e import CATALOG, SERVO, make_uid, namespace_fixture, wait_for

from runtime.buffer import SHM_DIR, BufferStore, DeviceBuffer, DeviceBufferError
from runtime.messaging import DELIM, Message, MessageError, MessageType
from runtime.testing import (
    DeviceModel,
    EmulationError,
    FakeDevice,
    FakeSerialPort,
    FaultRates,
    dev_data,
    emulated_robot,
    random_uid,
    sub_res,
)
from runtime.testing import emulator as emulate

# slow: the testing kit's emulated robots, as processes
pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

YOGI: type[DeviceBuffer] = CATALOG["yogi-bear"]  # type: ignore[assignment]
SWITCH: type[DeviceBuffer] = CATALOG["limit-switch"]  # type: ignore[assignment]


def segments(namespace: str) -> list[str]:
    return [entry for entry in os.listdir(SHM_DIR) if entry.startswith(namespace + "-")]


def alive(pid: int) -> bool:
    """Whether a process runs (a zombie does not count)."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            return file.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


namespace = namespace_fixture("rt-test-testing", scope="function", autouse=False)


@pytest.fixture
def bridge_on() -> Iterator[Callable[[str], subprocess.Popen[bytes]]]:
    """Start ``python -m runtime.tools.bridge --port PATH`` (call it with the path); killed after the test."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(path: str) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [sys.executable, "-m", "runtime.tools.bridge", "--port", path],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        processes.append(process)
        return process

    try:
        yield start
    finally:
        for process in processes:
            process.kill()
            process.wait(10)


# ---- what the kit is made of ------------------------------------------------------------------


def test_the_emulator_runs_the_kits_device_model() -> None:
    assert emulate.DeviceModel is DeviceModel
    assert emulate.FaultRates is FaultRates
    assert DeviceModel.__module__ == "runtime.testing.device"


def test_imports_point_one_way() -> None:
    """The kit uses the library, never the tools; the library never imports the kit or the tools."""
    code = """
import importlib, pkgutil, sys
import runtime
library = [m.name for m in pkgutil.iter_modules(runtime.__path__, "runtime.")
           if m.name not in ("runtime.tools", "runtime.testing", "runtime.__main__")]
for name in library:
    try:
        importlib.import_module(name)
    except ImportError:  # an optional dependency missing: nothing to check in that module
        pass
print(sorted(m for m in sys.modules if m.startswith(("runtime.tools", "runtime.testing"))))
import runtime.testing, runtime.testing.pytest_plugin
print(sorted(m for m in sys.modules if m.startswith("runtime.tools")))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["[]", "[]"]


def test_random_uids_are_of_the_type_and_reproducible() -> None:
    uid = random_uid(YOGI.device_id, random.Random(3))
    assert uid >> 72 == YOGI.device_id
    assert uid == random_uid(YOGI.device_id, random.Random(3))


# ---- FakeDevice ---------------------------------------------------------------------------------


def test_fake_device_talks_to_a_serial_host() -> None:
    uid = make_uid(SWITCH)
    with FakeDevice(uid) as device:
        host = serial.Serial(device.path, 115200, timeout=2)
        try:
            host.write(Message.make_ping().encode() + DELIM)
            device.introduce()
            assert Message.decode(host.read_until(DELIM)[:-1]).read_sub_res() == sub_res(uid).read_sub_res()
            host.write(Message.make_sub_req(0b101, 40).encode() + DELIM)
            assert device.accept_subscription() == (0b101, 40)
            assert Message.decode(host.read_until(DELIM)[:-1]).read_sub_res()[:2] == (0b101, 40)
            device.send(dev_data(SWITCH, switch0=True))
            with SWITCH.open("host", shared=False) as view:
                view.update(Message.decode(host.read_until(DELIM)[:-1]))
                assert view.get("switch0") is True
        finally:
            host.close()
    assert device.closed
    device.close()  # idempotent


def test_fake_device_expect_says_what_came_instead() -> None:
    with FakeDevice() as device, open(device.path, "wb", buffering=0) as host:
        host.write(Message.make_hb_req(7).encode() + DELIM)
        with pytest.raises(
            AssertionError, match=r"no PING from the host .* within 0.2 s \(received: HB_REQ\)"
        ):
            device.expect(MessageType.PING, timeout=0.2)
        with pytest.raises(ValueError, match="no UID"):
            device.introduce(timeout=0.1)


def test_fake_serial_port_keeps_bad_frames() -> None:
    good = Message.make_ping().encode()
    with FakeSerialPort() as strict, open(strict.path, "wb", buffering=0) as host:
        host.write(b"\x05junk" + DELIM + good + DELIM)
        with pytest.raises(MessageError):
            wait_for("the frames", lambda: strict.receive(0.1) or strict.bad_frames)
        assert [message.type for message in strict.inbox] == [MessageType.PING]  # the good one is kept
    with FakeSerialPort(strict=False) as lenient, open(lenient.path, "wb", buffering=0) as host:
        host.write(b"\x05junk" + DELIM + good + DELIM)
        assert [message.type for message in lenient.collect(0.3)] == [MessageType.PING]
        assert lenient.bad_frames == [b"\x05junk"]


def test_fake_serial_port_write_times_out_when_nobody_reads() -> None:
    with FakeSerialPort() as port:
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="did not read"):
            port.write(b"\x01" * 1_000_000, timeout=0.2)
        assert time.monotonic() - started < 5


def test_the_bridge_serves_a_fake_device(
    namespace: str, bridge_on: Callable[[str], subprocess.Popen[bytes]]
) -> None:
    uid = make_uid(SERVO)
    with FakeDevice(uid) as device, BufferStore(CATALOG) as store:
        bridge_on(device.path)
        device.introduce()
        assert device.accept_subscription() == (0b11, 40)
        device.send(dev_data(SERVO, servo0=0.25, servo1=-0.5))
        servo = wait_for("the servo's buffer", lambda: _valid(store, uid))
        wait_for("the values", lambda: servo.get("servo1") == -0.5)
        assert servo.get("servo0") == 0.25
        servo.write("servo0", 0.75)  # the bridge sends it to the device
        write = device.expect(MessageType.DEV_WRITE, where=lambda m: m.type == MessageType.DEV_WRITE)
        with SERVO.open("device", shared=False) as view:
            view.update(write)
            assert view.get_write() == {"servo0": 0.75}


def test_a_device_model_serves_the_bridge_in_process(
    namespace: str, bridge_on: Callable[[str], subprocess.Popen[bytes]]
) -> None:
    uid = make_uid(YOGI)
    model = DeviceModel(YOGI, uid, seed=4)
    try:
        with FakeDevice() as device, BufferStore(CATALOG) as store:
            bridge_on(device.path)
            deadline = time.monotonic() + 15
            while (motor := _valid(store, uid)) is None or motor.last_update == 0:
                assert time.monotonic() < deadline, "the bridge never served the model"
                device.serve(model, 0.1)
            motor.write("duty_cycle", 0.5)
            while abs(model.buffer.get("duty_cycle") - 0.5) > 1e-6:  # the bridge's write reached the model
                assert time.monotonic() < deadline, "the write never reached the model"
                device.serve(model, 0.1)
            assert model.messages_in > 0 and model.errors == 0
    finally:
        model.close()


def _valid(store: BufferStore, uid: int) -> DeviceBuffer | None:
    try:
        buffer = store.get_or_open(uid, create=False)
    except DeviceBufferError:
        return None
    return buffer if buffer.valid else None


# ---- emulated_robot -----------------------------------------------------------------------------


def test_emulated_robot_serves_its_devices_then_leaves_nothing(tmp_path: Path) -> None:
    outer = BufferStore.namespace()
    uid = make_uid(YOGI)
    with emulated_robot(f"yogi-bear:{uid:#x}", "limit-switch", SWITCH.device_id << 72 | 5) as robot:
        assert BufferStore.namespace() == robot.namespace != outer
        assert robot.namespace.startswith("rt-testing-")
        assert robot.env["RUNTIME_BUFFER_NAMESPACE"] == robot.namespace
        assert [device.type_name for device in robot.devices] == ["yogi-bear", "limit-switch", "limit-switch"]
        assert robot.uids[0] == uid and robot.uids[2] == SWITCH.device_id << 72 | 5
        assert robot.uid("yogi-bear") == uid
        with pytest.raises(ValueError, match="2 limit-switch devices"):
            robot.uid("limit-switch")
        with pytest.raises(KeyError):
            robot.uid("servo-motor")
        for device in robot.devices:
            buffer = robot.store.get_or_open(device.uid)
            assert buffer.valid and buffer.last_update > 0  # served, with data
            assert os.path.realpath(device.link) == device.port
        motor = robot.buffer(uid)
        motor.write("duty_cycle", 1.0)
        robot.wait_for(lambda: motor.get("enc_pos") > 200, timeout=5)
        expected = {f"{u:#x}" for u in robot.uids}
        robot.wait_for(
            lambda: {entry["uid"] for entry in (robot.bridge_stats() or {}).get("devices", [])} == expected,
            what="the bridge's stats of every device",
        )
        pids = list(robot.pids.values())
        assert len(pids) == 2
        directory, namespace = robot.directory, robot.namespace
        assert len(segments(namespace)) == 3 and directory.is_dir()
    assert BufferStore.namespace() == outer
    assert segments(namespace) == [] and not directory.exists()
    assert not any(alive(pid) for pid in pids)


def test_emulated_robot_cleans_up_when_the_block_fails() -> None:
    with pytest.raises(ZeroDivisionError):
        with emulated_robot("limit-switch", seed=None) as robot:
            pids = list(robot.pids.values())
            namespace, directory = robot.namespace, robot.directory
            1 / 0  # noqa: B018
    assert segments(namespace) == [] and not directory.exists()
    assert not any(alive(pid) for pid in pids)


def test_the_bridge_stops_and_comes_back_in_the_same_buffer() -> None:
    with emulated_robot("limit-switch", still=True) as robot:
        switch = robot.buffer("limit-switch")
        inode = os.stat(os.path.join(SHM_DIR, switch.name)).st_ino
        assert robot.stop_bridge() == 0 and not robot.bridge_running
        assert not switch.valid
        with pytest.raises(DeviceBufferError):
            switch.get("switch0")
        with pytest.raises(RuntimeError, match="not running"):
            robot.stop_bridge()
        robot.start_bridge()
        assert robot.bridge_running and switch.valid and switch.get("switch0") is False
        assert os.stat(os.path.join(SHM_DIR, switch.name)).st_ino == inode
        with pytest.raises(RuntimeError, match="is running"):
            robot.start_bridge()


def test_the_robot_stops_when_its_process_is_killed(namespace: str, tmp_path: Path) -> None:
    """A test runner killed outright (SIGKILL) leaves no emulator or bridge running."""
    code = f"""
import sys, time
from runtime.testing import emulated_robot
with emulated_robot("limit-switch", namespace={namespace!r}, directory={str(tmp_path)!r}) as robot:
    print(*robot.pids.values(), flush=True)
    time.sleep(60)
"""
    runner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert runner.stdout is not None
        pids = [int(word) for word in runner.stdout.readline().split()]
        assert len(pids) == 2 and all(alive(pid) for pid in pids)
    finally:
        runner.kill()
        runner.communicate()
    wait_for("the emulator and the bridge to stop", lambda: not any(alive(pid) for pid in pids))
    # Their segments stay (nobody was left to unlink them): the namespace fixture removes them.


def test_emulated_robot_keeps_a_directory_it_is_given(tmp_path: Path) -> None:
    with emulated_robot("limit-switch", directory=tmp_path / "robot") as robot:
        assert robot.directory == tmp_path / "robot"
    assert (tmp_path / "robot" / "bridge.log").exists()
    assert (tmp_path / "robot" / "emulator.log").exists()


@pytest.mark.parametrize(
    ("devices", "message"),
    [
        (("no-such-type",), "not a Smart Device type"),
        (("gamepad",), "not a Smart Device type"),
        (("yogi-bear:0x5",), "device_id is not yogi-bear's"),
        (("yogi-bear:banana",), "must be an integer"),
        ((1 << 87,), "no Smart Device type has device_id"),
        ((f"yogi-bear:{10 << 72 | 1:#x}", 10 << 72 | 1), "the same UID"),
        ((), "no devices"),
    ],
)
def test_emulated_robot_refuses_bad_devices(devices: tuple[str | int, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        with emulated_robot(*devices):
            pass


def test_emulated_robot_refuses_a_namespace_in_use(namespace: str) -> None:
    with BufferStore(CATALOG) as store:
        store.get_or_open(make_uid(SWITCH))  # one segment in the namespace
    with pytest.raises(ValueError, match="already has segments"):
        with emulated_robot("limit-switch", namespace=namespace):
            pass
    assert len(segments(namespace)) == 1  # not unlinked: it was not the robot's


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"faults": FaultRates(drop=1.0), "timeout": 1.5},
            r"timed out after [\d.]+ s waiting for the limit-switch",
        ),
        ({"bridge_args": ["--no-such-option"]}, r"the bridge exited \(status 2\)"),
        ({"emulate_args": ["--no-such-option"]}, r"the emulator exited \(status 2\)"),
    ],
)
def test_a_robot_that_does_not_start_says_why_and_leaves_nothing(
    options: dict[str, object], message: str
) -> None:
    namespace = f"rt-test-testing-fail-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    with pytest.raises(EmulationError, match=message) as failure:
        with emulated_robot("limit-switch", namespace=namespace, **options):  # type: ignore[arg-type]
            pass
    assert time.monotonic() - started < 20
    assert "----" in str(failure.value)  # the processes' logs are quoted
    assert segments(namespace) == []


# ---- the pytest plugin --------------------------------------------------------------------------

CONFTEST = """
pytest_plugins = ["runtime.testing.pytest_plugin"]
"""

TESTS = """
import pytest
from runtime.messaging import Message, MessageType


def test_the_default_devices(runtime_robot, runtime_devices):
    assert runtime_devices == ("limit-switch", "yogi-bear")
    assert [device.type_name for device in runtime_robot.devices] == list(runtime_devices)
    assert runtime_robot.buffer("yogi-bear").valid


@pytest.mark.runtime_devices("servo-motor", still=True, seed=3)
def test_the_marker_chooses(runtime_robot):
    (device,) = runtime_robot.devices
    assert device.type_name == "servo-motor"
    assert runtime_robot.buffer(device.uid).get("servo0") == 0.0


def test_a_fake_device(fake_device):
    assert fake_device.path.startswith("/dev/pts/")
    with open(fake_device.path, "wb", buffering=0) as host:
        host.write(Message.make_ping().encode() + b"\\0")
        assert fake_device.expect(MessageType.PING)


def test_a_failure_shows_the_logs(runtime_robot):
    assert False, "on purpose"
"""


def test_the_pytest_plugin(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_robot.py").write_text(TESTS)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "--strict-markers",
            "-rA",
            "test_robot.py",
        ],
        capture_output=True,
        text=True,
        timeout=50,
        cwd=tmp_path,
    )
    assert re.search(r"^=+ 1 failed, 3 passed in ", done.stdout, re.M), done.stdout + done.stderr
    assert "test_a_failure_shows_the_logs" in done.stdout and "on purpose" in done.stdout
    assert "---- bridge.log (end)" in done.stdout  # printed in the failing test's teardown
    assert not re.search(r"warning", done.stdout, re.I), done.stdout
