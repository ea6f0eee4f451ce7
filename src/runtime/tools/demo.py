"""``runtime demo``: the whole machine working, on a computer with no hardware.

The demo starts, as separate processes, exactly what runs on a robot:

1. ``runtime emulate``: several emulated Smart Devices of different catalog
   types, each speaking the wire protocol on its own pseudo-terminal;
2. ``runtime bridge``: serves those terminals into buffers in shared memory
   and writes its statistics to a file;
3. ``runtime run`` (:mod:`runtime.runner`): student code written against the
   student API, started in autonomous mode. The demo's own file
   (``runtime/tools/_demo_robot.py``, part of the package so that the demo runs
   from an installed wheel) reads the sensors (line follower, limit switch,
   battery) and drives the motors and servos, which the bridge sends to the
   devices; ``runtime mode teleop`` hands it to the gamepad and keyboard.
   ``--student FILE`` runs your file instead (its devices are named in the
   robot file the demo writes: ``yogi_bear``, ``limit_switch``...), and
   ``--no-student`` none at all, to drive by hand.

On a terminal it shows a live table of the buffers; otherwise (or at the end)
it prints a summary per device from the bridge's statistics: messages in and
out, errors, last values.

Everything lives in a private namespace (``RUNTIME_BUFFER_NAMESPACE``, by
default ``rt-demo-<pid>``) passed to every child, and a temporary directory.
Whatever ends the demo (``--duration``, Ctrl-C, SIGTERM, a child failing) the
demo stops its children in order (runner, bridge, emulator: killing
those that do not stop in time), unlinks every segment of its namespace and
removes its directory. Killed outright (SIGKILL), it cannot: its children then
stop by themselves (they get SIGTERM when it dies), leaving only the segments.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import math
import os
import queue
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import IO, Any

from ..buffer import NAMESPACE_ENV, SHM_DIR, Buffer, DeviceBuffer, DeviceBufferError
from ..commands import die_with_parent
from ..live import serve_foxglove
from ..report import inspect_buffer
from ..store import BufferStore
from ..values import jsonable
from ._common import (
    LONGEST_SECONDS,
    CommandError,
    add_catalog_option,
    add_interval_option,
    bounded,
    format_value,
    load_catalog,
    log_level_arguments,
    make_console,
    print_json,
)
from ._views import list_table

__all__ = [
    "DEFAULT_DEVICES",
    "Demo",
    "DemoDevice",
    "SignalGuard",
    "add_arguments",
    "main",
    "runtime_program",
    "watch_command",
]

DEFAULT_DEVICES = ("limit-switch", "line-follower", "battery", "servo-motor", "yogi-bear")
"""Device types the demo emulates when none are named: sensors and actuators."""
DEMO_YEAR = 0x0A
"""The season byte of the demo's UIDs."""
START_TIMEOUT = 20.0
"""Seconds the emulator has to announce its devices."""
STOP_TIMEOUTS = {"runner": 3.0, "bridge": 6.0, "emulator": 3.0}
"""Seconds each child has to exit after SIGTERM before it is killed."""
LOG_TAIL = 15
"""Lines of a failed child's log shown."""
DEMO_STUDENT_FILE = os.path.join(os.path.dirname(__file__), "_demo_robot.py")
"""The student file the demo runs unless ``--student`` names another, shipped in the package."""

DESCRIPTION = """\
Run the whole machine with no hardware: emulated Smart Devices, the bridge
serving them into shared memory, and student code (the student API, run by
'runtime run' in autonomous mode) reading sensors and writing motors through
the buffers, each in its own process. 'runtime mode teleop' hands the motors
to the gamepad and keyboard ('runtime drive'); 'runtime mode idle' stops them.

On a terminal a live table shows the buffers (state, age, values) and the
bridge's message counters. At the end, and instead of the table when the
output is not a terminal, it prints a summary per device from the bridge's
statistics (messages in/out, errors, last values). Without --duration it runs
until Ctrl-C. Every process, shared-memory segment and temporary file it made
is removed when it ends, however it ends.
"""

