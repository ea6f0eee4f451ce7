"""Resource leaks: shared memory, file descriptors, threads and mappings stay flat over many cycles.

Measured, then asserted with a small tolerance: the segments of the test
namespace in /dev/shm, the entries of /proc/<pid>/fd, the threads
(``threading.active_count()`` here, /proc/<pid>/task for another process), the
lines of /proc/<pid>/maps and, among them, the mappings of this namespace's
segments (those must be back to the baseline exactly once the buffers are
dropped: a closed Buffer keeps its mapping until the object goes away).

* 10 000 cycles of :meth:`Buffer.open` / close, of each kind: attaching an
  existing segment, creating and unlinking one, a process-local buffer, and
  opens that fail (missing segment, other layout, other size).
* 10 000 cycles of a :class:`BufferStore`: ``get_or_open`` of existing devices
  and of a new one (unlinked after), refused keys, then ``close``.
* Bridge reconnect cycles: ``runtime bridge`` runs as a subprocess serving a
  directory of symlinks to pseudo-terminals the test drives as Smart Devices.
  Devices vanish (link removed) or hang up (pty closed) and come back, many
  times; the bridge's fds, threads and mappings are compared before and after.

Run with ``-s`` to see the figures. ``$RUNTIME_STRESS_SECONDS`` (default 5)
scales the number of bridge rounds (two per second of stress).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import gc
import itertools
import os
import random
import select
import signal
import subprocess
import threading
import time
import tty
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from e2e import (
    CATALOG,
    STRESS_SECONDS,
    launch,
    make_uid,
    namespace_prefix,
    namespace_segments,
    try_open,
)

from runtime.buffer import (
    SHM_DIR,
    Buffer,
    BufferStore,
    DeviceBuffer,
    DeviceBufferError,
    DeviceUID,
    Parameter,
)
from runtime.messaging import DELIM, FrameSplitter, Message, MessageType

CYCLES = 10_000
SAMPLES = 10
"""Measurements taken during the open/close cycles (not only at the end)."""
FD_TOLERANCE = 2
MAPS_TOLERANCE = 32
"""Lines of /proc/<pid>/maps that may come and go (allocator arenas, not segments)."""
BRIDGE_DEVICES = 4
BRIDGE_WARMUP_ROUNDS = 2
BRIDGE_ROUNDS = max(10, round(2 * STRESS_SECONDS))
WAIT = 10.0

# slow: thousands of cycles of every resource
pytestmark = [pytest.mark.slow, pytest.mark.timeout(90 + 4 * STRESS_SECONDS)]

Probe = Buffer.make_type(
    "leak-probe",
    [Parameter("count", ctypes.c_int64, 0, writeable=True), Parameter("label", ctypes.c_char * 8, 1)],
)
SameSize = Buffer.make_type(  # the same size as Probe, another layout: refused after mapping
    "leak-same-size",
    [Parameter("other", ctypes.c_int64, 0), Parameter("name", ctypes.c_char * 8, 1)],
)
Bigger = Buffer.make_type("leak-bigger", [Parameter(f"p{i}", ctypes.c_int64, i) for i in range(40)])


# ---- measuring --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Usage:
    """What a process holds, and the segments of the test namespace."""

    fds: int
    threads: int
    maps: int
    mapped_segments: int
    segments: int

    def __str__(self) -> str:
        return (
            f"fds={self.fds} threads={self.threads} maps={self.maps} "
            f"mapped_segments={self.mapped_segments} segments={self.segments}"
        )


def usage(pid: int | None = None) -> Usage:
    """Measure this process (threads: ``threading.active_count()``) or another one (its tasks)."""
    proc = f"/proc/{pid or 'self'}"
    with open(f"{proc}/maps") as maps_file:
        maps = maps_file.readlines()
    marker = f"{SHM_DIR}/{namespace_prefix()}"
    return Usage(
        fds=len(os.listdir(f"{proc}/fd")),
        threads=threading.active_count() if pid is None else len(os.listdir(f"{proc}/task")),
        maps=len(maps),
        mapped_segments=sum(marker in line for line in maps),
        segments=len(namespace_segments()),
    )


def settled() -> Usage:
    gc.collect()
    return usage()


def assert_flat(what: str, before: Usage, after: Usage, samples: list[Usage], cycles: int) -> None:
    """After ``cycles``, fds/maps within tolerance, threads, segments and their mappings exactly as before."""
    peak = Usage(*(max(getattr(s, f.name) for s in [*samples, after]) for f in dataclasses.fields(Usage)))
    report = f"{what}: {cycles} cycles; before {before}; after {after}; peak during {peak}"
    print(report)
    assert after.segments == before.segments, f"segments leaked or vanished; {report}"
    assert after.mapped_segments == before.mapped_segments, f"segment mappings not released; {report}"
    assert after.threads == before.threads, f"thread leak; {report}"
    assert after.fds <= before.fds + FD_TOLERANCE, f"fd leak; {report}"
    assert after.maps <= before.maps + MAPS_TOLERANCE, f"mapping leak; {report}"
    assert peak.fds <= before.fds + FD_TOLERANCE, f"fds grew during the cycles; {report}"
    assert peak.maps <= before.maps + MAPS_TOLERANCE, f"mappings grew during the cycles; {report}"


@contextlib.contextmanager
def unlinked_afterwards(prefix: str) -> Iterator[None]:
    """Unlink every segment whose name starts with ``prefix`` when the block exits, pass or fail."""
    try:
        yield
    finally:
        for entry in os.listdir(SHM_DIR):
            if entry.startswith(prefix):
                with contextlib.suppress(DeviceBufferError):
                    Buffer.unlink(entry)


# ---- Buffer.open / close ----------------------------------------------------------------------------


def buffer_cycle(index: int, existing: str, fresh_prefix: str, missing: str) -> None:
    """One cycle of every kind of open and close; drops every buffer it made."""
    with Probe.open(existing, create=index % 2 == 0) as attached:  # exists: attached, never created
        with attached.transaction():
            attached.set("count", attached.get("count") + 1)
    fresh = f"{fresh_prefix}{index}"
    with Probe.open(fresh) as created:
        created.set("label", b"x")
        created.write("count", index)
        created.snapshot()
    Probe.unlink(fresh)
    with Probe.open(fresh, shared=False) as local:  # process-local: anonymous memory, no segment
        local.set("count", index)
    refused: list[tuple[type[Buffer], str, bool]] = [
        (Probe, missing, False),  # no such segment
        (SameSize, existing, False),  # mapped, then refused: another layout
        (Bigger, existing, True),  # refused before mapping: another size
    ]
    for buffer_type, name, create in refused:
        try:
            with buffer_type.open(name, create=create):
                raise AssertionError(f"{buffer_type.type_name} opened {name}")
        except DeviceBufferError:
            pass
    del attached, created, local


def test_buffer_open_close_cycles_leak_nothing(shm_name: Callable[[str], str]) -> None:
    existing, base = shm_name("existing"), shm_name("fresh")
    missing = shm_name("missing")
    fresh_prefix = f"{base}-"
    with unlinked_afterwards(fresh_prefix), Probe.open(existing) as holder:
        for index in range(200):  # warm up: lazily created objects, allocator arenas
            buffer_cycle(index, existing, fresh_prefix, missing)
        before = settled()
        samples = []
        started = time.perf_counter()
        for index in range(CYCLES):
            buffer_cycle(index, existing, fresh_prefix, missing)
            if index % (CYCLES // SAMPLES) == 0:
                samples.append(usage())  # without a collection: dropped buffers are unmapped at once
        elapsed = time.perf_counter() - started
        after = settled()
        assert holder.get("count") == CYCLES + 200
    assert_flat(f"Buffer.open/close ({elapsed:.2f} s)", before, after, samples, CYCLES)
    assert max(sample.mapped_segments for sample in samples) == before.mapped_segments
    assert not os.path.exists(os.path.join(SHM_DIR, f"{fresh_prefix}0"))


# ---- BufferStore ------------------------------------------------------------------------------------


def random_uid(type_name: str, rng: random.Random) -> int:
    buffer_type = CATALOG[type_name]
    assert issubclass(buffer_type, DeviceBuffer)
    return make_uid(buffer_type, rng)


def test_store_get_or_open_close_cycles_leak_nothing() -> None:
    rng = random.Random(7)
    devices = [random_uid(name, rng) for name in ("servo-motor", "yogi-bear", "potentiometer", "battery")]
    fresh_type = "limit-switch"
    first = random_uid(fresh_type, rng) & ~0xFFFF  # the fresh UIDs differ in their last 16 bits only
    fresh_base = BufferStore.segment_name(fresh_type, first)[:-4]
    uids = itertools.count(first)

    def cycle() -> None:
        with BufferStore(CATALOG) as store:
            for uid in devices:
                store.get_or_open(uid).snapshot()  # attached: the holder created them
            assert store.get_or_open(devices[0]) is store[devices[0]]
            fresh_uid = next(uids)
            fresh = store.get_or_open(fresh_uid)
            assert not fresh.valid  # waits for its producer
            fresh.serve()
            assert fresh.uid == fresh_uid and fresh.valid
            with pytest.raises(DeviceBufferError):
                store.get_or_open(("battery", 1), create=False)
            with pytest.raises(KeyError):
                store.get_or_open(int(DeviceUID(0xBEEF, 0, 1)))
            name = fresh.name
            del fresh
        Buffer.unlink(name)

    with unlinked_afterwards(fresh_base), BufferStore(CATALOG) as holder:
        try:
            for uid in devices:
                holder.get_or_open(uid).serve()  # the holder is their producer
            for _ in range(200):
                cycle()
            before = settled()
            samples = []
            started = time.perf_counter()
            for index in range(CYCLES):
                cycle()
                if index % (CYCLES // SAMPLES) == 0:
                    samples.append(usage())
            elapsed = time.perf_counter() - started
            after = settled()
        finally:
            names = [buffer.name for buffer in holder.values()]
            holder.close()
            for name in names:
                Buffer.unlink(name)
    assert_flat(f"BufferStore get_or_open/close ({elapsed:.2f} s)", before, after, samples, CYCLES)
    assert max(sample.mapped_segments for sample in samples) == before.mapped_segments


# ---- bridge reconnect cycles ------------------------------------------------------------------------


class PtyDevice:
    """The test playing one Smart Device on a pty, reachable through a symlink the bridge watches."""

    def __init__(self, uid: int | None, link: Path) -> None:
        self.uid = uid
        """What SUB_RES says (None: a mute device that never answers)."""
        self.link = link
        self.master = self.slave = -1
        self.retired: list[int] = []
        """Descriptors of the pty before, closed once the link names the new one (see :meth:`plug`)."""
        self.splitter = FrameSplitter()
        self.answered = 0
        self.new_pty()

    def new_pty(self) -> None:
        self.retired += [fd for fd in (self.master, self.slave) if fd >= 0]
        self.master, self.slave = os.openpty()  # the test keeps the slave open: the pty survives the bridge
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        self.splitter.reset()

    def plug(self) -> None:
        """Make the link (re)appear, pointing at the current pty."""
        temporary = self.link.with_name(f".{self.link.name}.tmp")
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        temporary.symlink_to(os.ttyname(self.slave))
        os.replace(temporary, self.link)
        # Only now may the old pty's number go to another program's pty (another test suite's): until
        # the link named this one, the bridge could have opened that stranger through it.
        for fd in self.retired:
            os.close(fd)
        self.retired.clear()

    def unplug(self) -> None:
        """The port vanishes: its path is gone (the pty itself stays)."""
        self.link.unlink()

    def hang_up(self) -> None:
        """The device goes away for good: the pty's master is closed (reads fail, the link dangles).

        The slave stays open until the next :meth:`plug`, so that no other
        program's pty gets its number while the link still names it.
        """
        if self.master >= 0:
            os.close(self.master)
        self.master = -1

    def close(self) -> None:
        for fd in (self.master, self.slave, *self.retired):
            if fd >= 0:
                os.close(fd)
        self.master = self.slave = -1
        self.retired.clear()

    def pump(self) -> None:
        """Answer what the bridge sent: PING with our SUB_RES, HB_REQ with HB_RES."""
        if self.master < 0:
            return
        try:
            data = os.read(self.master, 65536)
        except (BlockingIOError, OSError):
            return
        for frame in self.splitter.feed(data):
            message = Message.decode(frame)
            if message.type == MessageType.PING and self.uid is not None:
                parts = DeviceUID.from_int(self.uid)
                reply = Message.make_sub_res(0, 0, parts.device_id, parts.year, parts.random)
            elif message.type == MessageType.HB_REQ:
                reply = Message.make_hb_res(message.read_hb_req())
            else:
                continue
            with contextlib.suppress(BlockingIOError, OSError):
                os.write(self.master, reply.encode() + DELIM)
                self.answered += 1


def pump_until(what: str, devices: list[PtyDevice], predicate: Callable[[], bool], log: Path) -> None:
    """Play the devices until ``predicate`` holds; fail (with the bridge's log) after WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; bridge log:\n{log.read_text()[-4000:]}")
        masters = [device.master for device in devices if device.master >= 0]
        if masters:
            select.select(masters, [], [], 0.02)
        else:
            time.sleep(0.02)
        for device in devices:
            device.pump()


@pytest.mark.timeout(120 + 8 * STRESS_SECONDS)
def test_bridge_reconnect_cycles_leak_nothing(tmp_path: Path) -> None:
    rng = random.Random(11)
    links = tmp_path / "links"
    links.mkdir()
    types = ["servo-motor", "yogi-bear", "potentiometer", "limit-switch"]
    uids = [random_uid(types[index % len(types)], rng) for index in range(BRIDGE_DEVICES)]
    devices = [PtyDevice(uid, links / f"device-{index}") for index, uid in enumerate(uids)]
    # Three more ports the bridge opens and closes every round without connecting them: a device that
    # never answers PING (the handshake is abandoned), one of a type the catalog does not know, and a
    # twin of the first device (the same UID: whichever port comes second is ignored).
    mute = PtyDevice(None, links / "mute")
    stranger = PtyDevice(int(DeviceUID(0xBEEF, 1, 2)), links / "stranger")
    twin = PtyDevice(uids[0], links / "twin")
    everyone = [*devices, mute, stranger, twin]
    log = tmp_path / "bridge.log"

    def logged(text: str) -> int:
        return log.read_text(errors="replace").count(text)

    process: subprocess.Popen[bytes] | None = None
    samples: list[Usage] = []
    try:
        process = launch("runtime.tools.bridge", "--glob", f"{links}/*", log=log, cwd=tmp_path)
        with BufferStore(CATALOG) as store:
            buffers: dict[int, DeviceBuffer] = {}

            def all_connected(rounds: int) -> bool:
                for uid in uids:
                    if uid not in buffers and (buffer := try_open(store, uid)):
                        buffers[uid] = buffer
                return (
                    len(buffers) == len(devices)
                    and all(buffer.valid for buffer in buffers.values())
                    and logged(f"port {mute.link}: opened") == rounds
                    and logged(f"port {stranger.link}: unknown device id") == rounds
                    and logged(": already connected on ") == rounds
                )

            def all_disconnected(rounds: int) -> bool:
                return (
                    not any(buffer.valid for buffer in buffers.values())
                    and logged(f"port {mute.link}: closed (") == rounds
                    and logged(f"port {stranger.link}: closed (") == rounds
                    and logged(": closed (") == 3 * rounds  # and the twin's port or its first device's
                )

            def one_round(number: int) -> None:
                hang_up = number % 2 == 1
                for device in everyone:
                    if hang_up or device.master < 0:
                        device.new_pty()
                    device.plug()
                rounds = number + 1
                pump_until(f"round {number} to connect", everyone, lambda: all_connected(rounds), log)
                for device in everyone:
                    if hang_up:
                        device.hang_up()
                    else:
                        device.unplug()
                pump_until(f"round {number} to disconnect", everyone, lambda: all_disconnected(rounds), log)

            started = time.monotonic()
            for number in range(BRIDGE_WARMUP_ROUNDS):
                one_round(number)
            before = usage(process.pid)
            for number in range(BRIDGE_WARMUP_ROUNDS, BRIDGE_WARMUP_ROUNDS + BRIDGE_ROUNDS):
                one_round(number)
                samples.append(usage(process.pid))
            after = usage(process.pid)
            elapsed = time.monotonic() - started
            assert process.poll() is None, log.read_text()
        process.send_signal(signal.SIGTERM)
        assert process.wait(WAIT) == 0, log.read_text()
        text = log.read_text()
        cycles = BRIDGE_ROUNDS * len(everyone)
        connects = text.count(": connected")
        report = (
            f"bridge reconnects ({elapsed:.1f} s, {cycles} measured cycles + "
            f"{BRIDGE_WARMUP_ROUNDS * len(everyone)} warm-up, {len(devices)} devices, a mute one, one of an "
            f"unknown type and a twin; {connects} connects logged): "
            f"before {before}; after {after}; fds after each round "
            f"{min(s.fds for s in samples)}..{max(s.fds for s in samples)}"
        )
        print(report)
        assert connects == (BRIDGE_ROUNDS + BRIDGE_WARMUP_ROUNDS) * len(devices), report
        assert text.count("port vanished") >= len(everyone), report
        assert text.count("read error") + text.count("end of stream") >= len(everyone), report
        assert after.fds <= before.fds + FD_TOLERANCE, f"fd leak in the bridge; {report}"
        assert max(s.fds for s in samples) <= before.fds + FD_TOLERANCE, f"bridge fds grew; {report}"
        assert after.threads == before.threads, f"thread leak in the bridge; {report}"
        assert after.maps <= before.maps + MAPS_TOLERANCE, f"mapping leak in the bridge; {report}"
        assert after.mapped_segments == before.mapped_segments == len(devices), report
        assert after.segments == before.segments, report
    finally:
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(WAIT)
        for device in everyone:
            device.close()
        device_types = BufferStore(CATALOG).device_types
        for uid in uids:  # the bridge made them; they outlive it by design
            with contextlib.suppress(DeviceBufferError):
                Buffer.unlink(BufferStore.segment_name(device_types[uid >> 72], uid))
