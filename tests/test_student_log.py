"""What student code prints, in ``runtime foxglove`` and ``runtime record``: ``foxglove.Log`` on ``/log``.

The test plays the runner (``runtime run``): it serves the ``runner`` buffer
in a namespace of its own and "prints" by setting ``lines`` and ``log`` in one
transaction, as the runner does. A real ``runtime foxglove`` process is read
with a plain WebSocket client (the ``websockets`` package, the Foxglove
protocol); a real ``runtime record`` file with the ``mcap`` package, and
played back by ``runtime replay``, which must take a file with ``/log``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from mcap.reader import make_reader

from runtime import BufferStore, load_catalog
from runtime.buffer import Buffer
from runtime.mcap import LOG_TOPIC, log_schema
from runtime.student import RUNNER_KEY

pytestmark = [pytest.mark.timeout(60), pytest.mark.slow]  # real processes, a second or more each

SUBPROTOCOL = "foxglove.sdk.v1"
INFO, WARNING = 2, 3


@pytest.fixture
def runner(buffer_namespace: str) -> Iterator[tuple[str, Buffer]]:
    """The runner's buffer, served by this test in a namespace of its own: (namespace, buffer)."""
    namespace = f"{buffer_namespace}-student-log"
    with BufferStore.use_namespace(namespace):
        store = BufferStore(load_catalog())
        try:
            buffer = store.get_or_open(RUNNER_KEY)
            buffer.serve()
            yield namespace, buffer
        finally:
            store.close()
            store.unlink_all()


def say(buffer: Buffer, lines: int, *log: str) -> None:
    """Play the runner: ``lines`` printed in all, ``log`` the newest of them."""
    with buffer.transaction():
        buffer.set("lines", lines)
        buffer.set("log", "\n".join(log).encode())


def line(text: str, mode: str = "teleop") -> str:
    """A line as the runner formats it: time, mode, text."""
    return f"12:03:04.123 {mode}: {text}"


def until(predicate: Callable[[], Any], what: Callable[[], Any], timeout: float = 15.0) -> Any:
    """Wait until ``predicate()`` is true (checked every 20 ms); its value. Fails with ``what()``."""
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out: {what()}")
        time.sleep(0.02)
    return result


def start(*args: str, log: Path) -> subprocess.Popen[str]:
    """Start ``python -m runtime ARGS``, its stderr into ``log`` (the caller reads its first line)."""
    with open(log, "w") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "runtime", *args],
            stdout=subprocess.PIPE,
            stderr=err,
            stdin=subprocess.DEVNULL,
            text=True,
        )
    assert process.stdout is not None
    return process


def stop(process: subprocess.Popen[str]) -> str:
    """Stop a tool as Ctrl-C does; what it printed. It must end cleanly."""
    try:
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=15)
        assert process.returncode == 0, out
        return out
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# ---- runtime foxglove ------------------------------------------------------------------------------


class LogClient:
    """A Foxglove WebSocket client subscribed to ``/log``: the messages it received, decoded."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.channels: dict[str, dict[str, Any]] = {}
        self.subscription = 0
        self.messages: list[dict[str, Any]] = []

    async def receive(self, done: Callable[[], bool], timeout: float = 15.0) -> None:
        """Read until ``done()``: advertisements kept, the subscription's message data decoded."""
        deadline = time.monotonic() + timeout
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out; channels {list(self.channels)}, messages {self.messages}")
            try:
                raw = await asyncio.wait_for(self.ws.recv(), remaining)
            except TimeoutError:
                continue
            if isinstance(raw, str):
                message = json.loads(raw)
                if message["op"] == "advertise":
                    self.channels.update({channel["topic"]: channel for channel in message["channels"]})
            elif raw[0] == 1 and struct.unpack_from("<I", raw, 1)[0] == self.subscription:
                self.messages.append(json.loads(raw[13:]))

    async def subscribe(self, topic: str) -> dict[str, Any]:
        """Subscribe to a topic (once advertised); its channel."""
        await self.receive(lambda: topic in self.channels)
        channel = self.channels[topic]
        # The SDK's server may advertise a channel a moment before it takes subscriptions to it.
        await asyncio.sleep(0.05)
        self.subscription += 1
        subscription = {"id": self.subscription, "channelId": channel["id"]}
        await self.ws.send(json.dumps({"op": "subscribe", "subscriptions": [subscription]}))
        return channel

    async def texts(self, count: int) -> list[tuple[int, str]]:
        """The first ``count`` messages of ``/log`` (waiting for them): (level, message)."""
        await self.receive(lambda: len(self.messages) >= count)
        return [(message["level"], message["message"]) for message in self.messages[:count]]