EPILOG = f"""\
examples:
  $ runtime demo                              # until Ctrl-C, default devices
  $ runtime demo --duration 10
  $ runtime demo yogi-bear koala-bear rfid    # choose the emulated device types
  $ runtime demo --duration 5 --json          # the summary as JSON, for scripts
  $ runtime demo --student robot.py           # your student file (devices: yogi_bear, battery...)
  $ runtime demo --no-student                 # no student code: drive by hand (runtime buffers write)
  $ runtime mode teleop --namespace rt-demo-4242     # from another terminal: the gamepad drives
  $ runtime buffers watch --namespace rt-demo-4242   # from another terminal: the command it prints

default devices: {", ".join(DEFAULT_DEVICES)}
In the project's directory, 'make demo' runs 'runtime demo'.
"""


class DemoError(Exception):
    """The demo cannot go on (a child failed); the message says which and why."""


class _Interrupted(BaseException):
    """SIGTERM/SIGHUP arrived: stop like on Ctrl-C."""


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


def robot_names(devices: list[DemoDevice]) -> dict[str, int]:
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


# ---- the demo -----------------------------------------------------------------------------------


class Demo:
    """Start the children, show them working, stop them and clean up after them."""

    def __init__(
        self,
        args: argparse.Namespace,
        catalog: dict[str, type[Buffer]],
        devices: list[DemoDevice],
        namespace: str,
        guard: SignalGuard | None = None,
    ) -> None:
        self.args = args
        self.guard = guard or SignalGuard()
        self.catalog = catalog
        self.devices = devices
        self.namespace = namespace
        self.directory = tempfile.mkdtemp(prefix=f"runtime-demo-{os.getpid()}-")
        self.stats_path = os.path.join(self.directory, "bridge-stats.json")
        self.student_path = os.path.join(self.directory, "runner.json")
        self.robot_path = os.path.join(self.directory, "robot.yaml")
        self.processes: dict[str, subprocess.Popen[str]] = {}
        self.logs: dict[str, IO[str]] = {}
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.env = dict(os.environ, **{NAMESPACE_ENV: namespace, "PYTHONUNBUFFERED": "1"})
        self.started = time.monotonic()

    # -- children --

    def _spawn(self, name: str, command: list[str], *, stdout_pipe: bool = False) -> subprocess.Popen[str]:
        log = open(os.path.join(self.directory, f"{name}.log"), "w")  # closed in stop()
        self.logs[name] = log
        with self.guard.deferred():  # a signal now would leave a child we do not know about
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if stdout_pipe else log,
                stderr=log,
                env=self.env,
                text=True,
                preexec_fn=functools.partial(die_with_parent, os.getpid()),  # see the module's docstring
            )
            self.processes[name] = process
        return process

    def _runtime(self, *arguments: str) -> list[str]:
        command = [sys.executable, "-m", "runtime", *log_level_arguments(self.args), *arguments]
        if self.args.catalog:
            command += ["--catalog", self.args.catalog]
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
        return DemoError(f"the {name} {what}" + (f"; its last output:\n{tail}" if tail else ""))

    def _read_lines(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line)
        self.lines.put(None)

    def start(self) -> None:
        """Start the emulator, learn its terminals, then the bridge and, once it serves them, the runner."""
        links = os.path.join(self.directory, "devices")
        emulator = self._spawn(
            "emulator",
            self._runtime("emulate", *(device.spec for device in self.devices), "--link", links),
            stdout_pipe=True,
        )
        assert emulator.stdout is not None
        threading.Thread(target=self._read_lines, args=(emulator.stdout,), daemon=True).start()
        by_uid = {device.uid: device for device in self.devices}
        deadline = time.monotonic() + START_TIMEOUT
        while any(device.port is None for device in self.devices):
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise self._failure(
                    "emulator", f"did not announce its devices within {START_TIMEOUT:g} s"
                ) from None
            if line is None:
                raise self._failure("emulator", f"exited at start (status {emulator.wait()})")
            words = line.split()
            with contextlib.suppress(IndexError, ValueError):
                device = by_uid[int(words[1], 16)]
                device.port = words[3] if len(words) > 3 else words[2]
        ports = [argument for device in self.devices for argument in ("--port", str(device.port))]
        self._spawn("bridge", self._runtime("bridge", *ports, "--stats", self.stats_path))
        if self.args.no_student:
            return
        self._wait_served()  # student code that reads a device at once finds it
        with open(self.robot_path, "w") as file:
            file.write("".join(f"{name}: {uid:#x}\n" for name, uid in robot_names(self.devices).items()))
        student = os.path.abspath(self.args.student or DEMO_STUDENT_FILE)
        options = ["--devices", self.robot_path, "--mode", "auto", "--stats", self.student_path]
        self._spawn("runner", self._runtime("run", student, *options))

    def _wait_served(self) -> None:
        """Wait until the bridge serves every device (valid buffers), or raise :class:`DemoError`."""
        deadline = time.monotonic() + START_TIMEOUT
        with BufferStore(self.catalog) as store:
            waiting = [device.uid for device in self.devices]
            while waiting:
                self.check_children()
                if time.monotonic() > deadline:
                    raise self._failure("bridge", f"did not serve the devices within {START_TIMEOUT:g} s")
                with contextlib.suppress(DeviceBufferError):
                    if store.get_or_open(waiting[0], create=False).valid:
                        waiting.pop(0)
                        continue
                time.sleep(0.05)

    def check_children(self) -> None:
        """Raise :class:`DemoError` when a child exited while the demo runs."""
        for name, process in self.processes.items():
            status = process.poll()
            if status is not None:
                raise self._failure(name, f"exited unexpectedly (status {status})")

    def stop(self) -> dict[str, int | None]:
        """Stop the children in order, killing those that do not stop in time; return their statuses."""
        statuses: dict[str, int | None] = {}
        for name in ("runner", "bridge", "emulator"):
            process = self.processes.get(name)
            if process is None:
                continue
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUTS.get(name.split()[0], 3.0))
            except subprocess.TimeoutExpired:
                print(f"runtime demo: the {name} did not stop in time; killing it", file=sys.stderr)
                process.kill()
                process.wait()
            statuses[name] = process.returncode
            if process.stdout is not None:
                process.stdout.close()
        for log in self.logs.values():
            log.close()
        return statuses

    def cleanup(self) -> list[str]:
        """Unlink every segment of the demo's namespace and remove its directory; return the segments."""
        removed = BufferStore({}).unlink_all()  # the namespace is set in the environment
        shutil.rmtree(self.directory, ignore_errors=True)
        return removed

    # -- what the user sees --

    def read_stats(self) -> dict[str, Any] | None:
        """The bridge's latest statistics, or None before it wrote any."""
        try:
            with open(self.stats_path) as file:
                data = json.load(file)
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _stats_by_uid(self, stats: dict[str, Any] | None) -> dict[int, dict[str, Any]]:
        result: dict[int, dict[str, Any]] = {}
        for entry in (stats or {}).get("devices", []):
            with contextlib.suppress(KeyError, TypeError, ValueError):
                uid = entry["uid"]
                result[int(uid, 16) if isinstance(uid, str) else int(uid)] = entry
        return result

    def live_table(self) -> Any:
        """The table shown on a terminal: the buffers command's table, plus the bridge's counters."""
        stats = self._stats_by_uid(self.read_stats())
        elapsed = time.monotonic() - self.started
        limit = f" of {self.args.duration:g}" if self.args.duration else ""
        with BufferStore(self.catalog) as store:
            reports = [inspect_buffer(store, device.type_name, device.uid) for device in self.devices]
        names = ("messages_in", "messages_out", "errors")
        counters = []
        for device in self.devices:
            entry = stats.get(device.uid, {})
            counters.append("/".join(str(entry.get(name, "-")) for name in names))
        return list_table(
            reports,
            values=True,
            extra={"in/out/err": counters},  # the bridge's message counters
            title=f"runtime demo: namespace {self.namespace}, {elapsed:.0f}{limit} s (Ctrl-C to stop)",
        )

    def summary(self, statuses: dict[str, int | None]) -> dict[str, Any]:
        """The end-of-run report: per device from the bridge's statistics, and the student's counters."""
        stats = self._stats_by_uid(self.read_stats())
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


