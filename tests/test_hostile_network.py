"""Foxglove and Zenoh on a hostile network: who may connect and write, and payloads made to hurt.

Real clients: a ``websockets`` client sending the ``Origin`` a web page's
browser would (or none, as a program), speaking to ``runtime foxglove``
processes (the fixtures of ``tests/test_foxglove.py``); a raw Zenoh session
putting hostile payloads to ``runtime zenoh`` (those of ``tests/test_zenoh.py``).
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import websockets
import zenoh
from e2e import CATALOG, make_uid, open_buffer, wait_for
from test_foxglove import (
    STATUS_ERROR,
    SUBPROTOCOL,
    Client,
    advertise,
    connected,
    robot,
    server,
    topic,
    until,
)
from test_zenoh import (
    SERVO,
    Raw,
    children,
    connect,
    free_port,
    key,
    namespace,
    raw,
    raw_sessions,
    start_robot,
    start_zenoh,
    store,
)

from runtime import BufferStore, live, remote
from runtime.testing import EmulatedRobot

__all__ = ["children", "namespace", "raw_sessions", "robot", "server", "store"]  # fixtures, used here

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]

EVIL = "http://evil.example"


def put(plain: Raw, key_expr: str, payload: str, attachment: str | None = None) -> None:
    """A put that Zenoh never drops under congestion (a flood must arrive whole to be counted)."""
    plain.session.put(
        key_expr, payload, attachment=attachment, congestion_control=zenoh.CongestionControl.BLOCK
    )


@pytest.fixture(autouse=True)
def zenoh_namespace(request: pytest.FixtureRequest, namespace: str) -> Any:
    """The Zenoh tests' namespace (test_zenoh's) while they run: the Foxglove tests' module-scoped
    robot keeps its own namespace current until the module ends."""
    if "robot" in request.fixturenames:
        yield
        return
    with BufferStore.use_namespace(namespace):
        yield


# ---- Foxglove: origins ------------------------------------------------------------------------------


async def refused_status(url: str, origin: str) -> int:
    """The HTTP status a handshake from ``origin`` gets (101: accepted)."""
    try:
        async with websockets.connect(url, subprotocols=[SUBPROTOCOL], origin=origin):  # type: ignore[arg-type]
            return 101
    except websockets.exceptions.InvalidStatus as exc:
        return int(exc.response.status_code)


def test_a_page_from_another_origin_cannot_connect_foxglove_and_programs_can(
    robot: EmulatedRobot, server: Any
) -> None:
    url = server()
    yogi = robot.buffer("yogi-bear")
    duty = f"{topic(robot, 'yogi-bear')}/duty_cycle"

    async def scenario() -> None:
        # A web page of another site, or of this machine: refused at the handshake (no serverInfo).
        for origin in (EVIL, "http://localhost:8000", "null", "https://app.foxglove.dev.evil.example"):
            assert await refused_status(url, origin) == 403, origin
        # Foxglove's web app, its desktop app, and a program sending no Origin: served.
        for origin in ("https://app.foxglove.dev", "file://", None):
            options = {} if origin is None else {"origin": origin}
            async with connected(url, **options) as client:
                await client.channel(topic(robot, "yogi-bear"))
        async with connected(url, origin="https://app.foxglove.dev") as client:
            await client.channel(topic(robot, "yogi-bear"))
            await client.request("setParameters", parameters=[{"name": duty, "value": 0.5}])
            await until(lambda: yogi.get("duty_cycle") == 0.5)

    asyncio.run(scenario())
    robot.wait_for(lambda: yogi.get("duty_cycle") == 0.0, what="the safe value once the client left")


def test_allow_origin_adds_a_page_s_origin(robot: EmulatedRobot, server: Any) -> None:
    url = server("--allow-origin", "http://localhost:3000/", write=False)

    async def scenario() -> None:
        assert await refused_status(url, "http://localhost:3000") == 101
        assert await refused_status(url, "http://localhost:3001") == 403

    asyncio.run(scenario())


def test_foxglove_is_read_only_unless_allow_write(robot: EmulatedRobot, server: Any) -> None:
    url = server(write=False)
    yogi = robot.buffer("yogi-bear")
    yogi_topic = topic(robot, "yogi-bear")

    async def scenario() -> None:
        async with connected(url, origin="https://app.foxglove.dev") as client:
            assert "clientPublish" not in client.info["capabilities"]
            await client.channel(yogi_topic)
            await client.request(
                "setParameters", parameters=[{"name": f"{yogi_topic}/duty_cycle", "value": 0.75}]
            )
            status = await client.status(lambda s: "--allow-write" in s["message"])
            assert status["level"] == STATUS_ERROR and "read-only" in status["message"]
            # A command topic too (the SDK ignores it without clientPublish; refused here if not).
            publish = await advertise(client, 3, yogi_topic + "/command")
            await publish(duty_cycle=0.75)
            await asyncio.sleep(0.3)
        assert yogi.get("duty_cycle") == 0.0

    asyncio.run(scenario())
    assert yogi.get("duty_cycle") == 0.0 and yogi.pending_writes() == {}


def start_foxglove(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    """``runtime foxglove --port 0 ARGS`` in a namespace of its own; the process and its first line."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "runtime",
            "foxglove",
            "--port",
            "0",
            "--namespace",
            f"rt-hostile-{time.monotonic_ns()}",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        cwd=tmp_path,
    )
    assert process.stdout is not None
    return process, process.stdout.readline()


