"""``runtime run FILE``: run student code in the field's modes (the engine is :mod:`runtime.runner`)."""

from __future__ import annotations

import argparse
import os
import threading

from ..jsonio import write_json_atomically
from ..runner import DEFAULT_CALL_LIMIT, DEFAULT_PERIOD, Runner, RunnerError, load_devices
from ..store import BufferStore
from ..student import MODES
from ._common import (
    CommandError,
    add_catalog_option,
    add_namespace_option,
    bounded,
    load_catalog,
    stop_on_signals,
)

__all__ = ["DESCRIPTION", "EPILOG", "add_arguments", "main"]

DESCRIPTION = """\
Run a student file written against PiE's student API, in the robot's modes.

The file defines any of autonomous_setup(), autonomous_main(), teleop_setup()
and teleop_main(), and uses Robot, Gamepad and Keyboard:

  Robot.get_value(device, param)         a sensor's value
  Robot.set_value(device, param, value)  command an actuator
  Robot.run(function, *args)             run a function beside the main loop
  Robot.is_running(function), Robot.sleep(seconds)
  Gamepad.get_value("button_a"), Keyboard.get_value("w")   (teleop only)

A device is a name of the robot file (--devices), a UID as 'runtime buffers'
prints it (0x...), or "<device_id>_<random>" as PiE's tools show it.

The mode is the field buffer's: 'runtime mode idle|auto|teleop' (or the driver
station, 'runtime drive') switches it. Entering auto or teleop runs the file in
a fresh process: <mode>_setup() once, then <mode>_main() every --period
seconds. Idle runs nothing and disables the robot: every motor at its safe
value. Leaving a mode kills its process, whatever it does, so its motors go
safe at once. An exception, or a call that does not return within --timeout
seconds, stops the mode (traceback of your file's lines only) and the runner
waits for the next mode. What the code prints shows here with the time and
the mode.
"""

EPILOG = """\
examples:
  $ runtime run robot.py                      # waits in idle for a mode
  $ runtime mode teleop                       # (another shell) teleop_setup, then teleop_main
  $ runtime run robot.py --mode auto          # bench work: start in auto at once
  $ runtime run robot.py --devices robot.yaml --reload

A robot file maps names to UIDs (YAML):
  left_motor: 0x20cafe0000000000c0ffee
  arm: "10_12648430"

Stop with Ctrl-C: the student code stops and every motor goes safe.
The namespace is $RUNTIME_BUFFER_NAMESPACE (default "rt") unless --namespace
is given.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``runtime run``."""
    parser.add_argument("file", metavar="FILE", help="the student file (Python)")
    parser.add_argument(
        "--mode", choices=list(MODES), help="set the field's mode to this at start (bench work)"
    )
    parser.add_argument(
        "--period",
        type=bounded(float, 0.001, 10.0),
        default=DEFAULT_PERIOD,
        metavar="S",
        help=f"seconds between two calls of the main function (default {DEFAULT_PERIOD})",
    )
    parser.add_argument(
        "--timeout",
        type=bounded(float, 0.01, 3600.0),
        default=DEFAULT_CALL_LIMIT,
        metavar="S",
        help="seconds a setup or main call may take before the mode is stopped as hung"
        f" (default {DEFAULT_CALL_LIMIT:g})",
    )
    parser.add_argument("--devices", metavar="FILE", help="the robot file: device names to UIDs (YAML)")
    parser.add_argument("--reload", action="store_true", help="load a changed FILE again at the next idle")
    parser.add_argument(
        "--stats", metavar="FILE", help="write the counters (modes, main calls...) as JSON here at exit"
    )
    add_namespace_option(parser)
    add_catalog_option(parser)


def main(args: argparse.Namespace) -> int:
    """Run ``runtime run``."""
    catalog = load_catalog(args.catalog)
    stop = threading.Event()
    try:
        devices = load_devices(args.devices) if args.devices else None
        with BufferStore.use_namespace(args.namespace), BufferStore(catalog) as store:
            runner = Runner(
                args.file,
                store,
                devices=devices,
                period=args.period,
                call_limit=args.timeout,
                reload=args.reload,
            )
            runner.say(
                f"running {os.path.basename(runner.path)} in namespace {store.namespace()}"
                f" (pid {os.getpid()}): 'runtime mode auto|teleop|idle' switches the mode"
            )
            try:
                with stop_on_signals(stop):
                    runner.run(stop, mode=args.mode)
            finally:
                if args.stats:
                    write_stats(args.stats, runner.counts)
    except RunnerError as exc:
        raise CommandError(str(exc)) from None
    return 0


def write_stats(path: str, counts: dict[str, int]) -> None:
    """The runner's counters as JSON, replacing the file at once (a reader never sees half of it)."""
    try:
        write_json_atomically(path, counts)
    except OSError as exc:
        raise CommandError(f"cannot write {path}: {exc.strerror or exc}") from None
