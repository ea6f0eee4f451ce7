"""``runtime drive``: the driver station on the laptop, over Zenoh.

Its help, its options and a short ``main()``; the engine (keys, the gamepad,
line commands, going idle on the way out) is :mod:`runtime.driver`. The robot
goes idle when the driver station ends: this command sends idle on its way
out, and the robot's ``runtime zenoh`` puts it idle itself when the command is
killed or its network is lost (the client's liveliness token goes).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..driver import SCRIPT_HELP, Display, go_idle, interactive, run_script
from ._common import CommandError, add_catalog_option, configure_logging, load_catalog, stop_on_signals

if TYPE_CHECKING:
    from ..remote import Robot

__all__ = ["DESCRIPTION", "EPILOG", "add_arguments", "main"]

DESCRIPTION = (
    """\
The driver station: drive the robot from this laptop, over Zenoh.

Connects to the robot's 'runtime zenoh' and switches its mode (idle, auto,
teleop: 'runtime run' on the robot runs the student code's functions of that
mode), sends this terminal's keys as the student API's Keyboard and a gamepad
as its Gamepad, and shows the mode and what the student code prints.

On a terminal, every key counts at once (no Return):
  space            idle (the robot stops)
  Ctrl-A           auto (autonomous: the student's autonomous_setup/_main)
  Ctrl-T           teleop (the student's teleop_setup/_main; keys and gamepad)
  Ctrl-C, Ctrl-Q   quit: the robot goes idle first
  a-z 0-9 , . / ; ' [ ] and the arrows   Keyboard.get_value(key) is True while
                   held. A terminal sees presses, not releases: a key counts as
                   held until 0.3 s after its last auto-repeat (0.6 s after a
                   single press), so a tap is a short press.
A gamepad is read when pygame is installed (pip install 'runtime[gamepad]':
SDL2 knows the layout of most gamepads on Linux, macOS and Windows); without
it, the command says so once and works with the keyboard only.

When stdin is not a terminal (a pipe, a file), it reads line commands:
"""
    + SCRIPT_HELP
    + """

It prints one line per event: 'mode: ...', 'log: <a line the student code
printed>', 'error: ...' (what the robot refused, or a bad command line),
'robot: ...'. The robot goes idle when this ends: on the way out it sends idle,
and if it is killed or the network is lost, the robot's 'runtime zenoh' sets
idle itself (within the Zenoh lease, 10 s by default) and releases the keys
and the gamepad.
"""
)

EPILOG = """\
examples:
  $ runtime drive tcp/192.168.0.42:7447            # drive the robot there (runtime zenoh --listen)
  $ runtime drive tcp/robot.local:7447 --namespace robot-7
  $ runtime drive tcp/robot.local:7447 < teleop-test.txt

A script (teleop-test.txt) that drives forward for two seconds, then stops:
  mode teleop
  key w down
  wait 2
  key w up
  gamepad joystick_left_y -0.5
  wait 1
  quit
"""

DEFAULT_LOG_LEVEL = "WARNING"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``runtime drive`` options to ``parser``."""
    parser.add_argument(
        "endpoint",
        metavar="ENDPOINT",
        help="where the robot's runtime zenoh listens, such as tcp/192.168.0.42:7447",
    )
    parser.add_argument(
        "--namespace",
        metavar="NS",
        default=None,
        help="the robot's name on the network (runtime zenoh --name; default: $RUNTIME_BUFFER_NAMESPACE "
        "when set, else the one namespace the runtime zenoh at ENDPOINT serves)",
    )
    parser.add_argument(
        "--config", metavar="FILE", default=None, help="a Zenoh configuration file (JSON5): TLS, leases..."
    )
    parser.add_argument("--no-gamepad", action="store_true", help="do not look for a gamepad (on a terminal)")
    add_catalog_option(parser)


@contextlib.contextmanager
def _connected(args: argparse.Namespace) -> Iterator[Robot]:
    from .. import remote

    catalog = load_catalog(args.catalog)
    try:
        robot = remote.connect(args.endpoint, namespace=args.namespace, config=args.config, catalog=catalog)
    except remote.RemoteError as exc:
        raise CommandError(f"{exc.args[0] if exc.args else exc} (is runtime zenoh running there?)") from None
    except ValueError as exc:
        raise CommandError(str(exc), 2) from None
    try:
        yield robot
    finally:
        robot.close()


def main(args: argparse.Namespace) -> int:
    """Drive until a quit key, ``quit``, the end of the input, or SIGINT/SIGTERM; the exit code."""
    configure_logging()
    stop = threading.Event()
    with stop_on_signals(stop), _connected(args) as robot:
        display = Display(robot, sys.stdout)
        display.say(f"connected to runtime/{robot.namespace} as {robot.client_id}")
        if not robot.online:
            display.say("robot: offline (waiting for it to come back)")
        bad = 0
        try:
            if sys.stdin.isatty():
                interactive(robot, display, stop, gamepad=not args.no_gamepad)
            else:
                bad = run_script(robot, sys.stdin, display, stop)
        finally:  # the robot goes idle when the driver station ends
            if go_idle(robot):
                display.say("quit: the robot is idle")
            else:
                display.say("quit: idle sent, not confirmed (the robot goes idle when this client goes)")
    return 1 if bad else 0


if __name__ == "__main__":  # python -m runtime.tools.drive ...: the same as runtime drive ...
    from .cli import main as runtime_main

    raise SystemExit(runtime_main(["drive", *sys.argv[1:]]))
