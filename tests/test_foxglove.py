"""``runtime foxglove`` end to end, with a real client.

An emulated robot (``runtime emulate`` and ``runtime bridge`` processes, in a
namespace of their own: :func:`runtime.testing.emulated_robot`) is served by
``python -m runtime.tools.foxglove`` on a free port; the test is a plain
WebSocket client (the ``websockets`` package) speaking the Foxglove protocol
(subprotocol ``foxglove.sdk.v1``: JSON text messages, binary message data),
and checks what it receives against the buffers, read with the library.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from runtime import BufferStore, live
from runtime.buffer import Buffer
from runtime.schema import buffer_schema
from runtime.testing import EmulatedRobot, emulated_robot
from runtime.values import jsonable

# slow: runtime foxglove and a WebSocket client, against an emulated robot
pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

SUBPROTOCOL = "foxglove.sdk.v1"
STATUS_ERROR, STATUS_WARNING = 2, 1


@pytest.fixture(scope="module")
def robot() -> Iterator[EmulatedRobot]:
    """A still servo-motor and yogi-bear (values change only when written), served by a bridge."""
    with emulated_robot("servo-motor", "yogi-bear", still=True) as robot:
        yield robot


@pytest.fixture
def server(robot: EmulatedRobot, tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Start ``runtime foxglove --port 0 --allow-write ARGS`` on the robot (``write=False``: without
    ``--allow-write``); its URL. Stopped (SIGINT) after the test."""
    processes: list[subprocess.Popen[str]] = []

    def start(*args: str, write: bool = True) -> str:
        if write:
            args = ("--allow-write", *args)
        log = open(tmp_path / f"foxglove-{len(processes)}.log", "w")  # noqa: SIM115 - closed with the test
        process = subprocess.Popen(
            [sys.executable, "-m", "runtime.tools.foxglove", "--port", "0", *args],
            env=robot.env,
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        processes.append(process)
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"ws://\S+", line)
        assert match, f"no URL in {line!r}: {(tmp_path / 'foxglove-0.log').read_text()}"
        return match[0]

    try:
        yield start
    finally:
        for process in processes:
            process.send_signal(signal.SIGINT)
            try:
                out, _ = process.communicate(timeout=10)
                assert process.returncode == 0, out
                assert "served" in out
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()


