"""The engine of ``runtime demo``: the whole machine working, on a computer with no hardware.

A :class:`Demo` starts, as separate processes, exactly what runs on a robot:

1. ``runtime emulate``: several emulated Smart Devices (:class:`DemoDevice`)
   of different catalog types, each speaking the wire protocol on its own
   pseudo-terminal;
2. ``runtime bridge``: serves those terminals into buffers in shared memory
   and writes its statistics to a file;
3. ``runtime run`` (:mod:`runtime.runner`): student code written against the
   student API, started in autonomous mode. The demo's own file
   (:data:`DEMO_STUDENT_FILE`, ``runtime/testing/_demo_robot.py``, part of the
   package so that the demo runs from an installed wheel) reads the sensors
   (line follower, limit switch, battery) and drives the motors and servos,
   which the bridge sends to the devices. Another student file finds the
   devices by the names of :func:`robot_names` (``yogi_bear``,
   ``limit_switch``...); with ``student=None`` none runs.

Everything lives in a private namespace, passed to every child, and a
temporary directory. :meth:`Demo.finish` stops the children in order (runner,
bridge, emulator: killing those that do not stop in time), unlinks every
segment of the namespace and removes the directory; :class:`SignalGuard` turns
Ctrl-C, SIGTERM and SIGHUP into that orderly stop. Killed outright (SIGKILL),
the demo cannot clean up: its children then stop by themselves (they get
SIGTERM when it dies, see :func:`runtime.commands.die_with_parent`), and its
cleaner (:func:`clean_after_demo`, a small process started first, that reads
a pipe only the demo holds) sees the pipe close, waits until no process of the
namespace is left, then unlinks the namespace's segments and removes the
directory.

The children are started with the testing kit's helpers (those of
:func:`~runtime.testing.emulated_robot`): :func:`~runtime.testing.robot.spawn`,
:func:`~runtime.testing.robot.served`, :func:`~runtime.testing.robot.stop_process`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import FrameType
from typing import Any

from ..buffer import NAMESPACE_ENV, Buffer
from ..exception import RuntimeBaseException
from ..store import BufferStore
from ..values import jsonable
from .robot import read_lines, served, spawn, stop_process
from .waiting import wait_for

__all__ = [
    "DEFAULT_DEVICES",
    "DEMO_STUDENT_FILE",
    "Demo",
    "DemoDevice",
    "DemoError",
    "Interrupted",
    "SignalGuard",
    "clean_after_demo",
    "foxglove_server",
    "robot_names",
    "runtime_program",
]

DEFAULT_DEVICES = ("limit-switch", "line-follower", "battery", "servo-motor", "yogi-bear")
"""Device types the demo emulates when none are named: sensors and actuators."""
DEMO_YEAR = 0x0A
"""The season byte of the demo's UIDs."""
START_TIMEOUT = 20.0
"""Seconds the emulator has to announce its devices, and the bridge to serve them."""
STOP_TIMEOUTS = {"runner": 3.0, "bridge": 6.0, "emulator": 3.0}
"""Seconds each child has to exit after SIGTERM before it is killed."""
CLEANER_WAIT = 30.0
"""Seconds the cleaner waits for the processes of a killed demo's namespace to end before unlinking."""
LOG_TAIL = 15
"""Lines of a failed child's log shown."""
DEMO_STUDENT_FILE = os.path.join(os.path.dirname(__file__), "_demo_robot.py")
"""The student file the demo runs unless another is named, shipped in the package."""


class DemoError(RuntimeBaseException):
    """The demo cannot go on (a child failed); the message says which and why, ``child`` names it."""


class Interrupted(BaseException):
    """SIGTERM or SIGHUP arrived (see :class:`SignalGuard`): stop like on Ctrl-C."""


@dataclasses.dataclass
class DemoDevice:
    """One emulated device: its type, UID and (once the emulator said) its terminal."""

    type_name: str
    uid: int
    port: str | None = None

    @property
    def spec(self) -> str:
        """The ``TYPE:UID`` argument for ``runtime emulate`` and the student code."""
        return f"{self.type_name}:{self.uid:#x}"


