"""The buffers on Zenoh, end to end: ``runtime zenoh`` on one side, a remote machine on the other.

Separate processes on loopback TCP: the robot side is ``runtime emulate``
(devices on pseudo-terminals), ``runtime bridge`` and ``runtime zenoh
--listen tcp/127.0.0.1:PORT`` in a namespace of this module's own; the remote
side is :mod:`runtime.remote` and a raw Zenoh session that uses nothing but
the documented key expressions and JSON, as a client in another language would.
Commands (writes of safe-valued parameters) belong to the remote client that
sent them (its liveliness token): they end when it closes, is killed or goes
silent past its lease; a command without a token, or while the robot is
disabled, is refused on ``.../error``; the robot's state is seen remotely.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import e2e
import pytest
import zenoh
from e2e import (
    CATALOG,
    POT,
    SERVO,
    Children,
    children_fixture,
    make_uid,
    namespace_fixture,
    open_buffer,
    wait_for,
)

from runtime import remote
from runtime.buffer import BufferStore, DeviceBuffer, DeviceBufferError
from runtime.tools import zenoh as zenoh_tool
from runtime.values import WriteRefused

# slow: runtime zenoh, the bridge and emulated devices; remote Zenoh sessions
pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

namespace = namespace_fixture("rt-test-zenoh")
children = children_fixture()
store = e2e.store

LIVELINESS_DEADLINE = 5.0
"""Seconds within which a remote must see a SIGKILL of ``runtime zenoh``."""


# ---- helpers ------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nobody listens on (now)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_zenoh(children: Children, port: int, *args: str) -> subprocess.Popen[bytes]:
    return children.start("runtime.tools.zenoh", "--listen", f"tcp/127.0.0.1:{port}", *args)


def start_robot(
    children: Children, tmp_path: Path, *devices: str, zenoh_args: tuple[str, ...] = ()
) -> tuple[str, subprocess.Popen[bytes], subprocess.Popen[bytes]]:
    """Emulated devices (values change only when written), the bridge and ``runtime zenoh``.

    Returns the endpoint, the bridge and the ``runtime zenoh`` process.
    """
    links = tmp_path / "links"
    children.emulate(*devices, "--still", "--link", str(links), count=len(devices))
    bridge = children.start("runtime.tools.bridge", "--glob", f"{links}/*")
    port = free_port()
    server = start_zenoh(children, port, *zenoh_args)
    return f"tcp/127.0.0.1:{port}", bridge, server


def connect(endpoint: str, namespace: str) -> remote.Robot:
    """A :class:`remote.Robot`, once ``runtime zenoh`` listens."""

    def attempt() -> remote.Robot | None:
        try:
            return remote.connect(endpoint, namespace=namespace, timeout=2.0)
        except remote.RemoteError:
            return None

    return wait_for(f"runtime zenoh on {endpoint}", attempt, timeout=15, every=0.1)


class Raw:
    """A plain Zenoh session of a remote client: only the key expressions, no runtime code."""

    def __init__(self, endpoint: str) -> None:
        config = zenoh.Config()
        config.insert_json5("mode", '"client"')
        config.insert_json5("connect/endpoints", json.dumps([endpoint]))
        config.insert_json5("scouting/multicast/enabled", "false")
        self.session: Any = wait_for("a raw session", lambda: self._open(config), timeout=15, every=0.1)
        self.lock = threading.Lock()
        self.samples: list[tuple[str, str, Any]] = []
        """``(kind, key, JSON or None)`` of everything the subscriptions received, in order."""
        self.entities: list[Any] = []

    @staticmethod
    def _open(config: zenoh.Config) -> zenoh.Session | None:
        try:
            return zenoh.open(config)
        except zenoh.ZError:
            return None

    def _take(self, what: str) -> Any:
        def take(sample: zenoh.Sample) -> None:
            payload = sample.payload.to_bytes()
            with self.lock:
                self.samples.append(
                    (
                        f"{what} {'PUT' if sample.kind == zenoh.SampleKind.PUT else 'DELETE'}",
                        str(sample.key_expr),
                        json.loads(payload) if payload else None,
                    )
                )

        return take

    def subscribe(self, key: str) -> None:
        self.entities.append(self.session.declare_subscriber(key, self._take("data")))

    def watch_liveliness(self, key: str) -> None:
        self.entities.append(
            self.session.liveliness().declare_subscriber(key, self._take("token"), history=True)
        )

    def received(self, kind: str, key: str | None = None) -> list[Any]:
        with self.lock:
            return [data for k, sample_key, data in self.samples if k == kind and key in (None, sample_key)]

    def keys(self, kind: str) -> list[str]:
        with self.lock:
            return [sample_key for k, sample_key, _ in self.samples if k == kind]

    def get(self, selector: str) -> dict[str, Any]:
        return {
            str(reply.ok.key_expr): json.loads(reply.ok.payload.to_bytes())
            for reply in self.session.get(selector, timeout=5)
            if reply.ok is not None
        }

    def put(self, key: str, payload: str, attachment: str | None = None) -> None:
        self.session.put(key, payload, attachment=attachment)

    def declare_token(self, key: str) -> Any:
        """A liveliness token (undeclared at :meth:`close`, or earlier by the test)."""
        token = self.session.liveliness().declare_token(key)
        self.entities.append(token)
        return token

    def close(self) -> None:
        for entity in self.entities:
            with contextlib.suppress(Exception):  # undeclared by the test already
                entity.undeclare()
        self.session.close()


@pytest.fixture
def raw_sessions() -> Iterator[list[Raw]]:
    """Raw sessions the test opens, closed after it (so that no Zenoh thread outlives it)."""
    sessions: list[Raw] = []
    try:
        yield sessions
    finally:
        for raw in sessions:
            raw.close()


def raw(sessions: list[Raw], endpoint: str) -> Raw:
    session = Raw(endpoint)
    sessions.append(session)
    return session


def key(namespace: str, type_name: str, uid: int) -> str:
    return f"runtime/{namespace}/{type_name}/{uid:#x}"


def served(plain: Raw, *keys: str) -> bool:
    """Whether ``runtime zenoh`` answers for every key, valid (the namespace may hold older buffers)."""
    answers = plain.get(f"{keys[0].rsplit('/', 2)[0]}/**")
    return all(answers.get(one, {}).get("valid") for one in keys)


# ---- the names -----------------------------------------------------------------------------------


def test_import_zenoh_in_the_tool_is_the_zenoh_package() -> None:
    assert vars(zenoh_tool)["zenoh"] is zenoh  # the package, not runtime/tools/zenoh.py itself
    assert zenoh.__name__ == "zenoh" and hasattr(zenoh, "open")
    done = subprocess.run(
        [sys.executable, "-m", "runtime.tools.zenoh", "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "$ runtime zenoh --listen" in done.stdout


def test_keys_and_uids() -> None:
    uid = 0x7_09_0000000000000042
    assert remote.device_key("rt", "servo-motor", uid) == "runtime/rt/servo-motor/0x7090000000000000042"
    assert remote.parse_device_key("runtime/rt/servo-motor/0x7090000000000000042/write") == (
        "rt",
        "servo-motor",
        uid,
    )
    for bad in ("runtime/rt", "runtime/rt/servo-motor/42", "runtime/rt/*/0x1", "other/rt/x/0x1"):
        assert remote.parse_device_key(bad) is None
    for name in ("a/b", "*", "", "@admin", "x$y"):
        with pytest.raises(ValueError):
            remote.check_namespace(name)


def test_nowhere_to_serve_is_a_usage_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "runtime", "zenoh"], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 2
    assert done.stderr.strip().startswith("runtime zenoh: error: nowhere to serve")


def test_nobody_listening_is_a_remote_error() -> None:
    endpoint = f"tcp/127.0.0.1:{free_port()}"
    with pytest.raises(remote.RemoteError, match=f"cannot reach the robot at {endpoint}: ") as caught:
        remote.connect(endpoint, namespace="rt-nobody")
    assert ".rs:" not in str(caught.value) and "\n" not in str(
        caught.value
    )  # one line, no Rust source places
    with pytest.raises(ValueError, match="write tcp/127.0.0.1:7447"):
        remote.connect("127.0.0.1:7447", namespace="rt-nobody")


# ---- connecting without a namespace ----------------------------------------------------------------


def serving_line(children: Children, server: subprocess.Popen[bytes]) -> str:
    """The start-up line of ``runtime zenoh``, once it serves."""
    lines = wait_for(
        "runtime zenoh serving",
        lambda: [line for line in children.log(server).splitlines() if "serving namespace" in line],
        timeout=30,
    )
    return str(lines[0])


def test_connect_without_a_namespace_uses_the_one_served_there(
    children: Children, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    server = start_zenoh(children, port)
    line = serving_line(children, server)
    monkeypatch.delenv("RUNTIME_BUFFER_NAMESPACE")  # a laptop's: nothing says which robot
    robot = wait_for(
        "a robot found", lambda: _connect_or_none(f"tcp/127.0.0.1:{port}"), timeout=15, every=0.1
    )
    with robot:
        assert robot.namespace == namespace
        wait_for("the robot online", lambda: robot.online)
    with remote.connect(f"tcp/127.0.0.1:{port}", namespace="rt-explicit", timeout=1.0) as other:
        assert other.namespace == "rt-explicit"  # an explicit namespace is used as given
    assert f"serving namespace {namespace} on tcp/127.0.0.1:{port} " in line  # the start-up line says where


def _connect_or_none(endpoint: str) -> remote.Robot | None:
    try:
        return remote.connect(endpoint, timeout=2.0)
    except remote.RemoteError:
        return None


def test_connect_without_a_namespace_where_several_robots_answer_lists_them(
    children: Children, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = free_port(), free_port()
    one = start_zenoh(children, first, "--name", f"{namespace}-one", "--read-only")
    serving_line(children, one)
    two = start_zenoh(
        children, second, "--name", f"{namespace}-two", "--read-only", "--connect", f"tcp/127.0.0.1:{first}"
    )
    serving_line(children, two)
    monkeypatch.delenv("RUNTIME_BUFFER_NAMESPACE")

    def several() -> str | None:
        try:
            remote.connect(f"tcp/127.0.0.1:{first}", timeout=2.0).close()
        except remote.RemoteError as exc:
            return exc.message if "several" in exc.message else None
        return None

    message = wait_for("both robots answer", several, timeout=15, every=0.1)
    assert f"namespaces {namespace}-one, {namespace}-two: choose one with namespace=" in message


def test_connect_without_a_namespace_where_no_runtime_zenoh_answers_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = free_port()
    config = zenoh.Config()
    config.insert_json5("mode", '"peer"')
    config.insert_json5("listen/endpoints", json.dumps([f"tcp/127.0.0.1:{port}"]))
    config.insert_json5("scouting/multicast/enabled", "false")
    plain: Any = zenoh.open(config)  # a Zenoh peer, but no runtime zenoh
    monkeypatch.delenv("RUNTIME_BUFFER_NAMESPACE")
    try:
        with pytest.raises(remote.RemoteError) as raised:
            remote.connect(f"tcp/127.0.0.1:{port}", timeout=0.5)
    finally:
        plain.close()
    assert raised.value.message.startswith(
        f"no runtime zenoh answered at tcp/127.0.0.1:{port} (within 0.5 s)"
    )


# ---- values, writes, refusals ---------------------------------------------------------------------


def test_values_arrive_and_a_remote_write_reaches_the_emulated_device(
    children: Children, store: BufferStore, tmp_path: Path, namespace: str, raw_sessions: list[Raw]
) -> None:
    servo_uid, pot_uid = make_uid(SERVO), make_uid(POT)
    endpoint, _, _ = start_robot(
        children, tmp_path, f"servo-motor:{servo_uid:#x}", f"potentiometer:{pot_uid:#x}"
    )
    local = open_buffer(store, servo_uid)
    wait_for("the servo valid", lambda: local.valid)
    plain = raw(raw_sessions, endpoint)
    plain.subscribe(f"runtime/{namespace}/*/*")
    with connect(endpoint, namespace) as robot:
        servo = robot.device(servo_uid)
        wait_for("the servo valid remotely", lambda: servo.valid)
        assert robot.online
        found = {info.key: info for info in wait_for("both devices", lambda: _two(robot))}
        assert found[("servo-motor", servo_uid)].valid and found[("potentiometer", pot_uid)].valid
        assert found[("servo-motor", servo_uid)].key_expr == key(namespace, "servo-motor", servo_uid)

        # Values arrive, driven by the device's reports (the bridge's DEV_DATA, every 40 ms).
        assert servo.wait_update(timeout=5)
        assert servo.wait_update(timeout=5)
        assert set(servo.snapshot()) == {"servo0", "servo1"}
        assert set(robot.device(pot_uid).snapshot()) == {"pot0", "pot1", "pot2"}
        assert servo.type_name == "servo-motor" and servo.uid == servo_uid
        with pytest.raises(
            DeviceBufferError, match=r"no such readable parameter \(did you mean 'servo0'\?\)"
        ):
            servo.get("srvo0")

        # A remote write goes to the device, which reports it back in its values.
        servo.write("servo0", 0.5)
        wait_for("servo0 = 0.5 remotely", lambda: servo.get("servo0") == 0.5)
        wait_for("servo0 = 0.5 in shared memory", lambda: local.get("servo0") == 0.5)

        # The asyncio waits.
        async def twice() -> tuple[bool, bool]:
            return await servo.wait_update_async(5), await servo.wait_update_async(0)

        assert asyncio.run(twice()) == (True, False)

        # The raw client: publications, a get, and a write of its own.
        servo_key = key(namespace, "servo-motor", servo_uid)
        wait_for("raw samples", lambda: len(plain.received("data PUT", servo_key)) >= 3)
        sample = plain.received("data PUT", servo_key)[-1]
        assert sample["type"] == "servo-motor" and sample["uid"] == f"{servo_uid:#x}"
        assert sample["valid"] is True and set(sample["values"]) == {"servo0", "servo1"}
        seqs = [data["seq"] for data in plain.received("data PUT", servo_key)]
        assert seqs == sorted(seqs)
        answers = plain.get(f"runtime/{namespace}/**")
        assert {servo_key, key(namespace, "potentiometer", pot_uid)} <= set(answers)
        assert answers[servo_key]["values"]["servo0"] == 0.5
        assert set(plain.get(servo_key)) == {servo_key}
        # servo1 has a safe value: a write of it is a command, and needs a commander (a token, and its
        # ID as the attachment; see test_a_command_without_a_live_token_is_refused_on_error).
        plain.declare_token(f"runtime/{namespace}/@client/raw-client-1")
        plain.put(f"{servo_key}/write", json.dumps({"servo1": -0.25}), attachment="raw-client-1")
        wait_for("servo1 = -0.25 remotely", lambda: servo.get("servo1") == -0.25)
        assert local.get("servo1") == -0.25


def _two(robot: remote.Robot) -> list[remote.RemoteInfo] | None:
    infos = [info for info in robot.discover() if info.valid]
    return infos if len(infos) == 2 else None


def test_a_refused_write_changes_nothing_and_is_answered_on_error(
    children: Children, store: BufferStore, tmp_path: Path, namespace: str, raw_sessions: list[Raw]
) -> None:
    servo_uid, pot_uid = make_uid(SERVO), make_uid(POT)
    endpoint, _, server = start_robot(
        children, tmp_path, f"servo-motor:{servo_uid:#x}", f"potentiometer:{pot_uid:#x}"
    )
    servo_buffer, pot_buffer = open_buffer(store, servo_uid), open_buffer(store, pot_uid)
    wait_for("both devices valid", lambda: servo_buffer.valid and pot_buffer.valid)
    plain = raw(raw_sessions, endpoint)
    plain.subscribe(f"runtime/{namespace}/*/*/error")
    servo_key, pot_key = key(namespace, "servo-motor", servo_uid), key(namespace, "potentiometer", pot_uid)
    wait_for("both devices served", lambda: served(plain, servo_key, pot_key))
    before = servo_buffer.snapshot()
    pot_before = pot_buffer.get("pot0")

    refused = [
        (pot_key, {"pot0": 1.0}, "pot0", "pot0: read-only"),
        (servo_key, {"servo9": 0.5}, "servo9", "no such parameter"),
        (servo_key, {"servo0": "fast"}, "servo0", "servo0: 'fast' is not a number"),
        (servo_key, {"servo0": 0.75, "servo9": 1}, "servo9", "no such parameter"),  # all or nothing
        (servo_key, {"servo0": None}, "servo0", "servo0: None is not a number"),
        (
            servo_key,
            {"servo0": 0.5, "servo1": 3},
            "servo1",
            "servo1: 3 is out of bounds [-1, 1]",
        ),  # never clamped
    ]
    for target, write, _, _ in refused:
        plain.put(f"{target}/write", json.dumps(write))
    plain.put(f"{servo_key}/write", "not json")
    plain.put(f"{servo_key}/write", "[1, 2]")
    plain.put(f"{key(namespace, 'servo-motor', servo_uid + 1)}/write", '{"servo0": 0.5}')
    errors = wait_for("nine answers", lambda: _at_least(plain.received("data PUT"), 9))
    for (target, write, param, message), error in zip(refused, errors, strict=False):
        assert error["write"] == write
        assert error["param"] == param
        assert message in error["error"]
        assert error["uid"] == target.rsplit("/", 1)[1]
    assert {error["kind"] for error in errors[:6]} == {"WriteRefused"}  # runtime.values: one policy
    assert "JSON object" in errors[6]["error"] and "JSON object" in errors[7]["error"]
    assert errors[8]["error"] == "no such device on this robot"
    assert plain.keys("data PUT")[:2] == [f"{pot_key}/error", f"{servo_key}/error"]

    # Nothing was applied: no write pending, and the device's values are what they were.
    assert servo_buffer.pending_writes() == {}
    assert pot_buffer.pending_writes() == {}
    time.sleep(0.3)  # several write intervals of the bridge: anything applied would be reported by now
    assert servo_buffer.snapshot() == before
    assert pot_buffer.get("pot0") == pot_before
    assert "refused a write" in children.log(server)

    # The client checks first, as a local write does, and keeps the robot's refusals.
    with connect(endpoint, namespace) as robot:
        servo, pot = robot.device(servo_uid), robot.device(pot_uid)
        wait_for("the servo valid remotely", lambda: servo.valid)
        with pytest.raises(DeviceBufferError, match="pot0: read-only") as caught:
            pot.write("pot0", 1.0)
        assert caught.value.context == {"param": "pot0", "value": "1.0", "device": pot_key}
        with pytest.raises(DeviceBufferError, match="servo9: no such parameter of servo-motor"):
            servo.write("servo9", 1.0)
        with pytest.raises(ValueError, match="servo0: 'fast' is not a number"):
            servo.write("servo0", "fast")
        with pytest.raises(
            WriteRefused, match=r"servo1: 3 is out of bounds \[-1, 1\]"
        ):  # refused, not clamped
            servo.write("servo1", 3.0)
        servo.write("servo1", 1.0)
        wait_for("servo1 at 1.0", lambda: servo.get("servo1") == 1.0)
        plain.put(f"{pot_key}/write", json.dumps({"pot1": 0.5}))
        wait_for("the refusal kept", lambda: pot.last_error is not None)
        assert pot.last_error is not None and pot.last_error["param"] == "pot1"


def _at_least(items: list[Any], count: int) -> list[Any] | None:
    return items if len(items) >= count else None


def test_read_only_accepts_no_write(
    children: Children, store: BufferStore, tmp_path: Path, namespace: str, raw_sessions: list[Raw]
) -> None:
    servo_uid = make_uid(SERVO)
    endpoint, _, _ = start_robot(
        children, tmp_path, f"servo-motor:{servo_uid:#x}", zenoh_args=("--read-only",)
    )
    local = open_buffer(store, servo_uid)
    plain = raw(raw_sessions, endpoint)
    servo_key = key(namespace, "servo-motor", servo_uid)
    wait_for("the servo served", lambda: served(plain, servo_key))
    plain.put(f"{servo_key}/write", json.dumps({"servo0": 0.5}))
    time.sleep(0.3)  # the scenario: time for a write that must not happen
    assert local.pending_writes() == {} and local.get("servo0") == 0.0


# ---- liveness -------------------------------------------------------------------------------------


def test_sigkill_of_runtime_zenoh_is_seen_through_liveliness_and_a_restart_is_found_again(
    children: Children, store: BufferStore, tmp_path: Path, namespace: str, raw_sessions: list[Raw]
) -> None:
    servo_uid = make_uid(SERVO)
    endpoint, _, server = start_robot(children, tmp_path, f"servo-motor:{servo_uid:#x}")
    open_buffer(store, servo_uid)
    plain = raw(raw_sessions, endpoint)
    plain.watch_liveliness(f"runtime/{namespace}/**")
    servo_key, robot_key = key(namespace, "servo-motor", servo_uid), f"runtime/{namespace}"
    with connect(endpoint, namespace) as robot:
        servo = robot.device(servo_uid)
        wait_for("the servo valid remotely", lambda: servo.valid)
        wait_for("both tokens", lambda: {servo_key, robot_key} <= set(plain.keys("token PUT")))
        assert servo.wait_update(5)

        server.kill()
        killed = time.monotonic()
        with pytest.raises(DeviceBufferError, match="not connected"):
            while True:
                assert servo.wait_update(LIVELINESS_DEADLINE), "no word of the robot's death"
        assert time.monotonic() - killed < LIVELINESS_DEADLINE
        assert not servo.valid
        wait_for("the robot offline", lambda: not robot.online, timeout=LIVELINESS_DEADLINE)
        wait_for(
            "both tokens gone (raw)",
            lambda: {servo_key, robot_key} <= set(plain.keys("token DELETE")),
            timeout=LIVELINESS_DEADLINE,
        )
        with pytest.raises(DeviceBufferError):
            servo.get("servo0")
        with pytest.raises(DeviceBufferError):
            servo.write("servo0", 0.5)

        # The same endpoint again: the client (Zenoh client mode) reconnects by itself.
        assert robot.enabled is None  # unknown while the robot is away
        start_zenoh(children, int(endpoint.rsplit(":", 1)[1]))
        wait_for("the servo valid again", lambda: servo.valid, timeout=20)
        assert robot.online
        assert servo.wait_update(5) and set(servo.snapshot()) == {"servo0", "servo1"}
        wait_for("the robot's state known again", lambda: robot.enabled is True)
        servo.write("servo0", 0.25)  # a command: the new server knows this client (its token again)
        wait_for("servo0 = 0.25", lambda: servo.get("servo0") == 0.25)


def test_a_bridge_that_dies_invalidates_the_device_remotely_while_the_robot_stays_online(
    children: Children, store: BufferStore, tmp_path: Path, namespace: str, raw_sessions: list[Raw]
) -> None:
    servo_uid = make_uid(SERVO)
    endpoint, bridge, _ = start_robot(children, tmp_path, f"servo-motor:{servo_uid:#x}")
    local = open_buffer(store, servo_uid)
    plain = raw(raw_sessions, endpoint)
    servo_key = key(namespace, "servo-motor", servo_uid)
    plain.subscribe(servo_key)
    with connect(endpoint, namespace) as robot:
        servo = robot.device(servo_uid)
        wait_for("the servo valid remotely", lambda: servo.valid)
        wait_for("the robot online", lambda: robot.online)  # its token may come after the first values
        bridge.kill()
        assert bridge.wait(10) < 0
        assert not local.valid
        wait_for("the servo invalid remotely", lambda: not servo.valid, timeout=LIVELINESS_DEADLINE)
        assert robot.online  # runtime zenoh lives on
        wait_for("valid: false published", lambda: any(not d["valid"] for d in plain.received("data PUT")))
        last = plain.received("data PUT")[-1]
        assert last["valid"] is False and last["values"] is None
        assert [info.valid for info in robot.discover() if info.uid == servo_uid] == [False]

        children.start("runtime.tools.bridge", "--glob", f"{tmp_path / 'links'}/*")
        wait_for("the servo valid again", lambda: servo.valid, timeout=20)
        assert servo.wait_update(5)


# ---- publication: driven by changes, at most --max-rate -------------------------------------------


def test_publications_follow_changes_at_most_max_rate_newest_values_last(
    children: Children, namespace: str, raw_sessions: list[Raw]
) -> None:
    port = free_port()
    with BufferStore(CATALOG) as producer:
        servo_uid = make_uid(SERVO)
        servo: DeviceBuffer = producer.get_or_open(servo_uid)
        servo.serve()  # the test plays the bridge
        pad = producer.get_or_open(("gamepad", 0))  # not a Smart Device: valid from creation
        start_zenoh(children, port, "--max-rate", "10")
        plain = raw(raw_sessions, f"tcp/127.0.0.1:{port}")
        servo_key, pad_key = key(namespace, "servo-motor", servo_uid), key(namespace, "gamepad", 0)
        plain.subscribe(f"runtime/{namespace}/*/*")
        wait_for("both served", lambda: served(plain, servo_key, pad_key))
        assert plain.get(pad_key)[pad_key]["values"]["button_a"] is False

        # Nothing changes: nothing is published.
        time.sleep(0.3)  # the scenario: let the publishing settle, then count
        quiet = len(plain.received("data PUT", servo_key))
        time.sleep(0.5)  # the scenario: a quiet half second publishes nothing
        assert len(plain.received("data PUT", servo_key)) == quiet

        # 200 changes a second for one second: about 10 publications, the last one with the last value.
        started = time.monotonic()
        count = 0
        while time.monotonic() - started < 1.0:
            count += 1
            servo.set("servo0", count / 1000)
            time.sleep(0.005)
        final = count / 1000
        wait_for(
            "the last value published",
            lambda: abs(plain.received("data PUT", servo_key)[-1]["values"]["servo0"] - final) < 1e-6,
        )
        published = len(plain.received("data PUT", servo_key)) - quiet
        assert 5 <= published <= 14, published

        pad.set("button_a", True)
        wait_for(
            "the gamepad published",
            lambda: any(d["values"]["button_a"] for d in plain.received("data PUT", pad_key)),
        )

        # The producer stops serving: one publication says so, then nothing more.
        servo.stop_serving()
        wait_for("valid: false", lambda: plain.received("data PUT", servo_key)[-1]["valid"] is False)
        producer.unlink_all()
        wait_for("a DELETE when the segment is gone", lambda: plain.keys("data DELETE") != [], timeout=5)


# ---- commands belong to the client that sent them; the robot's state ------------------------------

YOGI: type[DeviceBuffer] = CATALOG["yogi-bear"]  # type: ignore[assignment]
KOALA: type[DeviceBuffer] = CATALOG["koala-bear"]  # type: ignore[assignment]
COMMAND_DEADLINE = 5.0
"""Seconds within which the commands of a client that closed or was killed must end (on loopback
its session's end is seen at once)."""
CLIENT_LEASE_MS = 1000
"""The Zenoh lease of a client whose network is 'lost' (its process stopped): dropped after it."""

COMMANDER = """\
import sys, time
from runtime import remote

endpoint, namespace, uid, config = sys.argv[1:]
deadline = time.monotonic() + 15
while True:  # runtime zenoh may not listen yet
    try:
        robot = remote.connect(endpoint, namespace=namespace, config=config or None, timeout=2.0)
        break
    except remote.RemoteError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.1)
motor = robot.device(int(uid, 16))
while not motor.valid and time.monotonic() < deadline:
    time.sleep(0.02)
motor.write("duty_cycle", 0.5)
print(robot.client_id, flush=True)
time.sleep(600)
"""
"""A remote client in a process of its own: commands duty_cycle = 0.5, prints its ID, then waits."""


def start_commander(
    children: Children, tmp_path: Path, endpoint: str, namespace: str, uid: int, *, lease_ms: int = 0
) -> tuple[subprocess.Popen[bytes], str]:
    """A client process commanding a motor's duty_cycle = 0.5 (a Zenoh lease of ``lease_ms`` if given).

    Returns the process and its client ID.
    """
    (tmp_path / "commander.py").write_text(COMMANDER)  # python -m commander, run in tmp_path
    config = ""
    if lease_ms:
        path = tmp_path / f"lease-{lease_ms}.json5"
        path.write_text(json.dumps({"transport": {"link": {"tx": {"lease": lease_ms, "keep_alive": 4}}}}))
        config = str(path)
    process = children.start("commander", endpoint, namespace, f"{uid:#x}", config, stdout=True)
    (line,) = children.read_lines(process, 1)
    return process, line.strip()


def test_a_remote_command_ends_when_its_client_closes_unless_another_client_commanded_since(
    children: Children, store: BufferStore, tmp_path: Path, namespace: str
) -> None:
    uid = make_uid(KOALA)
    endpoint, _, server = start_robot(children, tmp_path, f"koala-bear:{uid:#x}")
    local = open_buffer(store, uid)
    wait_for("the koala valid", lambda: local.valid)
    first = connect(endpoint, namespace)
    try:
        with connect(endpoint, namespace) as second:
            assert first.client_id != second.client_id
            motor, other = first.device(uid), second.device(uid)
            wait_for("the koala valid remotely", lambda: motor.valid and other.valid)
            motor.write("duty_cycle_a", 0.5)
            motor.write("duty_cycle_b", 0.5)
            wait_for(
                "both duty cycles reported",
                lambda: motor.get("duty_cycle_a") == motor.get("duty_cycle_b") == 0.5,
            )
            assert local.commanders() == {"duty_cycle_a": server.pid, "duty_cycle_b": server.pid}
            other.write("duty_cycle_b", -0.25)  # the second client's command now
            wait_for("duty_cycle_b = -0.25", lambda: local.get("duty_cycle_b") == -0.25)
            motor.write("enc_pos_a", 2.0)  # no safe value: not a command, stays when its writer goes
            wait_for("enc_pos_a = 2.0", lambda: local.get("enc_pos_a") == 2.0)

            first.close()
            wait_for(
                "duty_cycle_a back to 0.0", lambda: local.get("duty_cycle_a") == 0.0, timeout=COMMAND_DEADLINE
            )
            assert local.get("duty_cycle_b") == -0.25  # ended in the same pass: the second client's stands
            assert local.get("enc_pos_a") == 2.0
            assert local.commanders() == {"duty_cycle_b": server.pid}
            ended = f"koala-bear {uid:#x} duty_cycle_a back to 0.0\n"
            assert f"client {first.client_id} is gone: its commands end: {ended}" in children.log(server)
            wait_for("duty_cycle_a = 0.0 remotely", lambda: other.get("duty_cycle_a") == 0.0)
        wait_for(
            "duty_cycle_b back to 0.0", lambda: local.get("duty_cycle_b") == 0.0, timeout=COMMAND_DEADLINE
        )
        assert local.commanders() == {}
    finally:
        first.close()


def test_a_killed_remote_client_s_command_ends_at_once(
    children: Children, store: BufferStore, tmp_path: Path, namespace: str
) -> None:
    uid = make_uid(YOGI)
    endpoint, _, server = start_robot(children, tmp_path, f"yogi-bear:{uid:#x}")
    local = open_buffer(store, uid)
    process, client_id = start_commander(children, tmp_path, endpoint, namespace, uid)
    wait_for("duty_cycle = 0.5", lambda: local.get("duty_cycle") == 0.5)
    process.kill()
    killed = time.monotonic()
    wait_for("duty_cycle back to 0.0", lambda: local.get("duty_cycle") == 0.0, timeout=COMMAND_DEADLINE)
    assert time.monotonic() - killed < COMMAND_DEADLINE
    assert (
        f"client {client_id} is gone: its commands end: yogi-bear {uid:#x} duty_cycle back to 0.0"
        in children.log(server)
    )


def test_a_remote_client_that_goes_silent_loses_its_command_after_its_lease(
    children: Children, store: BufferStore, tmp_path: Path, namespace: str
) -> None:
    """A network lost, played by a stopped process: its session stays open, but says nothing more."""
    uid = make_uid(YOGI)
    endpoint, _, server = start_robot(children, tmp_path, f"yogi-bear:{uid:#x}")
    local = open_buffer(store, uid)
    process, client_id = start_commander(
        children, tmp_path, endpoint, namespace, uid, lease_ms=CLIENT_LEASE_MS
    )
    wait_for("duty_cycle = 0.5", lambda: local.get("duty_cycle") == 0.5)
    process.send_signal(signal.SIGSTOP)
    try:
        stopped = time.monotonic()
        wait_for(
            "duty_cycle back to 0.0",
            lambda: local.get("duty_cycle") == 0.0,
            timeout=CLIENT_LEASE_MS / 1000 + 5,
        )
        silent = time.monotonic() - stopped
        assert silent >= CLIENT_LEASE_MS / 1000 / 2, silent  # it was the lease, not something else
        assert f"client {client_id} is gone" in children.log(server)
    finally:
        process.kill()
        process.send_signal(signal.SIGCONT)


def test_a_command_without_a_live_token_is_refused_on_error(
    children: Children, store: BufferStore, tmp_path: Path, namespace: str, raw_sessions: list[Raw]
) -> None:
    uid = make_uid(YOGI)
    endpoint, _, server = start_robot(children, tmp_path, f"yogi-bear:{uid:#x}")
    local = open_buffer(store, uid)
    plain = raw(raw_sessions, endpoint)
    motor_key = key(namespace, "yogi-bear", uid)
    plain.subscribe(f"{motor_key}/error")
    wait_for("the motor served", lambda: served(plain, motor_key))

    # A foreign program's put: no attachment, or the ID of a client without a token.
    plain.put(f"{motor_key}/write", json.dumps({"duty_cycle": 0.5}))
    plain.put(f"{motor_key}/write", json.dumps({"duty_cycle": 0.5, "deadband": 0.5}))
    plain.put(f"{motor_key}/write", json.dumps({"duty_cycle": 0.5}), attachment="**")  # not a client ID
    started = time.monotonic()
    plain.put(f"{motor_key}/write", json.dumps({"duty_cycle": 0.5}), attachment="ghost-7")
    errors = wait_for("four answers", lambda: _at_least(plain.received("data PUT"), 4), timeout=10)
    assert time.monotonic() - started >= remote.CLIENT_GRACE * 0.9  # the ghost's token was awaited
    for error in errors[:3]:
        assert error["param"] == "duty_cycle" and error["kind"] == "RefusedWrite"
        assert error["error"].startswith("a write of a parameter with a safe value is a command")
        assert f"runtime/{namespace}/@client/<id>" in error["error"] and "attachment" in error["error"]
    assert errors[3]["error"].startswith("client 'ghost-7' has no liveliness token")
    assert errors[3]["write"] == {"duty_cycle": 0.5}
    assert local.pending_writes() == {} and local.get("duty_cycle") == 0.0 and local.commanders() == {}

    # Other parameters need no commander.
    plain.put(f"{motor_key}/write", json.dumps({"deadband": 0.125}))
    wait_for("deadband = 0.125", lambda: local.get("deadband") == 0.125)

    # With a token, and its ID as the attachment, a raw client commands (a token declared right
    # before the write may arrive after it: the write waits for it), until its token goes.
    token = plain.declare_token(f"runtime/{namespace}/@client/raw-7")
    plain.put(f"{motor_key}/write", json.dumps({"duty_cycle": -0.5}), attachment="raw-7")
    wait_for("duty_cycle = -0.5", lambda: local.get("duty_cycle") == -0.5)
    assert local.commanders() == {"duty_cycle": server.pid}
    token.undeclare()
    wait_for("duty_cycle back to 0.0", lambda: local.get("duty_cycle") == 0.0, timeout=COMMAND_DEADLINE)
    assert local.get("deadband") == 0.125
    assert len(plain.received("data PUT")) == 4  # nothing else refused


def test_a_disabled_robot_refuses_commands_on_error_and_its_state_is_seen_remotely(
    children: Children, store: BufferStore, tmp_path: Path, namespace: str, raw_sessions: list[Raw]
) -> None:
    uid = make_uid(YOGI)
    endpoint, _, server = start_robot(children, tmp_path, f"yogi-bear:{uid:#x}")
    local = open_buffer(store, uid)
    plain = raw(raw_sessions, endpoint)
    motor_key, state = key(namespace, "yogi-bear", uid), f"runtime/{namespace}/@robot"
    plain.subscribe(f"{motor_key}/error")
    plain.subscribe(state)
    try:
        with connect(endpoint, namespace) as robot:
            motor = robot.device(uid)
            wait_for("the motor valid remotely", lambda: motor.valid)
            assert robot.enabled is True
            assert plain.get(state)[state]["enabled"] is True
            assert robot.discover() and state not in {info.key_expr for info in robot.discover()}
            motor.write("duty_cycle", 0.5)
            wait_for("duty_cycle = 0.5", lambda: motor.get("duty_cycle") == 0.5)

            store.disable()
            wait_for("the robot disabled remotely", lambda: robot.enabled is False)
            assert plain.get(state)[state]["enabled"] is False
            assert plain.received("data PUT", state)[-1]["enabled"] is False
            wait_for("duty_cycle back to 0.0", lambda: local.get("duty_cycle") == 0.0)

            motor.write("duty_cycle", 0.5)  # refused by the robot, answered on .../error
            wait_for("the refusal", lambda: motor.last_error is not None)
            assert motor.last_error is not None
            assert motor.last_error["error"].startswith("the robot is disabled")
            assert (
                motor.last_error["param"] == "duty_cycle" and motor.last_error["kind"] == "DeviceBufferError"
            )
            errors = wait_for("the refusal (raw)", lambda: plain.received("data PUT", f"{motor_key}/error"))
            assert errors[-1]["error"].startswith("the robot is disabled")
            motor.write("deadband", 0.25)  # not a command: still written
            wait_for("deadband = 0.25", lambda: local.get("deadband") == 0.25)
            assert local.get("duty_cycle") == 0.0

            store.enable()
            wait_for("the robot enabled remotely", lambda: robot.enabled is True)
            assert local.get("duty_cycle") == 0.0  # nothing moves until a new command
            motor.write("duty_cycle", -0.5)
            wait_for("duty_cycle = -0.5", lambda: local.get("duty_cycle") == -0.5)
            assert "the robot is disabled" in children.log(server) and "the robot is enabled" in children.log(
                server
            )

            server.terminate()
            wait_for("the robot's state unknown", lambda: robot.enabled is None, timeout=LIVELINESS_DEADLINE)
            wait_for("duty_cycle back to 0.0 (runtime zenoh ended)", lambda: local.get("duty_cycle") == 0.0)
    finally:
        store.enable()


def test_a_bad_endpoint_or_a_missing_config_file_is_one_line_naming_it_and_the_fix(tmp_path: Path) -> None:
    def zenoh_error(*args: str) -> tuple[int, str]:
        done = subprocess.run(
            [sys.executable, "-m", "runtime", "zenoh", "--namespace", "rt-test-zenoh-bad", *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
        )
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("runtime zenoh: error: "), done.stderr
        assert ".rs:" not in done.stderr and "Json5Err" not in done.stderr, done.stderr
        return done.returncode, lines[0]

    assert zenoh_error("--listen", "127.0.0.1:7447") == (
        2,
        "runtime zenoh: error: bad listen endpoint '127.0.0.1:7447' names no protocol: "
        "write tcp/127.0.0.1:7447",
    )
    status, line = zenoh_error("--listen", "tcp/127.0.0.1:99999")
    assert status == 2 and "'tcp/127.0.0.1:99999'" in line and "HOST:PORT" in line
    status, line = zenoh_error("--connect", "tpc/127.0.0.1:7447")
    assert status == 2 and "no Zenoh protocol 'tpc'" in line
    missing = tmp_path / "zenoh.json5"
    assert zenoh_error("--config", str(missing)) == (
        2,
        f"runtime zenoh: error: cannot read the Zenoh configuration file {missing}: "
        "No such file or directory",
    )
    missing.write_text('{mode: "peer", listen: {endpoints: 5}}')
    status, line = zenoh_error("--config", str(missing))
    assert status == 2 and f"bad Zenoh configuration in {missing}: invalid type" in line
    status, line = zenoh_error("--listen", "tcp/192.0.2.1:7447")  # TEST-NET-1: no interface has it
    assert status == 1 and "tcp/192.0.2.1:7447" in line and "listen on 0.0.0.0" in line, line


def test_zenoh_reasons_lose_their_rust_source_places() -> None:
    from runtime.remote.session import zenoh_reason

    raw = (
        'Json5Err(Message { msg: "Endpoints must be of the form <protocol>/<address>: 1:2 at '
        '/root/.cargo/git/checkouts/zenoh-9c599d5ef3e0480e/commons/zenoh-protocol/src/endpoint.rs:615.", '
        "location: Some(Location { line: 1, column: 1 }) }) "
        "at /root/.cargo/git/checkouts/zenoh/src/api/config.rs:9."
    )
    assert zenoh_reason(raw) == "Endpoints must be of the form <protocol>/<address>: 1:2 (line 1, column 1)"


def test_a_device_segment_never_served_is_no_device_until_a_producer_serves_it(
    children: Children, namespace: str
) -> None:
    port = free_port()
    with BufferStore(CATALOG) as producer:
        servo_uid, typo_uid = make_uid(SERVO), make_uid(POT)
        servo: DeviceBuffer = producer.get_or_open(servo_uid)
        servo.serve()  # the test plays the bridge
        typo: DeviceBuffer = producer.get_or_open(typo_uid)  # a mistyped UID: no bridge serves it
        start_zenoh(children, port)
        with connect(f"tcp/127.0.0.1:{port}", namespace) as robot:

            def found() -> set[tuple[str, int]]:
                return {info.key for info in robot.discover()}

            # Both were there before the server's first look: the servo found means the typo was passed over.
            wait_for("the servo found", lambda: ("servo-motor", servo_uid) in found())
            assert ("potentiometer", typo_uid) not in found()
            typo.serve()  # served after all: a device now
            wait_for("the served one found", lambda: ("potentiometer", typo_uid) in found())