class Client:
    """A Foxglove WebSocket client: keeps the advertised channels and the statuses it was sent."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.channels: dict[int, dict[str, Any]] = {}
        self.statuses: list[dict[str, Any]] = []
        self.removed: list[str] = []
        self.info: dict[str, Any] = {}
        self._subscriptions = 0
        self.log: list[dict[str, Any]] = []
        """Every JSON message received."""

    async def receive(self, predicate: Callable[[Any], bool], timeout: float = 10.0) -> Any:
        """Read messages (keeping channels and statuses) until one satisfies ``predicate``; return it."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for a message; statuses {self.statuses}")
            try:
                raw = await asyncio.wait_for(self.ws.recv(), remaining)
            except TimeoutError:
                raise AssertionError(f"timed out waiting for a message; received {self.summary()}") from None
            message: Any = raw
            if isinstance(raw, str):
                message = json.loads(raw)
                self.log.append(message)
                op = message["op"]
                if op == "serverInfo":
                    self.info = message
                elif op == "advertise":
                    self.channels.update({channel["id"]: channel for channel in message["channels"]})
                elif op == "unadvertise":
                    for channel_id in message["channelIds"]:
                        self.channels.pop(channel_id, None)
                elif op == "status":
                    self.statuses.append(message)
                elif op == "removeStatus":
                    self.removed.extend(message["statusIds"])
            if predicate(message):
                return message

    def summary(self) -> list[Any]:
        """What was received, in short."""
        return [
            [(c["id"], c["topic"]) for c in m["channels"]] if m["op"] == "advertise" else m
            for m in self.log
            if m["op"] != "serverInfo"
        ]

    async def channel(self, topic: str, timeout: float = 10.0) -> dict[str, Any]:
        """The advertised channel of a topic (waiting for it)."""
        for channel in self.channels.values():
            if channel["topic"] == topic:
                return channel
        await self.receive(lambda _: any(c["topic"] == topic for c in self.channels.values()), timeout)
        return next(channel for channel in self.channels.values() if channel["topic"] == topic)

    async def subscribe(self, topic: str) -> int:
        """Subscribe to a topic; the subscription id."""
        channel = await self.channel(topic)
        # The SDK's server may send a channel's advertisement a moment before it accepts subscriptions
        # to it ("Unknown channel ID"): a client as quick as this one waits that moment.
        await asyncio.sleep(0.05)
        self._subscriptions += 1
        subscription = {"id": self._subscriptions, "channelId": channel["id"]}
        await self.ws.send(json.dumps({"op": "subscribe", "subscriptions": [subscription]}))
        return self._subscriptions

    async def data(self, subscription: int, timeout: float = 10.0) -> tuple[int, dict[str, Any]]:
        """The next message data of a subscription: (timestamp ns, decoded JSON)."""

        def ours(message: Any) -> bool:
            return (
                isinstance(message, bytes)
                and message[0] == 1
                and struct.unpack_from("<I", message, 1)[0] == subscription
            )

        message = await self.receive(ours, timeout)
        (timestamp,) = struct.unpack_from("<Q", message, 5)
        return timestamp, json.loads(message[13:])

    async def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send a request with an id; its ``parameterValues`` answer."""
        request_id = f"{op}-{time.monotonic_ns()}"
        await self.ws.send(json.dumps({"op": op, "id": request_id, **fields}))
        return await self.receive(  # type: ignore[no-any-return]
            lambda m: isinstance(m, dict) and m["op"] == "parameterValues" and m.get("id") == request_id
        )

    async def status_removed(self, status_id: str, timeout: float = 10.0) -> None:
        """Wait until a status was removed (already, or by a message coming)."""
        if status_id not in self.removed:
            await self.receive(lambda _: status_id in self.removed, timeout)

    async def status(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0
    ) -> dict[str, Any]:
        """A status message (already received or coming) that satisfies ``predicate``."""
        for status in self.statuses:
            if predicate(status):
                return status
        return await self.receive(  # type: ignore[no-any-return]
            lambda m: isinstance(m, dict) and m["op"] == "status" and predicate(m), timeout
        )


def run_client(url: str, scenario: Callable[[Client], Any]) -> Any:
    """Connect to ``url`` and run the async ``scenario(client)``."""

    async def main() -> Any:
        async with websockets.connect(url, subprotocols=[SUBPROTOCOL], max_size=None) as ws:
            assert ws.subprotocol == SUBPROTOCOL
            client = Client(ws)
            await client.receive(lambda m: isinstance(m, dict) and m["op"] == "serverInfo")
            return await scenario(client)

    return asyncio.run(main())


def topic(robot: EmulatedRobot, type_name: str) -> str:
    return f"/runtime/{type_name}/{robot.uid(type_name):#x}"


def state(buffer: Buffer) -> dict[str, Any]:
    return {"valid": True, "values": jsonable(buffer.snapshot())}


async def until(predicate: Callable[[], Any], timeout: float = 10.0, what: Callable[[], Any] = str) -> Any:
    """Wait (without blocking the event loop) until ``predicate()`` is true."""
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out: {what()}")
        await asyncio.sleep(0.02)
    return result


# ---- what the client sees ---------------------------------------------------------------------------


def test_each_buffer_is_a_topic_whose_messages_match_the_buffer(robot: EmulatedRobot, server: Any) -> None:
    url = server()
    servo, yogi = robot.buffer("servo-motor"), robot.buffer("yogi-bear")

    async def scenario(client: Client) -> None:
        assert set(client.info["capabilities"]) >= {"parameters", "clientPublish"}
        for type_name in ("servo-motor", "yogi-bear"):
            channel = await client.channel(topic(robot, type_name))
            assert channel["encoding"] == "json"
            assert channel["schemaEncoding"] == "jsonschema"
            assert channel["schemaName"] == f"runtime.{type_name}"
            assert json.loads(channel["schema"]) == buffer_schema(robot.catalog[type_name])
        servo_sub = await client.subscribe(topic(robot, "servo-motor"))
        yogi_sub = await client.subscribe(topic(robot, "yogi-bear"))
        stamps = []
        for _ in range(5):
            stamp, message = await client.data(servo_sub)
            assert message == state(servo)  # still devices: the values do not change by themselves
            assert abs(stamp / 1e9 - time.time()) < 5
            assert stamp <= servo.last_update * 1e9 + 1000  # the device's time, not the server's
            stamps.append(stamp)
            _, message = await client.data(yogi_sub)
            assert message == state(yogi)
        assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
        # Student code writes; the device takes it and reports it back; the topic shows it.
        yogi.write("duty_cycle", 0.5)
        while True:
            _, message = await client.data(yogi_sub)
            if message["values"]["duty_cycle"] == 0.5:
                break
        assert yogi.get("duty_cycle") == 0.5

    run_client(url, scenario)


def test_writeable_parameters_are_read_and_set_and_refusals_are_error_statuses(
    robot: EmulatedRobot, server: Any
) -> None:
    url = server()
    servo = robot.buffer("servo-motor")
    prefix = topic(robot, "servo-motor")

    async def scenario(client: Client) -> None:
        await client.channel(prefix)
        await client.channel(topic(robot, "yogi-bear"))
        answer = await client.request("getParameters", parameterNames=[])
        values = {parameter["name"]: parameter["value"] for parameter in answer["parameters"]}
        yogi = topic(robot, "yogi-bear")
        assert values[f"{prefix}/servo0"] == servo.get("servo0")
        assert f"{yogi}/duty_cycle" in values and f"{yogi}/pid_pos_kp" in values  # write-only ones too
        assert f"{yogi}/enc_vel" not in values  # read-only: not a parameter
        # A value in bounds: written, and the device reports it back.
        answer = await client.request(
            "setParameters", parameters=[{"name": f"{prefix}/servo0", "value": 0.5}]
        )
        assert answer["parameters"] == [{"name": f"{prefix}/servo0", "type": "float64", "value": 0.5}]
        await until(
            lambda: servo.get("servo0") == 0.5,
            what=lambda: (servo.snapshot(), servo.pending_writes(), robot.bridge_stats(), robot.logs()),
        )
        answer = await client.request("setParameters", parameters=[{"name": f"{prefix}/servo1", "value": -1}])
        await until(lambda: servo.get("servo1") == -1.0)  # an integer for a float: fine
        # Refused: out of bounds, read-only, the wrong type, unknown. Nothing is written.
        refusals = {
            f"{prefix}/servo0": (1.5, "servo0: 1.5 is out of bounds [-1, 1]"),  # runtime.values' words
            f"{yogi}/enc_vel": (1.0, "enc_vel is read-only"),
            f"{prefix}/servo1": ("fast", "servo1: 'fast' is not a number"),
            f"{prefix}/servo9": (0.0, "no such parameter"),
            f"{prefix}/srvo0": (
                0.0,
                f"no such parameter of a buffer served here (did you mean '{prefix}/servo0'?)",
            ),
        }
        for name, (value, reason) in refusals.items():
            answer = await client.request("setParameters", parameters=[{"name": name, "value": value}])
            status = await client.status(
                lambda s, name=name, reason=reason: name in s["message"] and reason in s["message"]
            )
            assert status["level"] == STATUS_ERROR
            assert all(parameter.get("value") != value for parameter in answer["parameters"])
        await asyncio.sleep(0.3)  # a few device cycles
        assert servo.get("servo0") == 0.5 and servo.get("servo1") == -1.0
        assert servo.pending_writes() == {}
        # A good value again clears the parameter's error.
        await client.request("setParameters", parameters=[{"name": f"{prefix}/servo0", "value": -0.25}])
        await client.status_removed(f"write:{prefix}/servo0")
        await until(lambda: servo.get("servo0") == -0.25)

    run_client(url, scenario)


def test_a_client_publishing_on_a_command_topic_writes_all_or_nothing(
    robot: EmulatedRobot, server: Any
) -> None:
    url = server()
    servo = robot.buffer("servo-motor")
    command = topic(robot, "servo-motor") + "/command"

    async def scenario(client: Client) -> None:
        await client.channel(topic(robot, "servo-motor"))
        advertised = {
            "id": 7,
            "topic": command,
            "encoding": "json",
            "schemaName": "runtime.servo-motor.write",
        }
        await client.ws.send(json.dumps({"op": "advertise", "channels": [advertised]}))

        async def publish(payload: bytes) -> None:
            await client.ws.send(b"\x01" + struct.pack("<I", 7) + payload)

        await asyncio.sleep(0.2)  # the advertisement is handled before the data
        await publish(json.dumps({"servo0": 0.75, "servo1": -0.75}).encode())
        await until(lambda: servo.get("servo0") == 0.75 and servo.get("servo1") == -0.75)
        await publish(json.dumps({"servo0": 0.1, "servo1": 3}).encode())  # servo1 out of bounds
        status = await client.status(lambda s: "servo1: 3" in s["message"])
        assert status["level"] == STATUS_ERROR and command in status["message"]
        await publish(b"not json")
        await client.status(lambda s: "not JSON" in s["message"])
        await asyncio.sleep(0.3)  # the scenario: time for a write that must not happen
        assert servo.get("servo0") == 0.75  # servo0 of the refused command was not written either

    run_client(url, scenario)


def test_invalid_buffers_and_buffers_coming_and_going_are_visible(robot: EmulatedRobot, server: Any) -> None:
    url = server()
    yogi_topic = topic(robot, "yogi-bear")

    async def scenario(client: Client) -> None:
        subscription = await client.subscribe(yogi_topic)
        _, message = await client.data(subscription)
        assert message["valid"] is True
        # The devices are gone: their buffers turn invalid. The bridge comes back at the end of the
        # block, whatever happens in it (the robot is the module's); from the main thread: the kit
        # ties the bridge's life to its starting thread.
        with robot.bridge_stopped():
            while (message := (await client.data(subscription))[1])["valid"]:
                pass  # sent before the bridge stopped
            assert message == {"valid": False}
            status = await client.status(
                lambda s: "not connected" in s["message"] and f"{robot.uid('yogi-bear'):#x}" in s["message"]
            )
            assert status["level"] == STATUS_WARNING
        while not (await client.data(subscription))[1]["valid"]:
            pass
        await client.status_removed(f"invalid:{yogi_topic}")
        # A buffer that appears (a gamepad, fed by this test) gets a topic; gone, the topic goes.
        with BufferStore(robot.catalog) as store:
            pad = store.get_or_open(("gamepad", 0x7))
            pad.serve()
            pad.set("button_a", True)
            subscription = await client.subscribe("/runtime/gamepad/0x7")
            _, message = await client.data(subscription)  # its state at once, though it does not change
            assert message["valid"] is True and message["values"]["button_a"] is True
            pad.set("joystick_left_x", -0.5)
            _, message = await client.data(subscription)
            assert message["values"]["joystick_left_x"] == -0.5
            Buffer.unlink(pad.name)
        await client.receive(
            lambda _: all(c["topic"] != "/runtime/gamepad/0x7" for c in client.channels.values())
        )

    run_client(url, scenario)


def test_max_rate_limits_messages_per_buffer_and_keeps_the_last(robot: EmulatedRobot, server: Any) -> None:
    url = server("--max-rate", "5")
    yogi = robot.buffer("yogi-bear")

    async def scenario(client: Client) -> None:
        subscription = await client.subscribe(topic(robot, "yogi-bear"))
        await client.data(subscription)
        started = time.monotonic()
        count = 0
        while time.monotonic() - started < 2.0:
            await client.data(subscription)
            count += 1
        assert 5 <= count <= 12, count  # the device reports 25 times a second
        yogi.write("duty_cycle", -0.5)
        while (await client.data(subscription))[1]["values"]["duty_cycle"] != -0.5:
            pass

    run_client(url, scenario)


# ---- from Python, and bad input ---------------------------------------------------------------------


def test_serve_foxglove_runs_in_a_thread_until_stopped(robot: EmulatedRobot) -> None:
    ready: list[live.LiveView] = []
    stop = threading.Event()
    thread = threading.Thread(
        target=live.serve_foxglove,
        args=(robot.store,),
        kwargs={"port": 0, "stop_event": stop, "namespace": robot.namespace, "on_ready": ready.append},
    )
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not ready and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ready, "the server did not start"

        async def scenario(client: Client) -> None:
            await client.channel(topic(robot, "servo-motor"))

        run_client(ready[0].url, scenario)
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()


def test_a_port_in_use_is_one_error_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "runtime", "foxglove", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"runtime foxglove: error: cannot listen on 127.0.0.1:{port}: Address already in use (os error 98) "
        "(another 'runtime foxglove'? choose another --port)"
    ]


# ---- a write belongs to its client; the robot's state ------------------------------------------------


@contextlib.asynccontextmanager
async def connected(url: str, **options: Any) -> AsyncIterator[Client]:
    """A client connected to ``url`` (its server info received), for a scenario of several clients.

    ``options`` go to :func:`websockets.connect` (``origin="https://..."``: as a browser's page).
    """
    async with websockets.connect(url, subprotocols=[SUBPROTOCOL], max_size=None, **options) as ws:
        client = Client(ws)
        await client.receive(lambda m: isinstance(m, dict) and m["op"] == "serverInfo")
        yield client


async def advertise(client: Client, channel_id: int, command_topic: str) -> Callable[..., Any]:
    """Advertise a command topic; the coroutine function that publishes ``{param: value}`` on it."""
    await client.channel(command_topic.removesuffix("/command"))
    channel = {"id": channel_id, "topic": command_topic, "encoding": "json", "schemaName": "command"}
    await client.ws.send(json.dumps({"op": "advertise", "channels": [channel]}))

    async def publish(**values: Any) -> None:
        await client.ws.send(b"\x01" + struct.pack("<I", channel_id) + json.dumps(values).encode())

    return publish


async def set_parameter(client: Client, name: str, value: Any) -> dict[str, Any]:
    await client.channel(name.rpartition("/")[0])
    return await client.request("setParameters", parameters=[{"name": name, "value": value}])


def ended_lines(log: Path) -> list[str]:
    """The server's lines about the commands it ended."""
    return [line for line in log.read_text().splitlines() if "ended its commands" in line]


@pytest.mark.parametrize("way", ["command topic, connection dropped", "parameter", "parameter, subscribed"])
def test_a_clients_commands_end_when_it_goes_away(
    robot: EmulatedRobot, server: Any, tmp_path: Path, way: str
) -> None:
    url = server()
    yogi = robot.buffer("yogi-bear")
    yogi_topic = topic(robot, "yogi-bear")

    async def scenario(client: Client) -> None:
        if way.startswith("command topic"):
            publish = await advertise(client, 1, yogi_topic + "/command")
            await publish(duty_cycle=0.25)
        else:
            if way == "parameter, subscribed":
                await client.subscribe(yogi_topic)  # followed by its subscription
            # Else by nothing: the server counts its connections.
            await set_parameter(client, f"{yogi_topic}/duty_cycle", 0.25)
        await until(lambda: yogi.get("duty_cycle") == 0.25, what=lambda: (yogi.snapshot(), client.statuses))
        assert yogi.commanders()["duty_cycle"] != os.getpid()  # the server's: the client's, through it
        if way.endswith("dropped"):
            client.ws.transport.abort()  # no goodbye

    run_client(url, scenario)
    robot.wait_for(lambda: yogi.get("duty_cycle") == 0.0, what="the safe value, once the client left")
    assert "duty_cycle" not in yogi.commanders()
    robot.wait_for(lambda: ended_lines(tmp_path / "foxglove-0.log"))
    [line] = ended_lines(tmp_path / "foxglove-0.log")
    assert re.search(rf"client \d+ went away: ended its commands: {yogi_topic} duty_cycle$", line), line


def test_a_command_is_its_last_writers(robot: EmulatedRobot, server: Any) -> None:
    """A wrote it, B (or another process) wrote it since: A leaving leaves it alone; B leaving ends it."""
    url = server()
    servo, yogi = robot.buffer("servo-motor"), robot.buffer("yogi-bear")
    servo_topic, yogi_topic = topic(robot, "servo-motor"), topic(robot, "yogi-bear")

    async def scenario() -> None:
        async with connected(url) as b:
            await b.subscribe(servo_topic)  # followed
            async with connected(url) as a:
                publish_servo = await advertise(a, 1, servo_topic + "/command")
                publish_yogi = await advertise(a, 2, yogi_topic + "/command")
                await publish_servo(servo0=0.5, servo1=0.5)
                await publish_yogi(duty_cycle=0.375)
                await until(
                    lambda: servo.get("servo0") == 0.5 and yogi.get("duty_cycle") == 0.375,
                    what=lambda: (servo.snapshot(), yogi.snapshot(), a.summary()),
                )
                await set_parameter(b, f"{servo_topic}/servo0", -0.5)  # B's now
                servo.write("servo1", 0.75)  # this process's now
                await until(lambda: servo.get("servo0") == -0.5 and servo.get("servo1") == 0.75)
            # A is gone: its command that stood ends; those written since stand.
            await until(lambda: yogi.get("duty_cycle") == 0.0, what=yogi.snapshot)
            assert servo.get("servo0") == -0.5 and servo.get("servo1") == 0.75
            commanders = servo.commanders()
            assert commanders["servo1"] == os.getpid() and commanders["servo0"] != os.getpid()  # the server
        await until(lambda: servo.get("servo0") == 0.0, what=servo.snapshot)  # B is gone
        assert servo.get("servo1") == 0.75 and servo.commanders() == {"servo1": os.getpid()}

    try:
        asyncio.run(scenario())
    finally:
        servo.end_commands()


def test_a_server_that_stops_ends_its_clients_commands(robot: EmulatedRobot) -> None:
    ready: list[live.LiveView] = []
    stop = threading.Event()
    thread = threading.Thread(
        target=live.serve_foxglove,
        args=(robot.store,),
        kwargs={
            "port": 0,
            "stop_event": stop,
            "namespace": robot.namespace,
            "on_ready": ready.append,
            "allow_write": True,
        },
    )
    yogi = robot.buffer("yogi-bear")
    thread.start()
    try:
        robot.wait_for(lambda: ready, what="the server")

        async def scenario() -> None:
            async with connected(ready[0].url) as client:
                await set_parameter(client, f"{topic(robot, 'yogi-bear')}/duty_cycle", -0.25)
                await until(lambda: yogi.get("duty_cycle") == -0.25)
                stop.set()  # the client is still there (and not followed: nothing but its connection)
                await until(lambda: not thread.is_alive())

        asyncio.run(scenario())
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    robot.wait_for(lambda: yogi.get("duty_cycle") == 0.0, what="the safe value, once the server stopped")
    assert ready[0].ended == 1


def test_a_disabled_robot_is_shown_and_its_actuators_refused(robot: EmulatedRobot, server: Any) -> None:
    url = server()
    servo, yogi = robot.buffer("servo-motor"), robot.buffer("yogi-bear")
    servo_topic, yogi_topic = topic(robot, "servo-motor"), topic(robot, "yogi-bear")

    def disabled(status: dict[str, Any]) -> bool:
        return bool(status["message"] == live.ROBOT_DISABLED and status["level"] == STATUS_WARNING)

    async def scenario() -> None:
        async with connected(url) as before:
            await before.subscribe(servo_topic)
            robot.store.disable()
            await before.status(disabled)  # a client there already
            async with connected(url) as after:
                await after.subscribe(servo_topic)
                await after.status(disabled)  # and one that comes later
                answer = await set_parameter(after, f"{servo_topic}/servo0", 0.5)
                status = await after.status(lambda s: s["level"] == STATUS_ERROR)
                assert f"{servo_topic}/servo0" in status["message"]
                assert "the robot is disabled" in status["message"], status
                assert answer["parameters"] == [
                    {"name": f"{servo_topic}/servo0", "type": "float64", "value": servo.get("servo0")}
                ]
                # A command with a configuration value: all or nothing still.
                deadband = yogi.get("deadband")
                publish = await advertise(after, 1, yogi_topic + "/command")
                await publish(deadband=deadband + 0.5, duty_cycle=0.5)
                status = await after.status(
                    lambda s: s["level"] == STATUS_ERROR and yogi_topic in s["message"]
                )
                assert "the robot is disabled" in status["message"], status
                assert yogi.pending_writes() == {} and yogi.get("deadband") == deadband
                robot.store.enable()
                await after.status_removed(live.ROBOT_STATUS)
                await before.status_removed(live.ROBOT_STATUS)
                await set_parameter(after, f"{servo_topic}/servo0", 0.5)  # accepted again
                await until(lambda: servo.get("servo0") == 0.5)

    try:
        asyncio.run(scenario())
    finally:
        robot.store.enable()


def test_an_invalid_buffer_s_status_says_not_connected_not_no_producer() -> None:
    from runtime.live.server import _not_connected

    for pid in (None, 4242):
        message = _not_connected("limit-switch", 0x10, pid)
        assert message.startswith("limit-switch 0x10 is not connected ("), message
        assert "producer" not in message and "invalid" not in message, message
    assert "unplugged" in _not_connected("limit-switch", 0x10, None)
    assert "pid 4242" in _not_connected("limit-switch", 0x10, 4242)
