"""Device-side benchmark of ``runtime bridge``: throughput, CPU per frame, idle CPU, latency, floors.

The bridge is a black box: it runs as a subprocess (``python -m runtime.tools.bridge --port PATH ...
--catalog FILE --stats FILE``) in a namespace of its own (``$RUNTIME_BUFFER_NAMESPACE``, unique per
run of a bridge), serving fake Smart Devices played on pseudo-terminals: it opens each slave end, the
benchmark holds the master ends. The device type (a temporary catalog) has 16 float32 readable
parameters, all subscribed, ``sub_interval`` 1 ms (the smallest a SUB_REQ carries) and the usual
1 s heartbeat; every DEV_DATA flags all 16 parameters (a 71-byte frame with its delimiter).

The device side runs in a process of its own (the *fleet*: one process, every device of a run, one
epoll loop), apart from the measuring process, which mostly sleeps. Each device answers PING with a
SUB_RES naming its UID, SUB_REQ with a SUB_RES echoing the subscription, HB_REQ with HB_RES.

* **paced**: N = 1, 5, 20 devices, each writing one DEV_DATA per ``write()`` at 165 frames/s (a
  115200-baud link full of these frames), phases staggered.
* **flooded**: the same devices writing DEV_DATA back to back, 56 frames (about 4 KB) per
  non-blocking ``write()``, waiting for POLLOUT when the pty is full.
* Both on one bridge per N, after all N buffers are valid and all subscriptions answered; each window
  lasts about 3 s and runs from one rewrite of the ``--stats`` file to the first one 3 s later
  (the file is rewritten every second: its inode changes; it is polled every 2 ms). **Frames are
  counted from the stats file** (``messages_in`` summed over the devices: every decoded frame, so the
  ~1 HB_RES per device per second is included), read right after each of the two rewrites, together
  with the bridge's CPU time. Frames/s = frames / wall time between the two rewrites seen. CPU
  µs/frame = CPU time delta / frames, from ``/proc/<pid>/stat`` (utime+stime, in 10 ms clock ticks:
  coarse for the light loads) and, beside it, from ``/proc/<pid>/task/*/schedstat`` (nanoseconds).
  As a check, after both phases the devices stop, the bridge is stopped (it writes its stats at
  exit) and the total ``messages_in`` is compared with the frames the fleet wrote (all types):
  ``stats_check`` says whether they match.
* **idle**: a fresh bridge with 5 devices that only answer heartbeats, 5 s: CPU %.
* **latency** (device to buffer): one device played by the measuring process, which also opens the
  buffer (a :class:`~runtime.buffer.BufferStore` of the same catalog and namespace): a timestamp
  (``perf_counter_ns``) right before ``os.write`` of a DEV_DATA carrying new values, another once
  ``wait_update`` returned and the new value is visible; 300 samples 2-5 ms apart.
* **write_to_device**: ``bench/notify.py``'s measurement, reused.
* **floors**: (a) a bare Python reader process (epoll + ``os.read`` of 4096 bytes, counting
  delimiters, no decoding) reading the paced traffic of 20 ptys (same fleet), CPU µs per frame;
  (b) raw pty one-way latency: this process writes one frame into a pty master, a child process
  blocked in ``read()`` on the slave end timestamps its return; sampled alternately with the
  device-to-buffer latency, so that both see the same machine (shared, its load changing).

    python bench/bridge.py           # table
    python bench/bridge.py --json    # JSON

Everything is torn down at the end of each part (bridge SIGTERM then SIGKILL, fleet joined then
killed, ptys closed, the namespace's segments unlinked, temporary files removed); every wait has a
timeout. It takes about 50 s.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tty
from multiprocessing.connection import Connection
from typing import Any

import notify  # bench/notify.py: its write-to-device measurement and latency percentiles
from notify import percentiles

from runtime import catalog as catalog_module
from runtime.buffer import DeviceBuffer, DeviceBufferError, DeviceUID
from runtime.messaging import DELIM, FrameSplitter, Message, MessageError, MessageType
from runtime.store import BufferStore
from runtime.testing.pty import dev_data, sub_res

TYPE_NAME = "bench-bridge-sensor"
DEVICE_ID = 0xBE7C
PARAM_NAMES = [f"p{index}" for index in range(16)]
CATALOG_YAML = (
    f"{TYPE_NAME}:\n  device_id: {DEVICE_ID}\n  sub_interval: 0.001\n  heartbeat_interval: 1.0\n  params:\n"
    + "".join(f"    - {{name: {name}, type: float}}\n" for name in PARAM_NAMES)
)
"""One Smart Device type: 16 float32 parameters, readable and subscribed (the defaults)."""

DEVICE_COUNTS = (1, 5, 20, 100)
"""Fleet sizes: 20 is a robot's bus (the floor is measured there too); 100 shows how it scales."""
FLOOR_DEVICES = 20
LINK_RATE = 165.0
"""DEV_DATA frames per second per device when paced: 115200 baud / 10 bits / 71 bytes ≈ 162."""
WINDOW = 3.0
"""Seconds of each throughput window (about: it runs between two rewrites of the stats file)."""
IDLE_SECONDS = 5.0
IDLE_DEVICES = 5
LATENCY_SAMPLES = 300
FLOOD_FRAMES_PER_WRITE = 56
"""Frames in one write() when flooding (about 4 KB)."""
PACED_BACKLOG_LIMIT = 4096
"""Bytes a paced device may have queued (pty full) before it drops frames instead of bursting."""
FRAME_VARIANTS = 64
"""Distinct DEV_DATA frames each device cycles through (the values change from frame to frame)."""
CONNECT_TIMEOUT = 20.0
COMMAND_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
STATS_POLL = 0.002
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