def test_foxglove_publishes_each_printed_line_on_log_and_says_how_many_were_lost(
    runner: tuple[str, Buffer], tmp_path: Path
) -> None:
    namespace, buffer = runner
    say(buffer, 1, line("before anyone looks", "idle"))
    process = start("foxglove", "--port", "0", "--namespace", namespace, log=tmp_path / "foxglove.log")
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        url = re.search(r"ws://\S+", first)
        assert url, f"{first!r}: {(tmp_path / 'foxglove.log').read_text()}"

        async def scenario() -> None:
            async with websockets.connect(url[0], subprotocols=[SUBPROTOCOL], max_size=None) as ws:
                client = LogClient(ws)
                channel = await client.subscribe(LOG_TOPIC)
                assert channel["schemaName"] == "foxglove.Log" and channel["encoding"] == "json"
                assert channel["schemaEncoding"] == "jsonschema"
                assert json.loads(channel["schema"]) == log_schema()
                assert "/runtime/runner/0x0" in client.channels  # the runner's buffer is a topic as ever
                # A new subscriber gets the lines the buffer holds...
                assert await client.texts(1) == [(INFO, line("before anyone looks", "idle"))]
                message = client.messages[0]
                assert message["name"] == "student" and message["file"] == "" and message["line"] == 0
                stamp = message["timestamp"]["sec"] + message["timestamp"]["nsec"] / 1e9
                assert abs(stamp - time.time()) < 30
                # ...then each line printed, in order.
                say(buffer, 3, line("before anyone looks", "idle"), line("one"), line("two"))
                assert (await client.texts(3))[1:] == [(INFO, line("one")), (INFO, line("two"))]
                # Lines printed faster than read: one warning says how many were lost.
                say(buffer, 10, line("nine"), line("ten"))
                assert (await client.texts(6))[3:] == [
                    (WARNING, "5 lines printed were lost (printed faster than read)"),
                    (INFO, line("nine")),
                    (INFO, line("ten")),
                ]
            # Printed while nobody subscribes: the next subscriber starts afresh, with what the buffer holds.
            say(buffer, 11, line("nine"), line("ten"), line("eleven"))
            async with websockets.connect(url[0], subprotocols=[SUBPROTOCOL], max_size=None) as ws:
                client = LogClient(ws)
                await client.subscribe(LOG_TOPIC)
                assert await client.texts(3) == [(INFO, line(text)) for text in ("nine", "ten", "eleven")]
                say(buffer, 12, line("ten"), line("eleven"), line("twelve"))
                assert (await client.texts(4))[3:] == [(INFO, line("twelve"))]

        asyncio.run(scenario())
    finally:
        out = stop(process)
    assert "served" in out


# ---- runtime record, and runtime replay ------------------------------------------------------------


def recorded(path: Path) -> list[tuple[int, str]]:
    """The ``/log`` messages of a recording, (level, message), as far as it reads (it may be mid-write)."""
    found: list[tuple[int, str]] = []
    with contextlib.suppress(Exception), open(path, "rb") as file:  # a flush under way: try again
        for _, channel, message in make_reader(file).iter_messages(topics=[LOG_TOPIC], log_time_order=False):
            if channel.topic == LOG_TOPIC:
                data = json.loads(message.data)
                found.append((data["level"], data["message"]))
    return found


def test_record_writes_each_printed_line_to_log_and_replay_plays_such_a_file(
    runner: tuple[str, Buffer], tmp_path: Path
) -> None:
    namespace, buffer = runner
    path = tmp_path / "printed.mcap"
    say(buffer, 1, line("before the recording", "auto"))
    process = start("record", str(path), "--namespace", namespace, log=tmp_path / "record.log")
    try:
        assert process.stdout is not None and "recording" in process.stdout.readline()
        # Each step waits until the file shows the one before (written out every half second).
        until(lambda: len(recorded(path)) >= 1, lambda: recorded(path))
        say(buffer, 3, line("before the recording", "auto"), line("one"), line("two"))
        until(lambda: len(recorded(path)) >= 3, lambda: recorded(path))
        say(buffer, 10, line("nine"), line("ten"))
        until(lambda: len(recorded(path)) >= 6, lambda: recorded(path))
    finally:
        out = stop(process)
    assert "recorded" in out
    with open(path, "rb") as file:  # the finished file, with its index
        reader = make_reader(file)
        summary = reader.get_summary()
        assert summary is not None
        (channel,) = [c for c in summary.channels.values() if c.topic == LOG_TOPIC]
        schema = summary.schemas[channel.schema_id]
        assert channel.message_encoding == "json" and schema.encoding == "jsonschema"
        assert schema.name == "foxglove.Log" and json.loads(schema.data) == log_schema()
        messages = [json.loads(m.data) for _, _, m in reader.iter_messages(topics=[LOG_TOPIC])]
    assert [(m["level"], m["message"]) for m in messages] == [
        (INFO, line("before the recording", "auto")),
        (INFO, line("one")),
        (INFO, line("two")),
        (WARNING, "5 lines printed were lost (printed faster than read)"),
        (INFO, line("nine")),
        (INFO, line("ten")),
    ]
    assert {m["name"] for m in messages} == {"student"}
    # The runner's buffer is recorded as ever, and the file replays (/log is not a buffer: skipped).
    replay_namespace = f"{namespace}-replay"
    done = subprocess.run(
        [sys.executable, "-m", "runtime", "replay", str(path), "--speed", "100", "--json"]
        + ["--namespace", replay_namespace],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    played = json.loads(done.stdout)
    assert played["buffers"] == 1 and played["states"] >= 3, played
    assert not [name for name in os.listdir("/dev/shm") if name.startswith(replay_namespace)]