def _print_summary(summary: dict[str, Any]) -> None:
    print(
        f"runtime demo summary ({summary['seconds']:g} s, namespace {summary['namespace']}), from the bridge:"
    )
    for device in summary["devices"]:
        if not device["seen"]:
            print(f"{device['type']} {device['uid']}: never seen by the bridge")
            continue
        print(
            f"{device['type']} {device['uid']}: messages in {device['messages_in']}, "
            f"out {device['messages_out']}, errors {device['errors']}"
        )
        values = ", ".join(f"{name}={format_value(value)}" for name, value in device["last_values"].items())
        print(f"    last values: {values or '-'}")
    student = summary["student_code"]
    if isinstance(student, dict):
        print(
            f"student code: {student.get('modes', 0)} modes, {student.get('cycles', 0)} main calls, "
            f"{student.get('overruns', 0)} overruns, {student.get('errors', 0)} errors, "
            f"{student.get('hung', 0)} hung"
        )


# ---- the command --------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``runtime demo``."""
    parser.add_argument(
        "types",
        nargs="*",
        metavar="TYPE",
        help=f"Smart Device types to emulate (default: {' '.join(DEFAULT_DEVICES)})",
    )
    parser.add_argument(
        "--duration",
        type=bounded(float, 0.0, LONGEST_SECONDS, above=True, unit="seconds"),
        metavar="S",
        help=f"stop after S seconds, at most {LONGEST_SECONDS:g} (default: at Ctrl-C)",
    )
    add_interval_option(parser, default=0.25, what="the live table")
    add_catalog_option(parser)
    parser.add_argument(
        "--namespace",
        metavar="NS",
        help="shared-memory namespace for the demo's buffers (default: rt-demo-<pid>)",
    )
    parser.add_argument("--seed", type=int, help="seed for the UIDs (reproducible runs)")
    parser.add_argument(
        "--foxglove",
        nargs="?",
        const=8765,
        type=bounded(int, 0, 65535, unit="port"),
        metavar="PORT",
        help="also serve the buffers to Foxglove (runtime foxglove --allow-write: the emulated devices "
        "can be driven from the Foxglove app, not from other web pages) on 127.0.0.1:PORT (default 8765; "
        "0: a free port) and print the URL to open",
    )
    parser.add_argument("--json", action="store_true", help="print the final summary as JSON (no live table)")
    students = parser.add_mutually_exclusive_group()
    students.add_argument(
        "--student",
        metavar="FILE",
        help="run this student file (the student API; devices named yogi_bear, limit_switch...) "
        "instead of the demo's",
    )
    students.add_argument(
        "--no-student", action="store_true", help="run no student code: drive the motors by hand"
    )


