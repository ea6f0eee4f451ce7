"""``runtime demo``: the whole machine working, on a computer with no hardware.

The demo starts, as separate processes, exactly what runs on a robot:
``runtime emulate`` (several emulated Smart Devices of different catalog
types), ``runtime bridge`` (serving them into shared memory) and ``runtime
run`` (student code, in autonomous mode: the demo's own file, ``--student
FILE``, or none with ``--no-student``); ``runtime mode teleop`` hands the
motors to the gamepad and keyboard. The engine is
:class:`runtime.testing.demo.Demo` (see there how it stops and cleans up
however it ends); this module holds the command: its help, its options, the
banner and the live table (:func:`runtime.tools._views.demo_table`).

On a terminal it shows a live table of the buffers; otherwise (or at the end)
it prints a summary per device from the bridge's statistics: messages in and
out, errors, last values.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shlex
import sys

from ..buffer import NAMESPACE_ENV, SHM_DIR, Buffer, DeviceBuffer
from ..store import BufferStore
from ..testing.demo import (
    DEFAULT_DEVICES,
    DEMO_STUDENT_FILE,
    DEMO_YEAR,
    Demo,
    DemoDevice,
    DemoError,
    Interrupted,
    SignalGuard,
    foxglove_server,
    runtime_program,
)
from ..testing.robot import namespace_in_use
from ._common import (
    LONGEST_SECONDS,
    CommandError,
    add_catalog_option,
    add_interval_option,
    bounded,
    load_catalog,
    log_level_arguments,
    make_console,
    print_json,
)
from ._views import demo_table, print_demo_summary

__all__ = ["add_arguments", "examples_command", "main", "watch_command"]

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
In the project's directory, 'make demo' runs 'runtime demo', and
'make demo DEMO_ARGS="--foxglove 8765"' runs 'runtime demo --foxglove 8765'.
"""


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


def watch_command(namespace: str, catalog: str | None = None) -> str:
    """The shell command that shows the demo's buffers live: ``runtime buffers watch --namespace NS``."""
    words = [runtime_program(), "buffers", "watch", "--namespace", shlex.quote(namespace)]
    if catalog:
        words += ["--catalog", shlex.quote(os.path.abspath(catalog))]
    return " ".join(words)


def examples_command(namespace: str, program: str = "examples/read_a_sensor.py") -> str:
    """How a program finds the demo's buffers: ``RUNTIME_BUFFER_NAMESPACE=NS python PROGRAM``."""
    return f"{NAMESPACE_ENV}={shlex.quote(namespace)} python {program}"


def main(args: argparse.Namespace) -> int:
    """Run ``runtime demo``; 0 when it ran and stopped cleanly."""
    catalog = load_catalog(args.catalog)
    devices = _choose_devices(args, catalog)
    namespace = args.namespace or f"rt-demo-{os.getpid()}"
    _check_start(args, namespace)
    status, interrupted = 0, False
    with BufferStore.use_namespace(namespace), SignalGuard() as guard, contextlib.ExitStack() as stack:
        demo = Demo(
            catalog,
            devices,
            namespace,
            student=None if args.no_student else args.student or DEMO_STUDENT_FILE,
            catalog_file=args.catalog,
            options=log_level_arguments(args),
            guard=guard,
            on_kill=lambda name: _say(f"the {name} did not stop in time; killing it"),
        )
        try:
            _print_banner(args, devices, namespace)
            demo.start()
            if args.foxglove is not None:
                _serve_foxglove(stack, catalog, namespace, args.foxglove)
            _run_until_done(demo, args)
        except (KeyboardInterrupt, Interrupted):
            _say("stopping")
            interrupted = True
        except DemoError as exc:
            _say(f"error: {exc.message}")
            status = 1
        finally:
            summary, removed = demo.finish()  # signals cannot interrupt it
        if removed:
            _say(f"removed {len(removed)} shared-memory segments")
    if args.json:
        print_json(summary)
    else:
        print_demo_summary(summary)
    if status == 0 and not interrupted and not any(device["seen"] for device in summary["devices"]):
        _say("error: the bridge served no device")
        status = 1
    return status


def _say(message: str) -> None:
    print(f"runtime demo: {message}", file=sys.stderr)


def _serve_foxglove(
    stack: contextlib.ExitStack, catalog: dict[str, type[Buffer]], namespace: str, port: int
) -> None:
    """Serve the demo's buffers to Foxglove until the stack closes, and say where.

    Raises:
        DemoError: The server cannot start (the port is taken, say): the demo stops.
    """

    def announce(url: str) -> None:
        what = "Foxglove WebSocket; writes allowed, browsers from the Foxglove app only"
        _say(f"live in Foxglove: open {url} ({what})")

    failure = stack.enter_context(foxglove_server(catalog, namespace, port, on_ready=announce))
    if failure is not None:
        where = f"127.0.0.1:{port}"
        raise DemoError(
            f"Foxglove cannot serve on {where}: {' '.join(str(failure).split())}", child="foxglove"
        )


def _check_start(args: argparse.Namespace, namespace: str) -> None:
    """Refuse a missing student file, and a namespace that has segments (the demo unlinks all of its own)."""
    if args.student and not os.path.isfile(args.student):
        raise CommandError(f"no student file {args.student!r}", code=2)
    if namespace_in_use(namespace):
        raise CommandError(
            f"namespace {namespace!r} already has segments in {SHM_DIR}; the demo unlinks all of its "
            "namespace at exit, so it needs one of its own"
        )


def _print_banner(args: argparse.Namespace, devices: list[DemoDevice], namespace: str) -> None:
    """What the demo emulates, where its buffers are, and how to watch them and drive from elsewhere."""
    print(
        f"runtime demo: emulating {', '.join(device.type_name for device in devices)}; "
        f"buffers in namespace {namespace}\n"
        f"runtime demo: watch them from another terminal: {watch_command(namespace, args.catalog)}\n"
        f"runtime demo: your programs find them in its namespace: {examples_command(namespace)}",
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
    if not console.is_terminal or args.json:
        demo.watch(args.duration, args.interval)
        return
    from rich.live import Live

    with Live(demo_table(demo, args.duration), console=console, auto_refresh=False) as live:
        demo.watch(
            args.duration, args.interval, lambda: live.update(demo_table(demo, args.duration), refresh=True)
        )