def robot_names(devices: Sequence[DemoDevice]) -> dict[str, int]:
    """The names student code knows the demo's devices by: the type with ``_`` for ``-``, numbered after one.

    >>> robot_names([DemoDevice("yogi-bear", 1), DemoDevice("yogi-bear", 2), DemoDevice("battery", 3)])
    {'yogi_bear': 1, 'yogi_bear_2': 2, 'battery': 3}
    """
    names: dict[str, int] = {}
    for device in devices:
        base = device.type_name.replace("-", "_")
        name, number = base, 1
        while name in names:
            number += 1
            name = f"{base}_{number}"
        names[name] = device.uid
    return names


class SignalGuard:
    """Turn SIGINT, SIGTERM and SIGHUP into an orderly stop, exactly once.

    The first signal raises (``KeyboardInterrupt`` for SIGINT, else
    :class:`Interrupted`) so that the demo's ``finally`` stops the children;
    from then on (or once :attr:`stopping` is set) signals are ignored, so a
    second Ctrl-C cannot cut the cleanup short. Inside :meth:`deferred` (while
    a child is being spawned, so that no child can escape being recorded) a
    signal waits until the block ends.
    """

    WATCHED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.stopping = False
        self.deferring = False
        self.pending: int | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping:
            return
        if self.deferring:
            self.pending = signum
            return
        self._raise(signum)

    def _raise(self, signum: int) -> None:
        self.stopping = True
        raise KeyboardInterrupt if signum == signal.SIGINT else Interrupted(signum)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Hold signals back while inside; act on one that arrived when leaving."""
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False
        if self.pending is not None and not self.stopping:
            self._raise(self.pending)

    def __enter__(self) -> SignalGuard:
        if threading.current_thread() is threading.main_thread():
            for signum in self.WATCHED:
                self._previous[signum] = signal.signal(signum, self._handler)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for number, old in self._previous.items():
            signal.signal(number, old)
        self._previous.clear()


class Demo:
    """Start the children, watch them work, stop them and clean up after them.

    Args:
        catalog: The device catalog.
        devices: The devices to emulate (their ``port`` is set by :meth:`start`).
        namespace: The buffer namespace of every child; all of its segments are unlinked at the end.
        student: The student file ``runtime run`` runs (None: no student code).
        catalog_file: The catalog file the children load (None: the packaged one).
        options: ``runtime``'s options for every child, before its command (``--log-level``...).
        guard: The :class:`SignalGuard` in effect (one is made if not given).
        on_kill: Called with a child's name when it did not stop in time and is killed.
    """

    def __init__(
        self,
        catalog: Mapping[str, type[Buffer]],
        devices: Sequence[DemoDevice],
        namespace: str,
        *,
        student: str | None = DEMO_STUDENT_FILE,
        catalog_file: str | None = None,
        options: Sequence[str] = (),
        guard: SignalGuard | None = None,
        on_kill: Callable[[str], None] | None = None,
    ) -> None:
        self.catalog = catalog
        self.devices = list(devices)
        self.namespace = namespace
        self.student = student
        self.catalog_file = catalog_file
        self.options = list(options)
        self.guard = guard or SignalGuard()
        self.on_kill = on_kill
        self.directory = tempfile.mkdtemp(prefix=f"runtime-demo-{os.getpid()}-")
        self.stats_path = os.path.join(self.directory, "bridge-stats.json")
        self.student_path = os.path.join(self.directory, "runner.json")
        self.robot_path = os.path.join(self.directory, "robot.yaml")
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.cleaner: subprocess.Popen[bytes] | None = None
        self.env = dict(os.environ, **{NAMESPACE_ENV: namespace, "PYTHONUNBUFFERED": "1"})
        self.started = time.monotonic()

    def _start_cleaner(self) -> None:
        """Start the process that cleans up after a demo killed outright (:func:`clean_after_demo`).

        It reads its stdin, a pipe whose other end only this process holds
        (the other children do not inherit it): the pipe closes when the demo
        ends, however it ends. It runs in a session of its own (Ctrl-C on the
        terminal does not reach it) and outside the namespace's environment.
        """
        code = (
            "import sys; from runtime.testing.demo import clean_after_demo; clean_after_demo(*sys.argv[1:])"
        )
        env = {key: value for key, value in os.environ.items() if key != NAMESPACE_ENV}
        with self.guard.deferred():
            self.cleaner = subprocess.Popen(
                [sys.executable, "-c", code, self.namespace, self.directory],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )

    def _release_cleaner(self) -> None:
        """Tell the cleaner the demo cleaned up after itself, and wait for it to exit."""
        cleaner, self.cleaner = self.cleaner, None
        if cleaner is None or cleaner.stdin is None:
            return
        with contextlib.suppress(OSError):
            cleaner.stdin.write(b"done")
        with contextlib.suppress(OSError):
            cleaner.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            cleaner.wait(5.0)  # it exits on reading "done"
        stop_process(cleaner, timeout=1.0)

    # -- children --

    def _spawn(self, name: str, command: list[str], *, stdout_pipe: bool = False) -> subprocess.Popen[bytes]:
        log = os.path.join(self.directory, f"{name}.log")
        with self.guard.deferred():  # a signal now would leave a child we do not know about
            process = spawn(command, log, self.env, stdout="pipe" if stdout_pipe else "log")
            self.processes[name] = process
        return process

    def _runtime(self, *arguments: str) -> list[str]:
        command = [sys.executable, "-m", "runtime", *self.options, *arguments]
        if self.catalog_file:
            command += ["--catalog", self.catalog_file]
        return command

    def log_tail(self, name: str) -> str:
        """The last lines a child wrote to its log (for error messages)."""
        try:
            with open(os.path.join(self.directory, f"{name}.log")) as file:
                lines = file.read().splitlines()[-LOG_TAIL:]
        except OSError:
            return ""
        return "\n".join(f"  | {line}" for line in lines)

    def _failure(self, name: str, what: str) -> DemoError:
        tail = self.log_tail(name)
        return DemoError(f"the {name} {what}" + (f"; its last output:\n{tail}" if tail else ""), child=name)

    def start(self) -> None:
        """Start the emulator, learn its terminals, then the bridge and, once it serves them, the runner.

        Raises:
            DemoError: A child failed or did not start in time.
        """
        self._start_cleaner()
        links = os.path.join(self.directory, "devices")
        emulator = self._spawn(
            "emulator",
            self._runtime("emulate", *(device.spec for device in self.devices), "--link", links),
            stdout_pipe=True,
        )
        assert emulator.stdout is not None
        by_uid = {device.uid: device for device in self.devices}
        for line in read_lines(emulator.stdout, len(self.devices), time.monotonic() + START_TIMEOUT):
            words = line.split()  # TYPE UID PTY LINK
            with contextlib.suppress(IndexError, KeyError, ValueError):
                device = by_uid[int(words[1], 16)]
                device.port = words[3] if len(words) > 3 else words[2]
        if any(device.port is None for device in self.devices):
            with contextlib.suppress(subprocess.TimeoutExpired):
                emulator.wait(1.0)  # it may be exiting: say so rather than "did not announce"
            status = emulator.poll()
            if status is not None:
                raise self._failure("emulator", f"exited at start (status {status})")
            raise self._failure("emulator", f"did not announce its devices within {START_TIMEOUT:g} s")
        ports = [argument for device in self.devices for argument in ("--port", str(device.port))]
        self._spawn("bridge", self._runtime("bridge", *ports, "--stats", self.stats_path))
        if self.student is None:
            return
        self._wait_served()  # student code that reads a device at once finds it
        with open(self.robot_path, "w") as file:
            file.write("".join(f"{name}: {uid:#x}\n" for name, uid in robot_names(self.devices).items()))
        options = ["--devices", self.robot_path, "--mode", "auto", "--stats", self.student_path]
        self._spawn("runner", self._runtime("run", os.path.abspath(self.student), *options))

    def _wait_served(self) -> None:
        """Wait until the bridge serves every device (valid, with data), or raise :class:`DemoError`."""
        deadline = time.monotonic() + START_TIMEOUT
        with BufferStore.use_namespace(self.namespace), BufferStore(self.catalog) as store:
            for device in self.devices:
                try:
                    wait_for(
                        functools.partial(served, store, device.uid),
                        deadline - time.monotonic(),
                        every=0.05,
                        check=self.check_children,
                    )
                except TimeoutError:
                    raise self._failure(
                        "bridge", f"did not serve the devices within {START_TIMEOUT:g} s"
                    ) from None

    def check_children(self) -> None:
        """Raise :class:`DemoError` when a child exited while the demo runs."""
        for name, process in self.processes.items():
            status = process.poll()
            if status is not None:
                raise self._failure(name, f"exited unexpectedly (status {status})")

    def watch(self, duration: float | None, interval: float, tick: Callable[[], None] | None = None) -> None:
        """Check the children every ``interval`` s (calling ``tick`` after each wait) for ``duration`` s.

        None: until interrupted (see :class:`SignalGuard`).

        Raises:
            DemoError: A child exited.
        """
        deadline = self.started + duration if duration else math.inf
        while time.monotonic() < deadline:
            self.check_children()
            time.sleep(max(0.0, min(interval, deadline - time.monotonic())))
            if tick is not None:
                tick()

    def stop(self) -> dict[str, int | None]:
        """Stop the children in order, killing those that do not stop in time; return their statuses."""
        statuses: dict[str, int | None] = {}
        for name in ("runner", "bridge", "emulator"):
            process = self.processes.get(name)
            if process is None:
                continue
            on_kill = functools.partial(self.on_kill, name) if self.on_kill is not None else None
            statuses[name] = stop_process(process, timeout=STOP_TIMEOUTS[name], on_kill=on_kill)
            if process.stdout is not None:
                process.stdout.close()
        return statuses

    def cleanup(self) -> list[str]:
        """Unlink every segment of the demo's namespace and remove its directory; return the segments."""
        with BufferStore.use_namespace(self.namespace):
            removed = BufferStore({}).unlink_all()
        shutil.rmtree(self.directory, ignore_errors=True)
        self._release_cleaner()
        return removed

    def finish(self) -> tuple[dict[str, Any], list[str]]:
        """Stop (no signal can interrupt it now) and clean up; the :meth:`summary`, the segments removed."""
        self.guard.stopping = True
        try:
            summary = self.summary(self.stop())
        finally:
            removed = self.cleanup()
        return summary, removed

    # -- what it did --

    def read_stats(self) -> dict[str, Any] | None:
        """The bridge's latest statistics, or None before it wrote any."""
        try:
            with open(self.stats_path) as file:
                data = json.load(file)
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def stats_by_uid(self) -> dict[int, dict[str, Any]]:
        """The bridge's latest statistics of each device, by UID (empty before it wrote any)."""
        result: dict[int, dict[str, Any]] = {}
        for entry in (self.read_stats() or {}).get("devices", []):
            with contextlib.suppress(KeyError, TypeError, ValueError):
                uid = entry["uid"]
                result[int(uid, 16) if isinstance(uid, str) else int(uid)] = entry
        return result

    def summary(self, statuses: dict[str, int | None]) -> dict[str, Any]:
        """The end-of-run report: per device from the bridge's statistics, and the student's counters."""
        stats = self.stats_by_uid()
        devices = []
        for device in self.devices:
            entry = stats.get(device.uid)
            devices.append(
                {
                    "type": device.type_name,
                    "uid": f"{device.uid:#x}",
                    "port": device.port,
                    "seen": entry is not None,
                    "connected": bool(entry and entry.get("connected")),
                    "messages_in": int(entry.get("messages_in", 0)) if entry else 0,
                    "messages_out": int(entry.get("messages_out", 0)) if entry else 0,
                    "errors": int(entry.get("errors", 0)) if entry else 0,
                    "last_values": jsonable(entry.get("last_values", {})) if entry else {},
                }
            )
        student: Any = None
        with contextlib.suppress(OSError, ValueError):
            with open(self.student_path) as file:
                student = json.load(file)
        return {
            "namespace": self.namespace,
            "seconds": round(time.monotonic() - self.started, 1),
            "devices": devices,
            "student_code": student,
            "exit_status": statuses,
        }