def _choose_devices(args: argparse.Namespace, catalog: dict[str, type[Buffer]]) -> list[DemoDevice]:
    names = list(args.types) or [name for name in DEFAULT_DEVICES if name in catalog]
    rng = random.Random(args.seed)
    devices = []
    for name in names:
        buffer_type = catalog.get(name)
        if buffer_type is None:
            raise CommandError(f"no device type {name!r} in the catalog", code=2)
        if not issubclass(buffer_type, DeviceBuffer):
            raise CommandError(
                f"{name!r} is not a Smart Device (it has no device_id): it cannot be emulated", code=2
            )
        uid = buffer_type.device_id << 72 | DEMO_YEAR << 64 | rng.getrandbits(64)
        devices.append(DemoDevice(name, uid))
    if not devices:
        raise CommandError("no Smart Device types to emulate", code=2)
    return devices


class SignalGuard:
    """Turn SIGINT, SIGTERM and SIGHUP into an orderly stop, exactly once.

    The first signal raises (``KeyboardInterrupt`` for SIGINT, else
    :class:`_Interrupted`) so that the demo's ``finally`` stops the children;
    from then on signals are ignored, so a second Ctrl-C cannot cut the
    cleanup short. Inside :meth:`deferred` (while a child is being spawned, so
    that no child can escape being recorded) a signal waits until the block ends.
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
        raise KeyboardInterrupt if signum == signal.SIGINT else _Interrupted(signum)

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


def watch_command(namespace: str, catalog: str | None = None) -> str:
    """The shell command that shows the demo's buffers live: ``runtime buffers watch --namespace NS``."""
    words = [runtime_program(), "buffers", "watch", "--namespace", shlex.quote(namespace)]
    if catalog:
        words += ["--catalog", shlex.quote(os.path.abspath(catalog))]
    return " ".join(words)


def _namespace_in_use(namespace: str) -> bool:
    with contextlib.suppress(FileNotFoundError):
        return any(entry.startswith(namespace + "-") for entry in os.listdir(SHM_DIR))
    return False