_context = multiprocessing.get_context("fork")


# ---- small helpers ------------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> tuple[float, float | None]:
    """CPU seconds of a process: (utime+stime of /proc/<pid>/stat, sum of its threads' schedstat)."""
    with open(f"/proc/{pid}/stat", "rb") as file:
        fields = file.read().rpartition(b")")[2].split()
    ticks = int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)
    on_cpu_ns = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as file:
                on_cpu_ns += int(file.read().split()[0])
    except (OSError, ValueError, IndexError):
        return ticks / CLOCK_TICKS, None
    return ticks / CLOCK_TICKS, on_cpu_ns / 1e9


def _open_pty() -> tuple[int, int, str]:
    """A raw pseudo-terminal: (master, non-blocking; slave; slave path)."""
    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    return master, slave, os.ttyname(slave)


def _uid(index: int) -> int:
    return int(DeviceUID(DEVICE_ID, 1, (os.getpid() << 20) | index))


def _frames(buffer_type: type[DeviceBuffer], count: int, start: int = 1) -> list[bytes]:
    """``count`` encoded DEV_DATA frames (delimiter included), all 16 parameters flagged, distinct values."""
    return [
        dev_data(buffer_type, **{name: float(n * 16 + k) for k, name in enumerate(PARAM_NAMES)}).encode()
        + DELIM
        for n in range(start, start + count)
    ]


