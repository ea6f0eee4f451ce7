"""``runtime mode idle|auto|teleop``: switch the robot's mode (the field buffer's ``mode``).

``runtime run`` follows the mode: auto or teleop runs the student code's
functions of that mode, idle runs nothing and disables the robot. The command
waits, briefly, for a running runner to take the mode, and says what it did.
"""

from __future__ import annotations

import argparse
import time

from ..buffer import DeviceBufferError
from ..store import BufferStore
from ..student import FIELD_KEY, MODES, RUNNER_KEY, mode_name
from ._common import add_catalog_option, add_namespace_option, bounded, load_catalog

__all__ = ["DESCRIPTION", "EPILOG", "add_arguments", "main"]

DESCRIPTION = """\
Switch the robot's mode: idle, auto (autonomous) or teleop.

'runtime run' follows it: entering auto or teleop runs the student code's
<mode>_setup() then <mode>_main(); idle stops the student code and disables
the robot (every motor at its safe value). Entering auto or teleop enables
the robot again, as a driver station's Enable does; 'runtime disable' while a
mode runs stops it (idle). The mode is kept in the field buffer, so a runner
started later finds it.
"""

EPILOG = """\
examples:
  $ runtime mode teleop      # the runner runs teleop_setup(), then teleop_main()
  $ runtime mode auto        # autonomous_setup(), autonomous_main()
  $ runtime mode idle        # stop: the student code ends, the motors go safe

From a laptop, 'runtime drive ENDPOINT' switches modes over Zenoh.
The namespace is $RUNTIME_BUFFER_NAMESPACE (default "rt") unless --namespace
is given.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``runtime mode``."""
    parser.add_argument("mode", choices=list(MODES), help="the mode to switch to")
    parser.add_argument(
        "--wait",
        type=bounded(float, 0.0, 60.0),
        default=2.0,
        metavar="S",
        help="seconds to wait for a running runner to take the mode (default 2)",
    )
    add_namespace_option(parser)
    add_catalog_option(parser)


def main(args: argparse.Namespace) -> int:
    """Run ``runtime mode``."""
    catalog = load_catalog(args.catalog)
    wanted = MODES[args.mode]
    with BufferStore.use_namespace(args.namespace) as namespace, BufferStore(catalog) as store:
        store.get_or_open(FIELD_KEY).set("mode", wanted)
        try:
            runner = store.get_or_open(RUNNER_KEY, create=False)
        except DeviceBufferError:
            runner = None
        if runner is None or not runner.valid:
            print(f"mode {args.mode} (namespace {namespace}); no runner runs: 'runtime run FILE' follows it")
            return 0
        deadline = time.monotonic() + args.wait
        running = None
        while time.monotonic() < deadline:
            try:
                running = int(runner.get("mode"))
            except DeviceBufferError:  # the runner stopped meanwhile
                break
            if running == wanted:
                break
            runner.wait_update(max(0.0, min(0.1, deadline - time.monotonic())))
        pid = runner.get("pid") if runner.valid else None
        if running == wanted:
            print(f"mode {args.mode} (namespace {namespace}): the runner (pid {pid}) runs it")
            return 0
        now = mode_name(running) if running is not None else "unknown"
        print(f"mode {args.mode} (namespace {namespace}): set, but the runner (pid {pid}) is in {now}")
        return 1