@contextlib.contextmanager
def _foxglove(catalog: dict[str, type[Buffer]], namespace: str, port: int) -> Iterator[None]:
    """Serve the demo's buffers to Foxglove from a thread while inside; print the URL once it listens."""
    stop = threading.Event()
    ready = threading.Event()
    failure: list[BaseException] = []

    def announce(view: Any) -> None:
        print(
            f"runtime demo: live in Foxglove: open {view.url} (Foxglove WebSocket; writes allowed, "
            "browsers from the Foxglove app only)",
            file=sys.stderr,
        )
        ready.set()

    def serve() -> None:
        try:
            # Writes allowed: the demo's devices are emulated, its server listens on 127.0.0.1, and
            # browsers connect only from Foxglove's origins (a web page cannot drive them).
            serve_foxglove(
                catalog,
                "127.0.0.1",
                port,
                stop_event=stop,
                namespace=namespace,
                on_ready=announce,
                allow_write=True,
            )
        except Exception as exc:  # noqa: BLE001 - a port in use, say: said once, the demo goes on
            failure.append(exc)
            ready.set()

    thread = threading.Thread(target=serve, name="runtime-demo-foxglove", daemon=True)
    thread.start()
    ready.wait(10)
    if failure:
        print(f"runtime demo: foxglove: {failure[0]}", file=sys.stderr)
    try:
        yield
    finally:
        stop.set()
        thread.join(10)


def main(args: argparse.Namespace) -> int:
    """Run ``runtime demo``; 0 when it ran and stopped cleanly."""
    catalog = load_catalog(args.catalog)
    devices = _choose_devices(args, catalog)
    namespace = args.namespace or f"rt-demo-{os.getpid()}"
    _check_start(args, namespace)
    status = 0
    interrupted = False
    with BufferStore.use_namespace(namespace), SignalGuard() as guard, contextlib.ExitStack() as stack:
        demo = Demo(args, catalog, devices, namespace, guard)
        try:
            _print_banner(args, devices, namespace)
            demo.start()
            if args.foxglove is not None:
                stack.enter_context(_foxglove(catalog, namespace, args.foxglove))
            _run_until_done(demo, args)
        except (KeyboardInterrupt, _Interrupted):
            print("runtime demo: stopping", file=sys.stderr)
            interrupted = True
        except DemoError as exc:
            print(f"runtime demo: error: {exc}", file=sys.stderr)
            status = 1
        finally:
            guard.stopping = True  # from here on, signals cannot interrupt the cleanup
            try:
                statuses = demo.stop()
                summary = demo.summary(statuses)
            finally:
                removed = demo.cleanup()
        if removed:
            print(f"runtime demo: removed {len(removed)} shared-memory segments", file=sys.stderr)
    if args.json:
        print_json(summary)
    else:
        _print_summary(summary)
    if status == 0 and not interrupted and not any(device["seen"] for device in summary["devices"]):
        print("runtime demo: error: the bridge served no device", file=sys.stderr)
        status = 1
    return status


def _check_start(args: argparse.Namespace, namespace: str) -> None:
    """Refuse a missing student file, and a namespace that has segments (the demo unlinks all of its own)."""
    if args.student and not os.path.isfile(args.student):
        raise CommandError(f"no student file {args.student!r}", code=2)
    if _namespace_in_use(namespace):
        raise CommandError(
            f"namespace {namespace!r} already has segments in {SHM_DIR}; the demo unlinks all of its "
            "namespace at exit, so it needs one of its own"
        )


def _print_banner(args: argparse.Namespace, devices: list[DemoDevice], namespace: str) -> None:
    """What the demo emulates, where its buffers are, and how to watch them and drive from elsewhere."""
    print(
        f"runtime demo: emulating {', '.join(device.type_name for device in devices)}; "
        f"buffers in namespace {namespace}\n"
        f"runtime demo: watch them from another terminal: {watch_command(namespace, args.catalog)}",
        file=sys.stderr,
    )
    if not args.no_student:
        switch = f"{runtime_program()} mode teleop --namespace {shlex.quote(namespace)}"
        print(f"runtime demo: the student code runs in auto; teleop: {switch}", file=sys.stderr)


def _run_until_done(demo: Demo, args: argparse.Namespace) -> None:
    """Watch the children until ``--duration`` is over (or forever), with the live table on a terminal.

    Raises:
        DemoError: A child exited.
    """
    console = make_console()
    deadline = demo.started + args.duration if args.duration else math.inf
    if console.is_terminal and not args.json:
        from rich.live import Live

        with Live(demo.live_table(), console=console, auto_refresh=False) as live:
            while time.monotonic() < deadline:
                demo.check_children()
                time.sleep(max(0.0, min(args.interval, deadline - time.monotonic())))
                live.update(demo.live_table(), refresh=True)
    else:
        while time.monotonic() < deadline:
            demo.check_children()
            time.sleep(max(0.0, min(args.interval, deadline - time.monotonic())))