def _stop_process(process: subprocess.Popen[bytes]) -> int | None:
    """SIGTERM, then SIGKILL after :data:`STOP_TIMEOUT`; the exit code."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)
    return process.returncode


def _join(process: multiprocessing.process.BaseProcess) -> None:
    process.join(STOP_TIMEOUT)
    if process.is_alive():
        process.kill()
        process.join(STOP_TIMEOUT)


# ---- the device side: one process playing every device of a run --------------------------------


class _Device:
    """One fake device of the fleet: its pty master, what it has to send, what it has sent."""

    __slots__ = (
        "fd",
        "uid",
        "splitter",
        "out",
        "sent",
        "data",
        "next_due",
        "cursor",
        "subscribed",
        "writing",
    )

    def __init__(self, fd: int, uid: int) -> None:
        self.fd = fd
        self.uid = uid
        self.splitter = FrameSplitter()
        self.out = bytearray()
        self.sent = 0
        """Frames queued (and, once ``out`` is empty, written), every type."""
        self.data = 0
        self.next_due = 0.0
        self.cursor = 0
        self.subscribed = False
        self.writing = False
        """Whether EPOLLOUT is armed."""


def _fleet(
    conn: Connection, masters: list[int], uids: list[int], frames: list[bytes], handshake: bool
) -> None:
    """The device side of every device (runs in a child process).

    Commands from ``conn``: ``"paced"``, ``"flood"``, ``"quiet"`` (send data no more), ``"mute"``
    (send nothing more, not even answers), ``"status"``, ``"exit"``. Each is answered with the
    counters; ``"quiet"``, ``"mute"`` and ``"exit"`` once everything queued is written.
    """
    poller = select.epoll()
    devices = [_Device(fd, uid) for fd, uid in zip(masters, uids, strict=True)]
    by_fd = {device.fd: device for device in devices}
    for device in devices:
        poller.register(device.fd, select.EPOLLIN)
    control = conn.fileno()
    poller.register(control, select.EPOLLIN)
    mode = "quiet"
    period = 1 / LINK_RATE
    chunk = b"".join(frames[index % len(frames)] for index in range(FLOOD_FRAMES_PER_WRITE))
    counters = {"dropped": 0, "errors_from_bridge": 0, "bad_frames": 0}
    ack_when_flushed: str | None = None
    muted = False

    def report() -> dict[str, Any]:
        return {
            "sent": sum(device.sent for device in devices),
            "data": sum(device.data for device in devices),
            "unflushed_bytes": sum(len(device.out) for device in devices),
            "subscribed": sum(device.subscribed for device in devices),
            **counters,
        }

    def arm(device: _Device) -> None:
        want = mode == "flood" or bool(device.out)
        if want != device.writing:
            device.writing = want
            events = select.EPOLLIN | (select.EPOLLOUT if want else 0)
            with contextlib.suppress(OSError):
                poller.modify(device.fd, events)

    def flush(device: _Device) -> None:
        if device.out:
            try:
                written = os.write(device.fd, device.out)
            except (BlockingIOError, InterruptedError):
                written = 0
            except OSError:
                device.out.clear()
                written = 0
            del device.out[:written]
        arm(device)

    def send(device: _Device, message: Message) -> None:
        device.out += message.encode() + DELIM
        device.sent += 1
        flush(device)

    def receive(device: _Device) -> None:
        try:
            data = os.read(device.fd, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            with contextlib.suppress(OSError):
                poller.unregister(device.fd)
            return
        for frame in device.splitter.feed(data):
            try:
                message = Message.decode(frame)
            except MessageError:
                counters["bad_frames"] += 1
                continue
            kind = message.type
            if kind == MessageType.ERROR:
                counters["errors_from_bridge"] += 1
            elif muted:
                continue
            elif kind == MessageType.PING and handshake:
                send(device, sub_res(device.uid))
            elif kind == MessageType.SUB_REQ and handshake:
                params, interval = message.read_sub_req()
                send(device, sub_res(device.uid, params, interval))
                device.subscribed = True
            elif kind == MessageType.HB_REQ:
                send(device, Message.make_hb_res(message.read_hb_req()))

    try:
        while True:
            now = time.perf_counter()
            if mode == "paced":
                timeout = max(0.0, min(device.next_due for device in devices) - now)
            else:
                timeout = 0.1
            for fd, events in poller.poll(timeout):
                if fd == control:
                    command = conn.recv()
                    if command == "mute":
                        muted = True
                        command = "quiet"
                    if command in ("paced", "flood", "quiet"):
                        mode = command
                        start = time.perf_counter()
                        for index, device in enumerate(devices):
                            device.next_due = start + period * index / len(devices)
                            arm(device)
                    if command in ("quiet", "exit"):
                        ack_when_flushed = command
                    else:
                        conn.send(report())
                    continue
                device = by_fd[fd]
                if events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                    receive(device)
                if events & select.EPOLLOUT:
                    if mode == "flood" and not device.out:
                        device.out += chunk
                        device.sent += FLOOD_FRAMES_PER_WRITE
                        device.data += FLOOD_FRAMES_PER_WRITE
                    flush(device)
            if mode == "paced":
                now = time.perf_counter()
                for device in devices:
                    if now < device.next_due:
                        continue
                    if len(device.out) < PACED_BACKLOG_LIMIT:
                        device.out += frames[device.cursor]
                        device.cursor = (device.cursor + 1) % len(frames)
                        device.sent += 1
                        device.data += 1
                        flush(device)
                    else:
                        counters["dropped"] += 1
                    device.next_due += period
                    if device.next_due < now - period:  # fell behind: no bursts to catch up
                        device.next_due = now + period
            if ack_when_flushed is not None and not any(device.out for device in devices):
                conn.send(report())
                if ack_when_flushed == "exit":
                    return
                ack_when_flushed = None
    finally:
        poller.close()


# ---- a bridge with its devices --------------------------------------------------------------------


class _Rig:
    """N fake devices on ptys, their fleet process (or none), a bridge serving them in a private namespace.

    Args:
        count: Devices.
        fleet: Whether a fleet process plays them (False: the caller plays them on :attr:`masters`).
        bridge: Whether to start a bridge (False: the ptys are for another reader).
        handshake: Whether the fleet answers PING and SUB_REQ.
        stats: Whether the bridge writes its ``--stats`` file (every second: not for the idle figure).
    """

    _serial = 0

    def __init__(
        self,
        count: int,
        *,
        fleet: bool = True,
        bridge: bool = True,
        handshake: bool = True,
        stats: bool = True,
    ) -> None:
        _Rig._serial += 1
        self.with_stats = stats
        self.count = count
        self.with_fleet = fleet
        self.with_bridge = bridge
        self.handshake = handshake
        self.namespace = f"rt-bench-bridge-{os.getpid()}-{_Rig._serial}"
        self.uids = [_uid(index) for index in range(count)]
        self.workdir = ""
        self.catalog_path = ""
        self.stats_path = ""
        self.log_path = ""
        self.masters: list[int] = []
        self.slaves: list[int] = []
        self.paths: list[str] = []
        self.conn: Connection | None = None
        self.fleet: multiprocessing.process.BaseProcess | None = None
        self.bridge: subprocess.Popen[bytes] | None = None
        self.store: BufferStore | None = None
        self.buffer_type: type[DeviceBuffer] | None = None
        self.stats_check: dict[str, Any] = {}

    # -- life cycle --

    def __enter__(self) -> _Rig:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _start(self) -> None:
        self.workdir = tempfile.mkdtemp(prefix="rt-bench-bridge-")
        self.catalog_path = os.path.join(self.workdir, "catalog.yaml")
        self.stats_path = os.path.join(self.workdir, "stats.json")
        self.log_path = os.path.join(self.workdir, "bridge.log")
        with open(self.catalog_path, "w", encoding="utf-8") as file:
            file.write(CATALOG_YAML)
        catalog = catalog_module.load(self.catalog_path)
        buffer_type = catalog[TYPE_NAME]
        assert issubclass(buffer_type, DeviceBuffer)
        self.buffer_type = buffer_type
        for _ in range(self.count):
            master, slave, path = _open_pty()
            self.masters.append(master)
            self.slaves.append(slave)
            self.paths.append(path)
        if self.with_fleet:
            frames = _frames(buffer_type, FRAME_VARIANTS)
            parent, child = _context.Pipe()
            self.conn = parent
            self.fleet = _context.Process(
                target=_fleet, args=(child, self.masters, self.uids, frames, self.handshake), daemon=True
            )
            self.fleet.start()
            child.close()
        if self.with_bridge:
            env = {**os.environ, "RUNTIME_BUFFER_NAMESPACE": self.namespace}
            ports = [arg for path in self.paths for arg in ("--port", path)]
            with open(self.log_path, "wb") as log:
                self.bridge = subprocess.Popen(
                    [sys.executable, "-m", "runtime.tools.bridge", *ports, "--catalog", self.catalog_path]
                    + (["--stats", self.stats_path] if self.with_stats else []),
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                )
            with BufferStore.use_namespace(self.namespace):
                self.store = BufferStore(catalog)

    def stop_bridge(self) -> None:
        """Stop the bridge (SIGTERM, SIGKILL after a timeout); it writes its stats one last time."""
        if self.bridge is not None:
            _stop_process(self.bridge)

    def close(self) -> None:
        """Tear everything down; safe to call twice, and after a failed start."""
        with contextlib.suppress(Exception):
            self.stop_bridge()
        if self.fleet is not None:
            with contextlib.suppress(Exception):
                if self.fleet.is_alive() and self.conn is not None:
                    self.conn.send("exit")
                    if self.conn.poll(2.0):
                        self.conn.recv()
            _join(self.fleet)
            self.fleet = None
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        for fd in self.masters + self.slaves:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.masters, self.slaves = [], []
        if self.store is not None:
            with BufferStore.use_namespace(self.namespace):
                self.store.close()
                self.store.unlink_all()
            self.store = None
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = ""

    def log_tail(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as file:
                return "".join(file.readlines()[-10:])
        except OSError:
            return ""

    # -- the fleet --

    def command(self, command: str) -> dict[str, Any]:
        """Send the fleet a command; its answer (the counters)."""
        assert self.conn is not None
        self.conn.send(command)
        if not self.conn.poll(COMMAND_TIMEOUT):
            raise RuntimeError(f"the device process did not answer {command!r}")
        answer: dict[str, Any] = self.conn.recv()
        return answer

    # -- the bridge --

    def buffers_valid(self) -> bool:
        """Whether the bridge serves every device's buffer."""
        assert self.store is not None
        with BufferStore.use_namespace(self.namespace):
            for uid in self.uids:
                try:
                    if not self.store.get_or_open(uid, create=False).valid:
                        return False
                except DeviceBufferError:
                    return False
        return True

    def wait_connected(self) -> None:
        """Until every buffer is valid and (with a fleet) every subscription was answered."""
        deadline = time.monotonic() + CONNECT_TIMEOUT
        while True:
            if self.bridge is not None and self.bridge.poll() is not None:
                raise RuntimeError(f"the bridge exited ({self.bridge.returncode}):\n{self.log_tail()}")
            if self.buffers_valid() and (
                self.conn is None or self.command("status")["subscribed"] == self.count
            ):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the bridge did not connect {self.count} devices:\n{self.log_tail()}")
            time.sleep(0.02)

    def stats_signature(self) -> tuple[int, int] | None:
        try:
            info = os.stat(self.stats_path)
        except OSError:
            return None
        return info.st_ino, info.st_mtime_ns

    def read_stats_total(self) -> int:
        """``messages_in`` summed over this rig's devices, from the stats file."""
        wanted = {f"{uid:#x}" for uid in self.uids}
        for _ in range(50):
            try:
                with open(self.stats_path, encoding="utf-8") as file:
                    document = json.load(file)
                break
            except (OSError, ValueError):
                time.sleep(0.002)
        else:
            raise RuntimeError("cannot read the bridge's stats file")
        return sum(device["messages_in"] for device in document["devices"] if device["uid"] in wanted)

    def next_rewrite(self, not_before: float) -> dict[str, Any]:
        """At the first rewrite of the stats file after ``not_before`` (perf_counter): time, CPU, frames."""
        assert self.bridge is not None
        delay = not_before - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        seen = self.stats_signature()
        deadline = time.perf_counter() + 5.0
        while True:
            signature = self.stats_signature()
            if signature is not None and signature != seen:
                stamp = time.perf_counter()
                cpu_stat, cpu_sched = _cpu_seconds(self.bridge.pid)
                return {"t": stamp, "cpu": cpu_stat, "sched": cpu_sched, "frames": self.read_stats_total()}
            if time.perf_counter() > deadline or self.bridge.poll() is not None:
                raise RuntimeError(f"the bridge stopped rewriting its stats file:\n{self.log_tail()}")
            time.sleep(STATS_POLL)

    def window(self, mode: str, seconds: float = WINDOW) -> dict[str, Any]:
        """Put the fleet in ``mode``; measure one window between two rewrites of the stats file."""
        self.command(mode)
        start = self.next_rewrite(time.perf_counter() + 0.3)  # past the switch: steady state
        end = self.next_rewrite(start["t"] + seconds - 0.2)
        return _window_figures(start, end)

    def finish(self) -> None:
        """Stop the devices, let the bridge drain its ports, stop it and compare its counts with the sent.

        The devices fall silent (no data, no answers) first, so that nothing they write after the count
        goes unread by the bridge; 0.3 s without answers is far from the bridge's silence limit (3 s).
        """
        sent = self.command("mute")
        time.sleep(0.3)
        self.stop_bridge()
        received = self.read_stats_total()
        self.stats_check = {
            "frames_sent": sent["sent"],
            "messages_in": received,
            "match": received == sent["sent"],
            "paced_frames_dropped": sent["dropped"],
            "errors_from_bridge": sent["errors_from_bridge"],
        }


