"""The bridge's shutdown: once ``stop`` is set it never opens a port again, and it always finishes.

A bridge runs in this process on pseudo-terminals the test holds (no device
answers). Each test sets ``stop`` at the worst moment for the port watcher:
in the same loop step as a rescan request (the watcher's wait for it has just
finished when its cancellation comes: ``asyncio.wait_for`` of Python 3.11
returned the result and dropped the cancellation, so the watcher scanned on,
opened the port again and the bridge never finished), or from inside a scan
that finds a new port. Every port opening is recorded (with whether ``stop``
was set by then); the bridge must end within a deadline, never open a port
after ``stop``, and close every port it opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from e2e import namespace_fixture

from runtime import catalog
from runtime.bridge import connection as bridge_connection
from runtime.bridge import manager as bridge
from runtime.buffer import BufferStore

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]  # slow: the bridge on ptys

DEADLINE = 10.0
"""Seconds the bridge gets to open a port, and to finish once stopped (it needs milliseconds)."""

namespace = namespace_fixture("rt-test-bridge-shutdown", scope="function", autouse=False)


@pytest.fixture
def store(namespace: str) -> Iterator[BufferStore]:
    with BufferStore(catalog.load()) as store:
        yield store


@contextlib.contextmanager
def pty_pair() -> Iterator[str]:
    """A pseudo-terminal nobody answers on: the path the bridge opens."""
    master, slave = os.openpty()
    try:
        yield os.ttyname(slave)
    finally:
        os.close(master)
        os.close(slave)


class Opens:
    """Every port the bridge opened: the connection, and whether ``stop`` was set by then."""

    def __init__(self) -> None:
        self.stop: asyncio.Event | None = None
        self.opened: list[tuple[bridge_connection.PortConnection, bool]] = []
        self.changed: asyncio.Event | None = None

    async def wait_for(self, count: int) -> None:
        """Wait (with a deadline) until ``count`` ports were opened."""
        assert self.changed is not None
        deadline = asyncio.get_running_loop().time() + DEADLINE
        while len(self.opened) < count:
            remaining = deadline - asyncio.get_running_loop().time()
            assert remaining > 0, f"{len(self.opened)} port(s) opened within {DEADLINE} s, not {count}"
            self.changed.clear()
            waiting = asyncio.ensure_future(self.changed.wait())
            try:
                await asyncio.wait({waiting}, timeout=remaining)
            finally:
                waiting.cancel()


@pytest.fixture
def opens(monkeypatch: pytest.MonkeyPatch) -> Opens:
    """Record every port the bridge opens (PortConnection._open that succeeds)."""
    record = Opens()
    original = bridge_connection.PortConnection._open

    def recording_open(connection: bridge_connection.PortConnection) -> bool:
        opened = original(connection)
        if opened:
            assert record.stop is not None
            record.opened.append((connection, record.stop.is_set()))
            if record.changed is not None:
                record.changed.set()
        return opened

    monkeypatch.setattr(bridge_connection.PortConnection, "_open", recording_open)
    return record


def run_until_stopped(
    store: BufferStore,
    opens: Opens,
    globs: list[str],
    stop_when: Callable[[bridge.Bridge, asyncio.Event], None],
) -> bridge.Bridge:
    """Run a bridge until a port is open, then ``stop_when(bridge, stop)`` (which sets ``stop``, at once or
    from a later scan); return the bridge once it finished (failing if it does not within the deadline)."""

    async def main() -> bridge.Bridge:
        stop = asyncio.Event()
        opens.stop, opens.changed = stop, asyncio.Event()
        engine = bridge.Bridge(store, globs=globs)
        serving = asyncio.create_task(engine.serve(stop))
        await opens.wait_for(1)
        stop_when(engine, stop)
        done, _ = await asyncio.wait({serving}, timeout=DEADLINE)
        assert serving in done, (
            f"the bridge did not finish within {DEADLINE} s of stop; ports opened: "
            f"{[(connection.path, after) for connection, after in opens.opened]}"
        )
        assert serving.result() == 0
        return engine

    return asyncio.run(main())


def check_shut_down(engine: bridge.Bridge, opens: Opens) -> None:
    """No port opened after stop; every port opened is closed; nothing left running."""
    assert [connection.path for connection, after_stop in opens.opened if after_stop] == []
    for connection, _ in opens.opened:
        assert connection._port is None and connection._fd == -1, f"{connection.path} left open"
    assert engine.connections == {}
    assert engine.pump_ports == {}
    assert all(task.done() for task in engine._tasks.values())


def test_stop_in_the_step_of_a_rescan_request_never_reopens_the_port(
    store: BufferStore, opens: Opens, tmp_path: Path
) -> None:
    """The hang seen once in test_bringup: a rescan (inotify: any pty created on the machine) and stop
    come together; the watcher, cancelled just after its wait ended, must not scan on."""
    ports = tmp_path / "ports"
    ports.mkdir()

    def rescan_then_stop(engine: bridge.Bridge, stop: asyncio.Event) -> None:
        assert engine._rescan is not None
        engine._rescan.set()  # what an inotify event does
        stop.set()

    with pty_pair() as path:
        (ports / "ttyACM0").symlink_to(path)
        engine = run_until_stopped(store, opens, [str(ports / "*")], rescan_then_stop)
    assert len(opens.opened) == 1
    check_shut_down(engine, opens)


def test_a_port_that_appears_while_the_bridge_stops_is_never_opened(
    monkeypatch: pytest.MonkeyPatch, store: BufferStore, opens: Opens, tmp_path: Path
) -> None:
    """Stop comes from inside a scan (between looking at the ports and starting their connections),
    the scan finds a new port, and a rescan is requested: nothing opens after stop."""
    ports = tmp_path / "ports"
    ports.mkdir()
    with pty_pair() as first, pty_pair() as second:
        stopping: list[asyncio.Event] = []
        discover = bridge.Bridge.discover

        def discover_then_stop(engine: bridge.Bridge) -> dict[bridge.Identity, str]:
            if stopping and not stopping[0].is_set():
                (ports / "ttyACM1").symlink_to(second)  # a port appears as the bridge stops
                found = discover(engine)
                assert engine._rescan is not None
                engine._rescan.set()
                stopping[0].set()
                return found
            return discover(engine)

        def stop_at_the_next_scan(engine: bridge.Bridge, stop: asyncio.Event) -> None:
            stopping.append(stop)
            assert engine._rescan is not None
            engine._rescan.set()  # scan now

        monkeypatch.setattr(bridge.Bridge, "discover", discover_then_stop)
        (ports / "ttyACM0").symlink_to(first)
        engine = run_until_stopped(store, opens, [str(ports / "*")], stop_at_the_next_scan)
    assert [connection.path for connection, _ in opens.opened] == [str(ports / "ttyACM0")]
    check_shut_down(engine, opens)


def test_the_shutdown_cancels_again_a_task_that_dropped_its_cancellation(
    monkeypatch: pytest.MonkeyPatch, store: BufferStore
) -> None:
    """A background task that swallows its first cancellation (as a wait_for of Python 3.11 may) does
    not keep the bridge from finishing: it is cancelled again."""
    monkeypatch.setattr(bridge, "CANCEL_AGAIN_INTERVAL", 0.05)
    cancellations: list[int] = []
    started: list[asyncio.Event] = []

    async def stubborn_watch(engine: bridge.Bridge) -> None:
        started[0].set()
        while True:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancellations.append(1)
                if len(cancellations) > 1:
                    raise

    monkeypatch.setattr(bridge.Bridge, "_watch", stubborn_watch)

    async def main() -> None:
        stop = asyncio.Event()
        started.append(asyncio.Event())
        serving = asyncio.create_task(bridge.Bridge(store).serve(stop))
        await asyncio.wait_for(started[0].wait(), DEADLINE)
        stop.set()
        done, _ = await asyncio.wait({serving}, timeout=DEADLINE)
        assert serving in done, f"the bridge did not finish within {DEADLINE} s of stop"

    asyncio.run(main())
    assert len(cancellations) == 2


def test_a_connection_cancels_again_work_that_dropped_its_cancellation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A connection's work (its service loop: wait_write_async's wait_for) that swallows a cancellation is
    cancelled again, so the connection ends; what the work raised comes out."""
    monkeypatch.setattr(bridge_connection, "CANCEL_AGAIN_INTERVAL", 0.05)

    async def stubborn(started: asyncio.Event, then: BaseException | None) -> None:
        started.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()
        try:
            await asyncio.Event().wait()
        finally:
            if then is not None:
                raise then

    async def main() -> None:
        started = asyncio.Event()
        work = asyncio.create_task(stubborn(started, None))
        await asyncio.wait_for(started.wait(), DEADLINE)
        await asyncio.wait_for(bridge_connection._cancel(work), DEADLINE)
        assert work.cancelled()
        started.clear()
        failing = asyncio.create_task(stubborn(started, ValueError("boom")))
        await asyncio.wait_for(started.wait(), DEADLINE)
        with pytest.raises(ValueError, match="boom"):
            await asyncio.wait_for(bridge_connection._cancel(failing), DEADLINE)

    asyncio.run(main())
