"""The ``runtime`` command-line program (also ``python -m runtime``).

One :mod:`argparse` parser with a subcommand per tool, so that every tool of the
project is reachable, documented (``runtime COMMAND --help``) and exits the same
way: 0 on success, 1 when the work failed, 2 on bad arguments.

Every command lives in its own module of :mod:`runtime.tools`, named like the
command, which holds all of the command: its help (``DESCRIPTION`` and
``EPILOG``), ``add_arguments(parser)`` and ``main(args) -> int``, and
``DEFAULT_LOG_LEVEL`` when it logs more than warnings by default. What the
commands share is in :mod:`runtime.tools._common`.

Starting is cheap: the top-level parser is built from :data:`COMMANDS` (name,
module, one-line summary) alone, and a command's module is imported, and its
parser filled in, only when that command is chosen on the command line. So
``runtime --help`` imports no command, and ``runtime msg encode ping`` only
:mod:`runtime.tools.msg` (not the bridge, asyncio, pyserial or rich). A
command whose module cannot be imported (for instance while it is still being
written) only breaks itself: it is replaced by a stub that explains the
problem, and the other commands work.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from ..exception import RuntimeBaseException
from ._common import PROG, CommandError, add_log_options, configure_logging, log_level

__all__ = ["COMMANDS", "Command", "build_parser", "main"]

logger = logging.getLogger(__name__)

DESCRIPTION = """\
Peripheral data storage and sharing on a robot.

Smart Devices (USB serial sensors and motor controllers) are served into
buffers in POSIX shared memory by the bridge; student code and telemetry read
and write them there. These tools run, emulate and inspect that machinery.
"""

EPILOG = """\
examples (the commands at a glance):
  $ runtime demo --duration 10            # emulated devices + bridge + student code, live
  $ runtime emulate yogi-bear battery     # pretend Smart Devices on pseudo-terminals
  $ runtime bridge --port /dev/ttyACM0    # serve real devices into shared memory
  $ runtime buffers list                  # the live buffers (also: show KEY, watch)
  $ runtime disable                       # stop every actuator now, and until 'runtime enable'
  $ runtime enable                        # let them move again (on the next command)
  $ runtime run robot.py                  # run student code; 'runtime mode teleop' starts it
  $ runtime drive tcp/robot.local:7447    # the driver station on the laptop
  $ runtime msg decode 04 13 02 06 02 17  # what a frame on the wire says
  $ runtime msg encode ping               # build a frame
  $ runtime catalog --check my.yaml       # check a device catalog file