def _window_figures(start: dict[str, Any], end: dict[str, Any]) -> dict[str, Any]:
    wall = end["t"] - start["t"]
    frames = end["frames"] - start["frames"]
    cpu = end["cpu"] - start["cpu"]
    sched = None if start["sched"] is None or end["sched"] is None else end["sched"] - start["sched"]
    return {
        "seconds": wall,
        "frames": frames,
        "frames_per_s": frames / wall,
        "cpu_seconds": cpu,
        "cpu_us_per_frame": cpu * 1e6 / frames if frames else float("nan"),
        "cpu_us_per_frame_schedstat": sched * 1e6 / frames if frames and sched is not None else None,
        "cpu_percent": 100 * cpu / wall,
    }


# ---- the scenarios ------------------------------------------------------------------------------


def throughput(count: int) -> dict[str, Any]:
    """Paced, then flooded, ``count`` devices on one bridge."""
    with _Rig(count) as rig:
        rig.wait_connected()
        paced = rig.window("paced")
        flooded = rig.window("flood")
        rig.finish()
        return {"devices": count, "paced": paced, "flooded": flooded, "stats_check": rig.stats_check}


def idle(count: int = IDLE_DEVICES, seconds: float = IDLE_SECONDS) -> dict[str, Any]:
    """Bridge CPU with ``count`` connected devices that only answer heartbeats (no ``--stats`` file)."""
    with _Rig(count, stats=False) as rig:
        rig.wait_connected()
        assert rig.bridge is not None
        time.sleep(0.5)
        started = time.perf_counter()
        before = _cpu_seconds(rig.bridge.pid)
        time.sleep(seconds)
        after = _cpu_seconds(rig.bridge.pid)
        wall = time.perf_counter() - started
    sched = None if before[1] is None or after[1] is None else after[1] - before[1]
    return {
        "devices": count,
        "seconds": wall,
        "cpu_seconds": after[0] - before[0],
        "cpu_percent": 100 * (after[0] - before[0]) / wall,
        "cpu_percent_schedstat": None if sched is None else 100 * sched / wall,
    }


