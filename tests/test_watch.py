"""The one look for a namespace's segments (:class:`runtime.watch.SegmentDiscovery`); runtime zenoh on it.

A segment replaced (unlinked and made again under its name: a bridge that
restarts) is reported gone and appears anew, so that whoever serves it follows
the new file; one that cannot be opened is reported once and tried again at
every look, so that it is served as soon as it can be. The server of
``runtime zenoh`` (:class:`runtime.remote.server.ZenohServer`, run here in a
thread of this process) looks through it: a remote client sees the new
segment's values.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from e2e import CATALOG, SERVO, make_uid, namespace_fixture, wait_for
from test_zenoh import connect

from runtime import remote, watch
from runtime.buffer import SHM_DIR, BufferStore, DeviceBuffer, DeviceBufferError
from runtime.remote.server import ZenohServer
from runtime.watch import SegmentDiscovery

namespace = namespace_fixture("rt-test-watch")


def foreign_file(name: str) -> str:
    """A file that is no segment of this library at a segment's name (owner-only, as a segment is)."""
    path = os.path.join(SHM_DIR, name)
    descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(b"not a segment")
    return path


def remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def test_a_replaced_segment_is_gone_and_appears_anew_and_a_vanished_one_is_gone(namespace: str) -> None:
    uid = make_uid(SERVO)
    discovery = SegmentDiscovery(CATALOG, select=lambda type_name, found: found == uid)
    held: list[Any] = []
    try:
        with BufferStore(CATALOG) as first:
            servo = first.get_or_open(uid)
            servo.serve()  # the test plays the bridge
            servo.set("servo0", 0.25)
            appeared, gone = discovery.discover()
            held += [segment.buffer for segment in appeared]
            assert [(s.type_name, s.uid) for s in appeared] == [("servo-motor", uid)] and gone == []
            old = appeared[0]
            assert old.buffer.get("servo0") == 0.25
            assert discovery.discover() == ([], [])  # nothing new: nothing said
            first.unlink_all()
        with BufferStore(CATALOG) as second:  # the same name, another file
            again = second.get_or_open(uid)
            again.serve()
            again.set("servo0", -0.75)
            appeared, gone = discovery.discover()
            held += [segment.buffer for segment in appeared]
            assert gone == [old] and old.replaced
            assert [segment.name for segment in appeared] == [old.name]
            assert appeared[0].inode != old.inode and appeared[0].buffer.get("servo0") == -0.75
            assert discovery.segments() == appeared
            second.unlink_all()
        appeared, gone = discovery.discover()
        assert appeared == [] and [segment.name for segment in gone] == [old.name]
        assert not gone[0].replaced  # unlinked for good
    finally:
        for buffer in held:
            buffer.close()
        BufferStore(CATALOG).unlink_all()


def test_a_segment_that_cannot_be_opened_is_reported_once_and_tried_again(namespace: str) -> None:
    uid = make_uid(SERVO)
    refused: list[tuple[str, DeviceBufferError]] = []
    discovery = SegmentDiscovery(
        CATALOG, select=lambda type_name, found: found == uid, on_refused=lambda *why: refused.append(why)
    )
    name = BufferStore(CATALOG).segment_name("servo-motor", uid)
    path = foreign_file(name)
    held: list[Any] = []
    try:
        assert discovery.discover() == ([], [])
        assert discovery.discover() == ([], [])  # tried again, not said again
        assert [found for found, _ in refused] == [name]
        remove(path)
        with BufferStore(CATALOG) as store:
            servo = store.get_or_open(uid)
            servo.serve()
            servo.set("servo0", 0.5)
            appeared, gone = discovery.discover()
            held += [segment.buffer for segment in appeared]
            assert gone == [] and [segment.name for segment in appeared] == [name]
            assert appeared[0].buffer.get("servo0") == 0.5
            assert len(refused) == 1
            store.unlink_all()
    finally:
        remove(path)
        for buffer in held:
            buffer.close()
        BufferStore(CATALOG).unlink_all()