def stop(process: subprocess.Popen[str]) -> tuple[str, str]:
    process.send_signal(signal.SIGINT)
    try:
        out, err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err
    return out, err


@pytest.mark.parametrize("write", [False, True])
def test_foxglove_on_every_address_with_writes_warns_once_and_says_how_to_restrict(
    tmp_path: Path, write: bool
) -> None:
    process, first = start_foxglove(tmp_path, "--host", "0.0.0.0", *(["--allow-write"] if write else []))
    _, err = stop(process)
    assert re.search(r"ws://0\.0\.0\.0:\d+ ", first), first
    assert ("(read-write)" if write else "read-only: --allow-write to drive the robot") in first
    warnings = [line for line in err.splitlines() if "can drive the robot" in line]
    if write:
        assert len(warnings) == 1, err
        assert "drop --allow-write" in warnings[0] and "127.0.0.1" in warnings[0]
    else:
        assert warnings == [], err


def test_foxglove_help_says_read_only_and_origins() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "runtime", "foxglove", "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "--allow-write" in text and "--allow-origin" in text
    assert "Read-only unless --allow-write" in text and "https://app.foxglove.dev" in text


def test_a_connection_around_the_origin_gate_is_closed_and_writes_nothing(robot: EmulatedRobot) -> None:
    ready: list[live.LiveView] = []
    halt = threading.Event()
    thread = threading.Thread(
        target=live.serve_foxglove,
        args=(robot.store,),
        kwargs={
            "port": 0,
            "stop_event": halt,
            "namespace": robot.namespace,
            "on_ready": ready.append,
            "allow_write": True,
        },
    )
    yogi = robot.buffer("yogi-bear")
    duty = f"{topic(robot, 'yogi-bear')}/duty_cycle"
    thread.start()
    try:
        robot.wait_for(lambda: ready, what="the server")
        view = ready[0]
        assert view.server is not None
        inner = f"ws://127.0.0.1:{view.server.port}"  # what a local page scanning ports could find

        async def scenario() -> None:
            with pytest.raises(websockets.exceptions.ConnectionClosed):
                async with websockets.connect(inner, subprotocols=[SUBPROTOCOL], origin=EVIL) as ws:  # type: ignore[arg-type]
                    client = Client(ws)
                    await client.channel(topic(robot, "yogi-bear"))
                    await client.request("setParameters", parameters=[{"name": duty, "value": 0.75}])
                    await client.receive(lambda _: False, timeout=10)  # until closed
            assert yogi.get("duty_cycle") == 0.0
            # Through the gate, Foxglove's origin: served, writes.
            async with connected(view.url, origin="https://app.foxglove.dev") as client:
                await client.channel(topic(robot, "yogi-bear"))
                await client.request("setParameters", parameters=[{"name": duty, "value": -0.5}])
                await until(lambda: yogi.get("duty_cycle") == -0.5)

        asyncio.run(scenario())
        assert view.written == 1
    finally:
        halt.set()
        thread.join(10)
    assert not thread.is_alive()


# ---- Foxglove: hostile commands --------------------------------------------------------------------