def _answer(master: int, splitter: FrameSplitter, uid: int, timeout: float) -> None:
    """Play the device side on one pty for whatever the bridge sent (waiting up to ``timeout``)."""
    ready, _, _ = select.select([master], [], [], timeout)
    if not ready:
        return
    try:
        data = os.read(master, 4096)
    except (BlockingIOError, InterruptedError):
        return
    replies = []
    for frame in splitter.feed(data):
        try:
            message = Message.decode(frame)
        except MessageError:
            continue
        if message.type == MessageType.PING:
            replies.append(sub_res(uid))
        elif message.type == MessageType.SUB_REQ:
            params, interval = message.read_sub_req()
            replies.append(sub_res(uid, params, interval))
        elif message.type == MessageType.HB_REQ:
            replies.append(Message.make_hb_res(message.read_hb_req()))
    if replies:
        os.write(master, b"".join(reply.encode() + DELIM for reply in replies))


def device_to_buffer_latency(samples: int = LATENCY_SAMPLES) -> dict[str, Any]:
    """os.write() of a DEV_DATA on the device's pty to wait_update() returning with the value visible,
    and, interleaved sample by sample (this machine is shared: its load changes by the second), the
    floor: a raw pty's one-way latency (:class:`_RawPty`). Returns the bridge's figures, with the
    floor's under ``"raw_pty"``."""
    with _Rig(1, fleet=False) as rig, _RawPty() as raw:
        master, uid = rig.masters[0], rig.uids[0]
        assert rig.store is not None and rig.buffer_type is not None
        splitter = FrameSplitter()
        deadline = time.monotonic() + CONNECT_TIMEOUT
        while not rig.buffers_valid():
            _answer(master, splitter, uid, 0.02)
            if time.monotonic() > deadline:
                raise RuntimeError(f"the bridge did not connect the device:\n{rig.log_tail()}")
        for _ in range(10):  # the SUB_REQ, right after the buffer turned valid
            _answer(master, splitter, uid, 0.01)
        with BufferStore.use_namespace(rig.namespace):
            buffer = rig.store.get_or_open(uid, create=False)
        frames = _frames(rig.buffer_type, samples)
        latencies: list[int] = []
        raw_latencies: list[int] = []
        lost = 0
        for index, frame in enumerate(frames):
            if (sample := raw.sample()) is not None:
                raw_latencies.append(sample)
            time.sleep(0.002 + (index % 4) * 0.001)
            _answer(master, splitter, uid, 0.0)
            buffer.wait_update(0)  # forget any earlier change
            expected = float((index + 1) * 16)  # p0 of frame ``index`` (see _frames)
            started = time.perf_counter_ns()
            os.write(master, frame)
            give_up = started + 1_000_000_000
            while True:
                buffer.wait_update(0.5)
                if buffer.get("p0") == expected:
                    latencies.append(time.perf_counter_ns() - started)
                    break
                if time.perf_counter_ns() > give_up:
                    lost += 1
                    break
            time.sleep(0.002 + (index % 4) * 0.001)
        buffer.close()
    return {**percentiles(latencies), "lost": lost, "raw_pty": percentiles(raw_latencies)}