def namespace_processes(namespace: str) -> list[int]:
    """The processes whose environment puts them in ``namespace`` (Linux's ``/proc``; elsewhere none)."""
    marker = f"{NAMESPACE_ENV}={namespace}\0".encode()
    found = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            with open(f"/proc/{entry}/environ", "rb") as file:
                if marker in file.read() + b"\0":
                    found.append(int(entry))
    return found


def clean_after_demo(namespace: str, directory: str) -> None:
    """The demo's cleaner: when its stdin closes without ``done``, remove what the demo left.

    The demo (:class:`Demo`) holds the other end of the pipe and writes
    ``done`` once it cleaned up. A demo killed outright cannot: the pipe then
    closes with nothing written, and the cleaner waits (at most
    :data:`CLEANER_WAIT` s) until no process is left in the namespace (the
    children stop on the demo's death), unlinks its segments and removes its
    temporary directory.
    """
    for signum in (signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    if sys.stdin.buffer.read() == b"done":
        return
    with contextlib.suppress(TimeoutError):
        wait_for(lambda: not namespace_processes(namespace), CLEANER_WAIT, every=0.1)
    with BufferStore.use_namespace(namespace):
        BufferStore({}).unlink_all()
    shutil.rmtree(directory, ignore_errors=True)


def runtime_program() -> str:
    """How to run this installation's ``runtime`` from another terminal, as a shell word or two.

    ``runtime`` when that is the script on ``$PATH``, else the script's full
    path (a virtual environment that is not activated), else this interpreter
    with ``-m runtime``.
    """
    script = os.path.join(os.path.dirname(sys.executable), "runtime")
    found = shutil.which("runtime")
    if found is not None and os.path.realpath(found) == os.path.realpath(script):
        return "runtime"
    if os.path.isfile(script) and os.access(script, os.X_OK):
        return shlex.quote(script)
    return f"{shlex.quote(sys.executable)} -m runtime"


@contextlib.contextmanager
def foxglove_server(
    catalog: Mapping[str, type[Buffer]],
    namespace: str,
    port: int,
    on_ready: Callable[[str], None] | None = None,
) -> Iterator[BaseException | None]:
    """Serve a namespace's buffers to Foxglove from a thread while inside, writes allowed.

    ``on_ready`` gets the URL to open once the server listens (port 0: a free
    one), from the server's thread. Yields None, or the error that kept the
    server from starting (a port in use, say: ``runtime demo`` then stops with it).
    """
    from ..live import serve_foxglove  # the server's dependencies, only when asked for

    stop = threading.Event()
    ready = threading.Event()
    failure: list[BaseException] = []

    def announce(view: Any) -> None:
        if on_ready is not None:
            on_ready(view.url)
        ready.set()

    def serve() -> None:
        try:
            # Writes allowed: the demo's devices are emulated, its server listens on 127.0.0.1, and
            # browsers connect only from Foxglove's origins (a web page cannot drive them).
            serve_foxglove(
                dict(catalog),
                "127.0.0.1",
                port,
                stop_event=stop,
                namespace=namespace,
                on_ready=announce,
                allow_write=True,
            )
        except Exception as exc:  # noqa: BLE001 - a port in use, say: yielded to the caller
            failure.append(exc)
            ready.set()

    thread = threading.Thread(target=serve, name="runtime-demo-foxglove", daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield failure[0] if failure else None
    finally:
        stop.set()
        thread.join(10)