def test_a_deep_or_huge_command_is_refused_with_a_status_and_no_traceback(
    robot: EmulatedRobot, server: Any, tmp_path: Path
) -> None:
    url = server()
    servo_topic = topic(robot, "servo-motor")

    async def scenario() -> None:
        async with connected(url) as client:
            publish = await advertise(client, 5, servo_topic + "/command")
            del publish
            await asyncio.sleep(0.2)  # the advertisement is handled before the data

            async def send(payload: bytes) -> None:
                await client.ws.send(b"\x01" + (5).to_bytes(4, "little") + payload)

            await send(b"[" * 100_000 + b"]" * 100_000)
            status = await client.status(lambda s: "at most 65536 bytes" in s["message"])
            assert status["level"] == STATUS_ERROR and len(status["message"]) <= live.MESSAGE_LIMIT
            await send(b"[" * 30_000 + b"]" * 30_000)
            await client.status(lambda s: "nested deeper than 32" in s["message"])
            await send(json.dumps({"servo0": "x" * 60_000}).encode())
            status = await client.status(lambda s: "is not a number" in s["message"])
            assert len(status["message"]) <= live.MESSAGE_LIMIT

    asyncio.run(scenario())
    log = (tmp_path / "foxglove-0.log").read_text()
    assert "Traceback" not in log and "RecursionError" not in log
    assert max(map(len, log.splitlines())) <= 1000


# ---- Zenoh: hostile puts ---------------------------------------------------------------------------


def test_hostile_zenoh_puts_are_refused_short_without_traceback_and_rate_limited_per_sender(
    children: Any, store: Any, tmp_path: Path, namespace: str, raw_sessions: list[Raw]
) -> None:
    servo_uid = make_uid(SERVO)
    endpoint, _, server = start_robot(children, tmp_path, f"servo-motor:{servo_uid:#x}")
    servo = open_buffer(store, servo_uid)
    wait_for("the servo valid", lambda: servo.valid)
    plain = raw(raw_sessions, endpoint)
    servo_key = key(namespace, "servo-motor", servo_uid)
    for errors in (
        f"{servo_key}/error",
        f"{remote.mode_key(namespace)}/error",
        f"{remote.input_key(namespace, 'gamepad')}/error",
    ):
        plain.subscribe(errors)
    wait_for("the servo served", lambda: plain.get(servo_key).get(servo_key, {}).get("valid"))
    deep, nested = "[" * 100_000 + "]" * 100_000, "[" * 30_000 + "]" * 30_000
    puts = [
        (f"{servo_key}/write", deep, "at most 65536 bytes"),
        (f"{servo_key}/write", nested, "nested deeper than 32 levels"),
        (f"{servo_key}/write", json.dumps({"servo0": "x" * 2_000_000}), "at most 65536 bytes"),
        (f"{servo_key}/write", json.dumps({"servo0": "x" * 60_000}), "is not a number"),
        (remote.mode_key(namespace), nested, "nested deeper than 32 levels"),
        (remote.input_key(namespace, "gamepad"), deep, "at most 65536 bytes"),
    ]
    for where, payload, _ in puts:
        put(plain, where, payload)
    wait_for("six refusals", lambda: len(plain.received("data PUT")) >= 6)
    for where, _, reason in puts:  # (the order of answers on different keys is not the puts')
        answers = plain.received("data PUT", f"{where.removesuffix('/write')}/error")
        assert any(reason in answer["error"] for answer in answers), (reason, answers)
    for answer in plain.received("data PUT"):
        assert len(json.dumps(answer)) < 1000  # the 2 MB put is not echoed
    assert servo.pending_writes() == {}

    # A flood of refusals from one sender: a few answered, the rest only counted; another sender is
    # still answered at once.
    started = time.monotonic()
    for _ in range(200):
        put(plain, f"{servo_key}/write", json.dumps({"servo9": "flood"}), attachment="flood")
    put(plain, f"{servo_key}/write", json.dumps({"servo9": "other"}), attachment="other")
    wait_for(
        "the other sender's answer",
        lambda: any(a.get("write") == {"servo9": "other"} for a in plain.received("data PUT")),
    )
    flood = [a for a in plain.received("data PUT") if a.get("write") == {"servo9": "flood"}]
    assert len(flood) <= remote.REFUSAL_BURST + remote.REFUSAL_RATE * (time.monotonic() - started) + 1

    log = children.log(server)
    assert "Traceback" not in log and "RecursionError" not in log
    assert max(map(len, log.splitlines())) < 1000


# ---- runtime.remote: spoofed and malformed samples -------------------------------------------------