def _raw_reader(slave: int, master: int, results: int, samples: int) -> None:
    """Child of :class:`_RawPty`: block in read() on the slave; timestamp each whole frame."""
    os.close(master)
    os.set_blocking(slave, True)
    pending = b""
    done = 0
    while done < samples:
        try:
            data = os.read(slave, 4096)
        except OSError:
            return
        stamp = time.perf_counter_ns()
        if not data:
            return
        pending += data
        while DELIM in pending:
            _, pending = pending.split(DELIM, 1)
            os.write(results, stamp.to_bytes(8, "little"))
            done += 1


class _RawPty:
    """The latency floor: a frame written into a pty master, read by a child blocked on the slave end."""

    FRAME = b"\x02" * 70 + DELIM  # a frame's size

    def __enter__(self) -> _RawPty:
        self.master, self.slave, _ = _open_pty()
        self.read_end, write_end = os.pipe()
        self.reader = _context.Process(
            target=_raw_reader, args=(self.slave, self.master, write_end, 1 << 30), daemon=True
        )
        self.reader.start()
        os.close(write_end)
        time.sleep(0.1)
        return self

    def sample(self) -> int | None:
        """One write-to-read latency in ns (None: the reader did not answer within a second)."""
        started = time.perf_counter_ns()
        os.write(self.master, self.FRAME)
        ready, _, _ = select.select([self.read_end], [], [], 1.0)
        stamp = os.read(self.read_end, 8) if ready else b""
        return int.from_bytes(stamp, "little") - started if len(stamp) == 8 else None

    def __exit__(self, *exc_info: object) -> None:
        for fd in (self.master, self.slave, self.read_end):
            with contextlib.suppress(OSError):
                os.close(fd)
        _join(self.reader)