def quiet_look(discovery: SegmentDiscovery, timeout: float = 20.0) -> int:
    """Look until a listing is trusted for the next look (the directory unchanged for UNCHANGED_AFTER
    before it: on a busy machine other suites make and unlink segments); the directory's time then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        discovery.discover()
        listed = discovery._listed
        if listed is not None:
            return listed
        time.sleep(watch.UNCHANGED_AFTER)
    raise AssertionError(f"{SHM_DIR} never stayed unchanged for {watch.UNCHANGED_AFTER} s in {timeout} s")


def test_a_look_at_an_unchanged_directory_lists_nothing_and_a_change_is_seen_at_the_next_look(
    namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    uid = make_uid(SERVO)
    listings: list[str] = []

    def counted(catalog: Any, namespace: str) -> list[tuple[str, int, str]]:
        listings.append(namespace)
        return watch.BufferStore(catalog).find_segments(namespace)

    monkeypatch.setattr(watch, "find_segments", counted)
    discovery = SegmentDiscovery(CATALOG, select=lambda type_name, found: found == uid)
    held: list[Any] = []
    try:
        with BufferStore(CATALOG) as store:
            # Nothing changed since a trusted listing: the next look only stats the directory.
            for _ in range(50):  # another suite may touch the directory in between: then it lists
                listed = quiet_look(discovery)
                before = len(listings)
                assert discovery.discover() == ([], [])
                if os.stat(SHM_DIR).st_mtime_ns == listed:
                    assert len(listings) == before  # no listing
                    break
            else:
                raise AssertionError("the directory changed between every two looks")
            # A segment made since: the directory's time moved, the next look lists and attaches it.
            servo = store.get_or_open(uid)
            servo.serve()
            appeared, gone = discovery.discover()
            held += [segment.buffer for segment in appeared]
            assert [segment.uid for segment in appeared] == [uid] and gone == []
            # Forgotten by its caller: attached again at the next look, changed directory or not.
            quiet_look(discovery)
            forgotten = discovery.forget(appeared[0].name)
            assert forgotten is appeared[0]
            appeared, gone = discovery.discover()
            held += [segment.buffer for segment in appeared]
            assert [segment.uid for segment in appeared] == [uid] and gone == []
            # Unlinked: gone at the next look.
            quiet_look(discovery)
            store.unlink_all()
            appeared, gone = discovery.discover()
            assert appeared == [] and [segment.uid for segment in gone] == [uid]
    finally:
        for buffer in held:
            buffer.close()
        BufferStore(CATALOG).unlink_all()


def test_a_listing_right_after_a_change_is_not_trusted(namespace: str) -> None:
    """A file system may stamp with a coarse clock: a file made in the tick of a listing, after it,
    would not move the time; a listing that close to the last change is made again at the next look."""
    uid = make_uid(SERVO)
    discovery = SegmentDiscovery(CATALOG, select=lambda type_name, found: found == uid)
    try:
        with BufferStore(CATALOG) as store:
            store.get_or_open(uid).serve()
            changed = os.stat(SHM_DIR).st_mtime_ns
            appeared, _ = discovery.discover()
            for segment in appeared:
                segment.buffer.close()
            if time.time_ns() - changed < watch.UNCHANGED_AFTER * 1e9 * 0.5:  # (a slow machine: not now)
                assert discovery._listed is None
            store.unlink_all()
    finally:
        BufferStore(CATALOG).unlink_all()


# ---- runtime zenoh's server follows a replaced segment --------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def serving(namespace: str) -> Iterator[str]:
    """A :class:`ZenohServer` of the namespace in a thread, listening on loopback; its endpoint."""
    endpoint = f"tcp/127.0.0.1:{free_port()}"
    session = remote.open_session(remote.make_config(mode="peer", listen=[endpoint]))
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    try:
        with BufferStore(CATALOG) as store:
            server = ZenohServer(session, store, namespace)
            thread = threading.Thread(target=loop.run_until_complete, args=(server.serve(stop),), daemon=True)
            thread.start()
            try:
                yield endpoint
            finally:
                loop.call_soon_threadsafe(stop.set)
                thread.join(30)
                assert not thread.is_alive()
    finally:
        loop.close()
        session.close()


def shows(device: remote.RemoteDevice, value: float) -> bool:
    try:
        return device.valid and device.get("servo0") == value
    except DeviceBufferError:
        return False


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_zenoh_server_follows_a_replaced_segment_and_serves_one_it_could_not_open_before(
    namespace: str,
) -> None:
    uid = make_uid(SERVO)
    name = BufferStore(CATALOG).segment_name("servo-motor", uid)
    path = foreign_file(name)  # there first: the server cannot open it
    try:
        with serving(namespace) as endpoint, connect(endpoint, namespace) as robot:
            device = robot.device(uid)
            remove(path)
            first = BufferStore(CATALOG)
            servo: DeviceBuffer = first.get_or_open(uid)
            servo.serve()  # the test plays the bridge
            servo.set("servo0", 0.25)
            wait_for("the segment served once it can be opened", lambda: shows(device, 0.25), timeout=15)
            # A bridge that restarts: its segment unlinked, and made again at once under the same name.
            servo.stop_serving()
            first.unlink_all()
            first.close()
            with BufferStore(CATALOG) as second:
                again = second.get_or_open(uid)
                again.serve()
                again.set("servo0", -0.75)
                wait_for("the new segment served", lambda: shows(device, -0.75), timeout=15)
                again.stop_serving()
                second.unlink_all()
    finally:
        remove(path)
        BufferStore(CATALOG).unlink_all()
