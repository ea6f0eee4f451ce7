"""The plumbing of runtime foxglove: its origin gate, the compiled relay that carries the
connections let through, and the Foxglove SDK's worker threads.

The gate is tested against a plain TCP echo server standing in for the Foxglove
SDK's (what it relays is bytes); tests/test_hostile_network.py runs it in front
of the real one.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from runtime._core import Relay
from runtime.live import gate as gate_module
from runtime.live.gate import HANDSHAKE_LIMIT, OriginGate
from runtime.testing.waiting import wait_for

HANDSHAKE = (
    b"GET / HTTP/1.1\r\nHost: robot\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)


def receive_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, f"the connection ended after {len(data)} of {size} bytes"
        data += chunk
    return data


def receive_all(sock: socket.socket) -> bytes:
    """Everything until the other side ends."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


@pytest.fixture
def relay() -> Iterator[Relay]:
    relay = Relay()
    try:
        yield relay
    finally:
        relay.close()


def relayed_pair(relay: Relay, tag: int) -> tuple[socket.socket, socket.socket]:
    """Two sockets whose bytes the relay carries to each other (through two socket pairs)."""
    left, left_inside = socket.socketpair()
    right, right_inside = socket.socketpair()
    for sock in (left, right):
        sock.settimeout(10)
    relay.add(left_inside.detach(), right_inside.detach(), tag)
    return left, right


def test_the_relay_carries_bytes_both_ways_in_order_and_a_reader_that_lags_loses_nothing(
    relay: Relay,
) -> None:
    left, right = relayed_pair(relay, 7)
    with left, right:
        left.sendall(b"hello")
        assert receive_exactly(right, 5) == b"hello"
        right.sendall(b"and back")
        assert receive_exactly(left, 8) == b"and back"
        # Far more than the relay and the kernel hold: the writer waits for the reader (backpressure).
        payload = bytes(range(256)) * 16384  # 4 MiB
        sender = threading.Thread(target=left.sendall, args=(payload,))
        sender.start()
        try:
            assert receive_exactly(right, len(payload)) == payload
        finally:
            sender.join(10)
        assert not sender.is_alive()
        assert relay.active() == [7]
        assert relay.count == 1


def test_when_one_side_ends_the_other_gets_what_was_sent_then_the_end(relay: Relay) -> None:
    left, right = relayed_pair(relay, 1)
    with left, right:
        left.sendall(b"last words")
        left.close()
        assert receive_all(right) == b"last words"
        wait_for(lambda: relay.active() == [], timeout=10, what="the pair to end")
        assert relay.count == 0


def test_a_reset_ends_the_pair(relay: Relay) -> None:
    left, right = relayed_pair(relay, 3)
    keep, _ = relayed_pair(relay, 4)
    with left, right, keep:
        right.shutdown(socket.SHUT_RDWR)
        right.close()
        assert receive_all(left) == b""
        wait_for(lambda: relay.active() == [4], timeout=10, what="the reset pair to end")


def test_close_ends_every_pair_and_then_add_refuses_and_closes_what_it_was_given(relay: Relay) -> None:
    pairs = [relayed_pair(relay, tag) for tag in range(5)]
    assert sorted(relay.active()) == list(range(5))
    relay.close()
    for left, right in pairs:
        with left, right:
            assert receive_all(left) == b"" and receive_all(right) == b""
    assert relay.count == 0
    a, a_inside = socket.socketpair()
    b, b_inside = socket.socketpair()
    with a, b:
        with pytest.raises(ValueError, match="closed"):
            relay.add(a_inside.detach(), b_inside.detach(), 9)
        a.settimeout(10)
        assert receive_all(a) == b""  # its descriptor was closed all the same