def _bare_reader(paths: list[str], counter: Any, stop: int) -> None:
    """Child of :func:`bare_reader_floor`: epoll + os.read on every slave, counting delimiters."""
    poller = select.epoll()
    fds = [os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK) for path in paths]
    for fd in fds:
        poller.register(fd, select.EPOLLIN)
    poller.register(stop, select.EPOLLIN)
    read = os.read
    while True:
        for fd, _ in poller.poll(1.0):
            if fd == stop:
                return
            try:
                data = read(fd, 4096)
            except BlockingIOError:
                continue
            counter.value += data.count(0)


def bare_reader_floor(count: int = FLOOR_DEVICES, seconds: float = WINDOW) -> dict[str, Any]:
    """CPU per frame of a bare Python epoll + os.read reader on the paced traffic of ``count`` ptys."""
    with _Rig(count, bridge=False, handshake=False) as rig:
        counter = _context.RawValue("q", 0)
        stop_read, stop_write = os.pipe()
        reader = _context.Process(target=_bare_reader, args=(rig.paths, counter, stop_read), daemon=True)
        try:
            reader.start()
            assert reader.pid is not None
            time.sleep(0.2)
            rig.command("paced")
            time.sleep(0.3)
            started = {"t": time.perf_counter(), "frames": counter.value}
            started["cpu"], started["sched"] = _cpu_seconds(reader.pid)
            time.sleep(seconds)
            ended = {"t": time.perf_counter(), "frames": counter.value}
            ended["cpu"], ended["sched"] = _cpu_seconds(reader.pid)
            sent = rig.command("quiet")
            time.sleep(0.2)
            figures = _window_figures(started, ended)
            figures["stats_check"] = {
                "frames_sent": sent["sent"],
                "frames_read": counter.value,
                "match": counter.value == sent["sent"],
            }
        finally:
            os.write(stop_write, b"x")
            _join(reader)
            os.close(stop_read)
            os.close(stop_write)
    return {"devices": count, **figures}


def write_to_device() -> dict[str, Any]:
    """``bench/notify.py``'s write() to DEV_WRITE on the device's pty, through a real bridge."""
    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:
        sys.path.insert(0, here)
    result: dict[str, Any] = notify.write_to_device()
    return result


