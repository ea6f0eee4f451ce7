"""One write policy: the same value gets the same answer on every surface, and nothing is written.

A value out of its parameter's bounds, sent where a person or a remote program
sends values: ``runtime buffers write``, ``runtime msg encode``, a Foxglove
parameter and command (a ``websockets`` client), a Zenoh put (a raw Zenoh
session) and ``runtime.remote``. Each refuses it with the same words,
``<param>: <value> is out of bounds [<lower>, <upper>]`` (``runtime.values``),
where its sender sees it; the servo keeps its value and nothing is pending.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from e2e import wait_for
from test_foxglove import STATUS_ERROR, Client, advertise, connected, robot, server, topic
from test_zenoh import Raw, free_port, raw, raw_sessions

from runtime import remote
from runtime.testing import EmulatedRobot
from runtime.values import WriteRefused, check_value

__all__ = ["raw_sessions", "robot", "server"]  # fixtures, used here

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]  # real servers and clients, seconds each

CASES = [(1.5, "1.5"), (-3, "-3")]
"""A value out of servo0's bounds [-1, 1], as a program sends it and as a person types it."""


def answer(value: Any) -> str:
    return f"servo0: {value} is out of bounds [-1, 1]"


@pytest.fixture
def zenoh_server(robot: EmulatedRobot) -> Iterator[str]:
    """``runtime zenoh`` on the robot (writes allowed: the default), its endpoint; stopped after the test."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "runtime.tools.zenoh", "--listen", f"tcp/127.0.0.1:{port}"],
        env=robot.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    try:
        yield f"tcp/127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def unchanged(robot: EmulatedRobot) -> None:
    servo = robot.buffer("servo-motor")
    assert servo.pending_writes() == {}
    assert (servo.get("servo0"), servo.get("servo1")) == (0.0, 0.0)  # the good value beside it: not written


def run_cli(robot: EmulatedRobot, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runtime", *args], env=robot.env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(("value", "typed"), CASES)
def test_the_library_and_the_command_line_give_the_same_answer(
    robot: EmulatedRobot, value: Any, typed: str
) -> None:
    param = robot.catalog["servo-motor"].params["servo0"]
    with pytest.raises(WriteRefused) as caught:
        check_value(param, value)
    assert str(caught.value) == answer(value)

    key = f"servo-motor:{robot.uid('servo-motor'):#x}"
    done = run_cli(robot, "buffers", "write", key, "servo1=0.5", f"servo0={typed}")
    assert (done.returncode, done.stdout) == (1, "")
    assert (
        done.stderr
        == f"runtime buffers: error: cannot write servo0={typed}: {value} is out of bounds [-1, 1]\n"
    )

    done = run_cli(robot, "msg", "encode", "dev-write", "--type", "servo-motor", f"servo0={typed}")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"runtime msg: error: {answer(value)}\n"
    unchanged(robot)


@pytest.mark.parametrize(("value", "typed"), CASES)
def test_foxglove_gives_the_same_answer_as_a_status(
    robot: EmulatedRobot, server: Any, value: Any, typed: str
) -> None:
    url = server()
    servo_topic = topic(robot, "servo-motor")

    async def scenario() -> None:
        async with connected(url) as client:
            await parameter(client, f"{servo_topic}/servo0", value)
            publish = await advertise(client, 7, f"{servo_topic}/command")
            await asyncio.sleep(0.2)  # the advertisement is handled before the data (the SDK's order)
            await publish(servo1=0.5, servo0=value)
            status = await client.status(
                lambda s: s["id"].startswith("command:") and answer(value) in s["message"]
            )
            assert status["level"] == STATUS_ERROR

    async def parameter(client: Client, name: str, value: Any) -> None:
        await client.channel(name.rpartition("/")[0])  # served: the server prints its URL before it looks
        await client.request("setParameters", parameters=[{"name": name, "value": value}])
        status = await client.status(lambda s: s["id"] == f"write:{name}" and answer(value) in s["message"])
        assert status["level"] == STATUS_ERROR

    asyncio.run(scenario())
    unchanged(robot)


@pytest.mark.parametrize(("value", "typed"), CASES)
def test_zenoh_and_runtime_remote_give_the_same_answer(
    robot: EmulatedRobot, zenoh_server: str, raw_sessions: list[Raw], value: Any, typed: str
) -> None:
    uid = robot.uid("servo-motor")
    device_key = remote.device_key(robot.namespace, "servo-motor", uid)
    plain = raw(raw_sessions, zenoh_server)
    plain.subscribe(f"{device_key}/error")
    wait_for(
        "the servo served over Zenoh",
        lambda: plain.get(device_key).get(device_key, {}).get("valid"),
        timeout=20,
    )
    plain.put(f"{device_key}/write", json.dumps({"servo1": 0.5, "servo0": value}))
    (error,) = wait_for("the refusal on .../error", lambda: plain.received("data PUT"), timeout=20)
    assert (error["error"], error["param"], error["kind"]) == (answer(value), "servo0", "WriteRefused")

    with remote.connect(zenoh_server, namespace=robot.namespace, timeout=5.0) as client:
        servo = client.device(uid)
        wait_for("the servo valid remotely", lambda: servo.valid, timeout=20)
        with pytest.raises(WriteRefused) as caught:  # checked before it is sent: nothing is sent
            servo.write("servo0", value)
        assert caught.value.message == answer(value)
    unchanged(robot)