class EchoServer:
    """What the gate relays to: answers each connection's bytes with the same bytes."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def gate() -> Iterator[OriginGate]:
    echo = EchoServer()
    gate = OriginGate("127.0.0.1", 0, echo.port, ["http://localhost:3000"])
    try:
        yield gate
    finally:
        gate.close()
        echo.close()


def connect(gate: OriginGate, origin: bytes | None, after: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", gate.port), timeout=10)
    header = b"Origin: " + origin + b"\r\n" if origin is not None else b""
    sock.sendall(HANDSHAKE + header + b"\r\n" + after)
    return sock


def test_an_allowed_handshake_is_relayed_with_the_bytes_sent_right_after_it(gate: OriginGate) -> None:
    for origin in (None, b"https://app.foxglove.dev", b"http://localhost:3000/"):
        expected = HANDSHAKE + (b"Origin: " + origin + b"\r\n" if origin is not None else b"") + b"\r\n"
        with connect(gate, origin, after=b"first frame") as sock:
            assert receive_exactly(sock, len(expected) + 11) == expected + b"first frame"
            sock.sendall(b"more")
            assert receive_exactly(sock, 4) == b"more"
            assert len(gate.ours()) == 1
            assert gate.foreign() == []
    wait_for(lambda: not gate.ours(), timeout=10, what="the relayed connections to end")
    assert gate.relayed == 3 and gate.refused == 0


def test_refused_handshakes_get_a_status_saying_why_and_are_closed(gate: OriginGate) -> None:
    with connect(gate, b"http://evil.example") as sock:
        answer = receive_all(sock)
    assert answer.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert answer.endswith(b"origin 'http://evil.example' is not allowed (runtime foxglove --allow-origin)\n")
    with socket.create_connection(("127.0.0.1", gate.port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n" + b"X-Long: " + b"a" * HANDSHAKE_LIMIT + b"\r\n\r\n")
        assert receive_all(sock).startswith(b"HTTP/1.1 400 Bad Request\r\n")
    with socket.create_connection(("127.0.0.1", gate.port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n")
        sock.shutdown(socket.SHUT_WR)  # ends before its handshake does
        assert receive_all(sock).startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert gate.refused == 3 and gate.relayed == 0


def test_connections_over_the_limit_are_refused_and_a_place_frees_when_one_ends(
    gate: OriginGate, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gate_module, "CONNECTIONS_LIMIT", 2)
    first, second = connect(gate, None), connect(gate, None)
    with first, second:
        for sock in (first, second):
            receive_exactly(sock, len(HANDSHAKE) + 2)
        with connect(gate, None) as third:
            assert receive_all(third).startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
        first.close()
        wait_for(lambda: len(gate.ours()) == 1, timeout=10, what="the first connection to end")
        with connect(gate, None) as fourth:
            assert receive_exactly(fourth, len(HANDSHAKE) + 2) == HANDSHAKE + b"\r\n"


WORKER_COUNT = """
import os, sys, time
from runtime.live import LiveView
from runtime.tools._common import load_catalog

def workers():
    names = []
    for task in os.listdir("/proc/self/task"):
        try:
            names.append(open(f"/proc/self/task/{{task}}/comm").read().strip())
        except OSError:
            pass
    return names.count("tokio-rt-worker")

view = LiveView(load_catalog(None), port=0, namespace="rt-workers-{pid}")
view.start()
try:
    # A thread takes its name once it runs: on a busy machine, a moment after it was made.
    deadline = time.monotonic() + 20
    seen = workers()
    while seen < {workers} and time.monotonic() < deadline:
        time.sleep(0.01)
        seen = max(seen, workers())
    settle = time.monotonic() + 0.3  # and none more than asked comes a moment later
    while time.monotonic() < settle:
        time.sleep(0.01)
        seen = max(seen, workers())
    print(seen)
finally:
    view.close()
"""


@pytest.mark.parametrize(("environment", "workers"), [(None, 1), ("2", 2)])
def test_the_foxglove_server_runs_one_tokio_worker_unless_the_environment_says(
    environment: str | None, workers: int
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TOKIO_WORKER_THREADS"}
    if environment is not None:
        env["TOKIO_WORKER_THREADS"] = environment
    done = subprocess.run(
        [sys.executable, "-c", WORKER_COUNT.format(pid=os.getpid(), workers=workers)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[-1]) == workers