Run 'runtime COMMAND --help' for each command's options and examples.
Exit status: 0 success, 1 failure, 2 bad arguments, 130 interrupted.
"""


# ---- the commands --------------------------------------------------------------------------------


class Command(NamedTuple):
    """One subcommand: where its code lives and how ``runtime --help`` sums it up."""

    name: str
    module: str
    summary: str


COMMANDS = (
    Command(
        "bridge", "runtime.tools.bridge", "serve Smart Devices on serial ports into shared-memory buffers"
    ),
    Command(
        "emulate",
        "runtime.tools.emulate",
        "pretend to be Smart Devices on pseudo-terminals (no hardware needed)",
    ),
    Command("buffers", "runtime.tools.buffers", "list, show, watch, write and clean the shared buffers"),
    Command("disable", "runtime.tools.disable", "stop every actuator of the robot until 'runtime enable'"),
    Command("enable", "runtime.tools.enable", "let the robot's actuators move again after 'runtime disable'"),
    Command("msg", "runtime.tools.msg", "decode and encode Smart Device protocol messages"),
    Command("catalog", "runtime.tools.catalog", "show the device catalog or check a catalog file"),
    Command("demo", "runtime.tools.demo", "emulated devices, the bridge and student code working together"),
    Command("foxglove", "runtime.tools.foxglove", "see and drive the buffers live in Foxglove (WebSocket)"),
    Command("record", "runtime.tools.record", "record every change of the buffers into an MCAP file"),
    Command("replay", "runtime.tools.replay", "play an MCAP recording back into buffers, with its timing"),
    Command("zenoh", "runtime.tools.zenoh", "serve the buffers on a Zenoh network, for other machines"),
    Command("run", "runtime.tools.run", "run student code (the student API) in the field's modes"),
    Command("mode", "runtime.tools.mode", "switch the robot's mode: idle, auto or teleop"),
    Command("drive", "runtime.tools.drive", "the driver station: modes, keyboard and gamepad over Zenoh"),
)
"""Every command, in the order of ``runtime --help``; the summary is its line there."""

MainFunction = Callable[[argparse.Namespace], int]


class _CommandParser(argparse.ArgumentParser):
    """A command's parser, filled in from the command's module when first needed."""

    command: Command | None = None
    """The command still to load (None once loaded, and for the parsers below a command's)."""

    def load(self) -> None:
        """Import the command's module; take its help, options and main function."""
        command, self.command = self.command, None
        if command is None:
            return
        try:
            module: Any = importlib.import_module(command.module)
            add_arguments = module.add_arguments
            command_main = module.main
        except Exception as exc:  # one broken module must not take down every command
            logger.debug("cannot import %s", command.module, exc_info=True)
            add_arguments, command_main = _unavailable(command.name, f"{type(exc).__name__}: {exc}")
            module = None
        self.description = getattr(module, "DESCRIPTION", None) or command.summary
        self.epilog = getattr(module, "EPILOG", None)
        add_arguments(self)
        self.set_defaults(
            command_main=command_main, default_log_level=getattr(module, "DEFAULT_LOG_LEVEL", "WARNING")
        )


class _LazySubParsersAction(argparse._SubParsersAction):  # type: ignore[type-arg]
    """Subcommands whose parsers are filled in only when chosen (see :class:`_CommandParser`)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        if isinstance(values, Sequence) and values:
            chosen = self._name_parser_map.get(values[0])
            if isinstance(chosen, _CommandParser):
                chosen.load()
        super().__call__(parser, namespace, values, option_string)


def _unavailable(name: str, problem: str) -> tuple[Callable[[argparse.ArgumentParser], None], MainFunction]:
    """A stand-in for a command whose module cannot be imported: it says why, and exits 1."""

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("arguments", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    def command_main(args: argparse.Namespace) -> int:
        raise CommandError(f"the {name} command is not available: {problem}")

    return add_arguments, command_main


def build_parser(*, load_all: bool = False) -> argparse.ArgumentParser:
    """The ``runtime`` parser: global options and one subparser per command.

    Args:
        load_all: Fill in every command's parser now (for tools that read
            every help text), instead of the chosen command's when parsing.
    """
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_log_options(parser)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(
        dest="command",
        metavar="COMMAND",
        title="commands",
        required=True,
        action=_LazySubParsersAction,
        parser_class=_CommandParser,
    )
    for command in COMMANDS:
        subparser = subparsers.add_parser(
            command.name, help=command.summary, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        subparser.command = command
        if load_all:
            subparser.load()
    return parser


def _exit_status(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse, letting commands with free-form words take them anywhere among the options.

    argparse cannot match positionals split by options (``msg encode dev-read
    --type yogi-bear duty_cycle``); a command that sets ``extra_words`` to the
    name of its word list gets such leftovers appended to it.
    """
    args, extras = parser.parse_known_args(argv)
    dest = getattr(args, "extra_words", None)
    if extras:
        if dest is None or any(word.startswith("-") and not _is_number(word) for word in extras):
            parser.error(f"unrecognized arguments: {' '.join(extras)}")
        getattr(args, dest).extend(extras)
    return args


def _is_number(word: str) -> bool:
    try:
        float(word)
    except ValueError:
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``runtime`` program; return its exit status (never raises SystemExit).

    Args:
        argv: The arguments without the program name (default: ``sys.argv[1:]``).
    """
    parser = build_parser()
    try:
        args = _parse(parser, argv)
    except SystemExit as exc:  # --help, --version, or bad arguments (status 2)
        return _exit_status(exc)
    configure_logging(log_level(args))
    name = f"{PROG} {args.command}"
    try:
        return int(args.command_main(args))
    except CommandError as exc:
        print(f"{name}: error: {exc.message}", file=sys.stderr)
        return exc.code
    except RuntimeBaseException as exc:
        logger.debug("command failed", exc_info=True)
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (``runtime buffers list | head``): not an error worth a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 1