def test_remote_survives_a_spoofed_seq_malformed_samples_and_a_flood_of_devices(
    children: Any,
    store: Any,
    tmp_path: Path,
    namespace: str,
    raw_sessions: list[Raw],
    caplog: pytest.LogCaptureFixture,
) -> None:
    servo_uid = make_uid(SERVO)
    endpoint, _, _ = start_robot(children, tmp_path, f"servo-motor:{servo_uid:#x}")
    servo_key = key(namespace, "servo-motor", servo_uid)
    plain = raw(raw_sessions, endpoint)
    with connect(endpoint, namespace) as robot:
        servo = robot.device(servo_uid)
        wait_for("the servo valid remotely", lambda: servo.valid)
        genuine = plain.get(servo_key)[servo_key]
        # Spoofed samples under the server's id, with a seq far ahead or a little ahead: nothing tells
        # them from genuine ones, but genuine publications are shown again (at once, or after
        # REORDER_TIME at most), never dropped for ever as older.
        for seq in (2**62, genuine["seq"] + 200):
            spoof = {**genuine, "values": {**genuine["values"], "servo0": 0.125}, "seq": seq}
            put(plain, servo_key, json.dumps(spoof))
        servo.write("servo0", 0.5)
        wait_for("the genuine value again", lambda: servo.get("servo0") == 0.5)
        servo.write("servo0", -0.5)
        wait_for("and the next one", lambda: servo.get("servo0") == -0.5)

        # Malformed samples: ignored, counted, one warning line at most, never a traceback.
        caplog.set_level("WARNING", logger="runtime.remote")
        bad = [json.dumps({**genuine, "seq": 0}).replace('"seq": 0', '"seq": 1e400')]
        bad += [
            json.dumps({**genuine, "seq": -1}),
            json.dumps({**genuine, "seq": True}),
            json.dumps({**genuine, "seq": 2**64}),
            json.dumps({**genuine, "values": [1, 2]}),
            json.dumps({**genuine, "server": 5}),
            "[" * 100_000,
            "not json",
            "[]",
        ]
        for _ in range(10):
            for payload in bad:
                put(plain, servo_key, payload)
        wait_for("every malformed sample counted", lambda: robot.malformed >= 10 * len(bad))
        assert robot.malformed == 10 * len(bad)
        warned = [r for r in caplog.records if r.name == "runtime.remote" and r.levelname == "WARNING"]
        assert len(warned) <= 1 and not any(r.exc_info for r in caplog.records)
        assert servo.valid and servo.get("servo0") == -0.5

        # A peer announcing devices by the thousand: the records stay bounded.
        for uid in range(1, 3 * remote.DEVICES_KEEP):
            put(plain, key(namespace, "servo-motor", uid), json.dumps({**genuine, "uid": hex(uid)}))
        put(plain, servo_key, "not json")  # the last of them: counted once everything before is taken
        wait_for("the flood taken", lambda: robot.malformed == 10 * len(bad) + 1, timeout=30)
        assert robot.ignored > 0
        assert len(robot.discover()) <= remote.DEVICES_KEEP
        assert servo.valid and servo.get("servo0") == -0.5


# ---- runtime zenoh: a segment replaced between two looks -------------------------------------------


def test_runtime_zenoh_follows_a_segment_unlinked_and_made_again_between_two_looks(
    children: Any, namespace: str, raw_sessions: list[Raw]
) -> None:
    port = free_port()
    start_zenoh(children, port)
    plain = raw(raw_sessions, f"tcp/127.0.0.1:{port}")
    uid = make_uid(SERVO)
    servo_key = key(namespace, "servo-motor", uid)

    def shown() -> dict[str, Any]:
        return plain.get(servo_key).get(servo_key, {})

    first = BufferStore(CATALOG)
    servo = first.get_or_open(uid)
    servo.serve()  # the test plays the bridge
    servo.set("servo0", 0.25)
    wait_for("the first segment served", lambda: (shown().get("values") or {}).get("servo0") == 0.25)
    # A bridge that restarts: its segment unlinked, and made again at once (well within a look's interval).
    servo.stop_serving()
    first.unlink_all()
    first.close()
    with BufferStore(CATALOG) as second:
        again = second.get_or_open(uid)
        again.serve()
        again.set("servo0", -0.75)
        wait_for(
            "the new segment served",
            lambda: shown().get("valid") and shown()["values"]["servo0"] == -0.75,
            timeout=10,
        )
        again.stop_serving()


@pytest.mark.parametrize("read_only", [False, True])
def test_runtime_zenoh_on_every_address_with_writes_warns_once_and_says_how_to_restrict(
    children: Any, namespace: str, read_only: bool
) -> None:
    endpoint = f"tcp/0.0.0.0:{free_port()}"
    server = children.start(
        "runtime.tools.zenoh", "--listen", endpoint, *(["--read-only"] if read_only else [])
    )
    wait_for("runtime zenoh serving", lambda: "serving namespace" in children.log(server))
    warnings = [line for line in children.log(server).splitlines() if "can drive the robot" in line]
    if read_only:
        assert warnings == []
    else:
        assert len(warnings) == 1 and endpoint in warnings[0]
        assert "--read-only" in warnings[0] and "access_control" in warnings[0]