def run_all() -> dict[str, Any]:
    """Every bridge benchmark (about 50 s)."""
    import runtime

    results: dict[str, Any] = {"runtime": os.path.dirname(runtime.__file__)}  # the bridge's too (same env)
    results["throughput"] = [throughput(count) for count in DEVICE_COUNTS]
    results["idle"] = idle()
    results["device_to_buffer"] = device_to_buffer_latency()
    results["write_to_device"] = write_to_device()
    results["floor_bare_reader"] = bare_reader_floor()
    results["floor_raw_pty"] = results["device_to_buffer"].pop("raw_pty")  # measured interleaved
    busiest = next(e for e in results["throughput"] if e["devices"] == FLOOR_DEVICES)["paced"]
    floor = results["floor_bare_reader"]
    results["ratios"] = {
        "paced_cpu_per_frame_vs_bare_reader": busiest["cpu_us_per_frame"] / floor["cpu_us_per_frame"],
        "paced_cpu_per_frame_vs_bare_reader_schedstat": (
            busiest["cpu_us_per_frame_schedstat"] / floor["cpu_us_per_frame_schedstat"]
            if busiest["cpu_us_per_frame_schedstat"] and floor["cpu_us_per_frame_schedstat"]
            else None
        ),
        "latency_p50_vs_raw_pty": results["device_to_buffer"]["p50_us"] / results["floor_raw_pty"]["p50_us"],
    }
    return results


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def describe(results: dict[str, Any]) -> str:
    """The figures as a table and text lines."""
    lines = [
        "runtime bridge, device side: 16 x float32 per DEV_DATA; CPU us/frame from /proc/PID/stat "
        f"(10 ms ticks) and schedstat (ns); runtime from {results['runtime']}",
        f"{'traffic':<26}{'devices':>8}{'frames/s':>11}{'CPU %':>8}{'us/frame':>10}{'(sched)':>9}  stats",
    ]
    for entry in results["throughput"]:
        check = entry["stats_check"]
        verdict = "match" if check["match"] else f"{check['messages_in']} in / {check['frames_sent']} sent"
        for mode, label in (("paced", f"paced {LINK_RATE:g}/s per device"), ("flooded", "flooded")):
            figures = entry[mode]
            lines.append(
                f"{label:<26}{entry['devices']:>8}{figures['frames_per_s']:>11.0f}{figures['cpu_percent']:>8.1f}"
                f"{figures['cpu_us_per_frame']:>10.1f}{_us(figures['cpu_us_per_frame_schedstat']):>9}"
                f"  {verdict}"
            )
    floor = results["floor_bare_reader"]
    lines.append(
        f"{'bare reader (floor)':<26}{floor['devices']:>8}{floor['frames_per_s']:>11.0f}"
        f"{floor['cpu_percent']:>8.1f}{floor['cpu_us_per_frame']:>10.1f}"
        f"{_us(floor['cpu_us_per_frame_schedstat']):>9}"
        f"  {'match' if floor['stats_check']['match'] else 'MISMATCH'}"
    )
    idle_figures = results["idle"]
    sched_idle = idle_figures["cpu_percent_schedstat"]
    lines.append(
        f"\nidle, {idle_figures['devices']} devices answering heartbeats, {idle_figures['seconds']:.1f} s: "
        f"bridge CPU {idle_figures['cpu_percent']:.2f} % (schedstat "
        f"{'-' if sched_idle is None else f'{sched_idle:.2f}'} %)"
    )
    latency, raw = results["device_to_buffer"], results["floor_raw_pty"]
    lines.append(
        f"device write() to buffer wait_update() ({latency['samples']} samples, {latency['lost']} lost): "
        f"p50 {latency['p50_us']:.1f} us, p99 {latency['p99_us']:.1f} us"
    )
    lines.append(
        f"raw pty one way, write() to read() in another process ({raw['samples']} samples, interleaved): "
        f"p50 {raw['p50_us']:.1f} us, p99 {raw['p99_us']:.1f} us"
    )
    write = results["write_to_device"]
    lines.append(
        f"write() to DEV_WRITE on the pty ({write['samples']} samples, bench/notify.py): "
        f"p50 {write['p50_us'] / 1e3:.2f} ms, p99 {write['p99_us'] / 1e3:.2f} ms"
    )
    ratios = results["ratios"]
    sched_ratio = ratios["paced_cpu_per_frame_vs_bare_reader_schedstat"]
    lines.append(
        f"ratios: bridge paced CPU/frame (N={FLOOR_DEVICES}) vs bare reader "
        f"{ratios['paced_cpu_per_frame_vs_bare_reader']:.1f}x (schedstat "
        f"{'-' if sched_ratio is None else f'{sched_ratio:.1f}'}x); "
        f"latency p50 vs raw pty p50 {ratios['latency_p50_vs_raw_pty']:.1f}x"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python bench/bridge.py [--json]``."""
    args = sys.argv[1:] if argv is None else argv
    figures = run_all()
    print(json.dumps(figures, indent=2) if "--json" in args else describe(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
