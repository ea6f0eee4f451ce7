"""The ``runtime`` command-line program (also ``python -m runtime``).

One :mod:`argparse` parser with a subcommand per tool, so that every tool of the
project is reachable, documented (``runtime COMMAND --help``) and exits the same
way: 0 on success, 1 when the work failed, 2 on bad arguments.

Every command lives in a module exposing ``add_arguments(parser)`` and
``main(args) -> int``; this module builds the subparsers from them. The modules
are imported when the parser is built, but a command whose module cannot be
imported (for instance while it is still being written) only breaks itself: it
is replaced by a stub that explains the problem, and the other commands work.

The ``catalog`` command is small and lives here. So do the helpers the command
modules share: :class:`CommandError`, :func:`load_catalog`, :func:`make_console`
and the value formatting used for tables and JSON.
"""

from __future__ import annotations

import argparse
import ctypes
import difflib
import importlib
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ..exception import RuntimeBaseException
from ..jsonio import jsonable, short_float

if TYPE_CHECKING:
    from rich.console import Console

    from ..buffer import Buffer

__all__ = [
    "COMMANDS",
    "CommandError",
    "build_parser",
    "ctype_name",
    "format_value",
    "jsonable",
    "load_catalog",
    "main",
    "make_console",
    "short_float",
]

logger = logging.getLogger(__name__)

PROG = "runtime"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
MAX_SHOWN_ITEMS = 8
"""Array items shown in tables before eliding the rest (JSON always has them all)."""

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
  $ runtime msg decode 04 13 02 06 02 17  # what a frame on the wire says
  $ runtime msg encode ping               # build a frame
  $ runtime catalog --check my.yaml       # check a device catalog file

Run 'runtime COMMAND --help' for each command's options and examples.
Exit status: 0 success, 1 failure, 2 bad arguments, 130 interrupted.
"""


class CommandError(Exception):
    """A command cannot do its work: print ``message`` and exit with ``code``.

    Raised by the command modules for expected failures (a missing buffer, a
    bad catalog, undecodable input), so that the user sees one clear line
    instead of a traceback.
    """

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


# ---- helpers shared by the commands ---------------------------------------------------------------


def load_catalog(path: str | os.PathLike[str] | None = None) -> dict[str, type[Buffer]]:
    """Load the device catalog (the packaged one when ``path`` is None) into buffer types.

    Raises:
        CommandError: The file is missing or invalid; the message is the
            catalog checker's, which names the file, device type and parameter.
    """
    from .. import catalog

    try:
        return catalog.load(path)
    except (RuntimeBaseException, ValueError) as exc:
        raise CommandError(str(exc.message if isinstance(exc, RuntimeBaseException) else exc)) from None


def suggest(word: str, choices: Sequence[str]) -> str:
    """A ``(did you mean ...?)`` hint for a misspelled name, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def make_console(*, stderr: bool = False) -> Console:
    """A rich console for tables: no markup (values may contain brackets), wide when not a terminal.

    When the output is a pipe or a file, rich would wrap tables at 80 columns;
    scripts and tests read them more easily unwrapped.
    """
    from rich.console import Console

    console = Console(stderr=stderr, markup=False, highlight=False, emoji=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(stderr=stderr, markup=False, highlight=False, emoji=False, width=200)
    return console


def format_value(value: Any) -> str:
    """A short human-readable rendering of a parameter value, for tables.

    >>> format_value(ctypes.c_float(0.1).value), format_value(True), format_value(list(range(20)))
    ('0.1', 'true', '[0, 1, 2, 3, 4, 5, 6, 7, ... (20 items)]')
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(short_float(value))
    if isinstance(value, bytes | bytearray):
        return repr(bytes(value).decode("utf-8", "replace"))
    if isinstance(value, ctypes.Array | list | tuple):
        items = list(value)
        shown = ", ".join(format_value(item) for item in items[:MAX_SHOWN_ITEMS])
        more = f", ... ({len(items)} items)" if len(items) > MAX_SHOWN_ITEMS else ""
        return f"[{shown}{more}]"
    if value is None:
        return "-"
    return str(value)


def format_bounds(lower: float, upper: float) -> str:
    """``[lower, upper]`` for bounded parameters, empty when unbounded.

    >>> format_bounds(-1.0, 1.0), format_bounds(0.0, math.inf), format_bounds(-math.inf, math.inf)
    ('[-1, 1]', '[0, inf]', '')
    """
    if lower == -math.inf and upper == math.inf:
        return ""

    def number(bound: float) -> str:
        if math.isinf(bound):
            return "inf" if bound > 0 else "-inf"
        return str(int(bound)) if bound == int(bound) else repr(bound)

    return f"[{number(lower)}, {number(upper)}]"


_FLOAT_CODES = {"f": "float", "d": "double", "g": "longdouble", "?": "bool", "c": "char", "u": "wchar"}


def ctype_name(ctype: Any) -> str:
    """The catalog spelling of a ctypes type (``float``, ``uint8``, ``char[253]``).

    >>> ctype_name(ctypes.c_uint8), ctype_name(ctypes.c_char * 4), ctype_name(ctypes.c_double)
    ('uint8', 'char[4]', 'double')
    """
    if isinstance(ctype, type) and issubclass(ctype, ctypes.Array):
        return f"{ctype_name(ctype._type_)}[{ctype._length_}]"
    code = getattr(ctype, "_type_", "")
    if code in _FLOAT_CODES:
        return _FLOAT_CODES[code]
    if isinstance(code, str) and code in "bBhHiIlLqQ":
        return f"{'' if code.islower() else 'u'}int{ctypes.sizeof(ctype) * 8}"
    return str(getattr(ctype, "__name__", ctype)).removeprefix("c_")


def print_json(data: Any) -> None:
    """Print JSON for scripts: plain data, two-space indents, keys in insertion order."""
    print(json.dumps(data, indent=2, allow_nan=False))


# ---- the catalog command -------------------------------------------------------------------------

CATALOG_DESCRIPTION = """\
Show the device catalog, or check a catalog file.

The catalog (YAML) describes every device type: its Smart Device device_id,
its timing intervals and its parameters (ID, type, flags, bounds). Buffer
types are generated from it. Without --file, the catalog packaged with this
library is used. --check loads the file exactly as the runtime would and
prints "ok", or the first mistake (naming the file, device type and
parameter) with exit status 1. A catalog file must be a regular file of at
most 1 MiB.
"""

CATALOG_EPILOG = """\
examples:
  $ runtime catalog                          # every type of the packaged catalog
  $ runtime catalog yogi-bear rfid           # only these types
  $ runtime catalog --file my.yaml --json    # a catalog as JSON, for scripts
  $ runtime catalog --check my.yaml          # "ok", or what is wrong and where
"""


def add_catalog_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``runtime catalog``."""
    parser.add_argument("types", nargs="*", metavar="TYPE", help="show only these device types")
    parser.add_argument("--file", "-f", metavar="FILE", help="a catalog file (default: the packaged one)")
    parser.add_argument(
        "--check",
        nargs="?",
        const=True,
        default=None,
        metavar="FILE",
        help='validate the catalog (FILE, or --file, or the packaged one); print "ok" or the error',
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")


def _catalog_path(args: argparse.Namespace) -> str | None:
    check = args.check
    path: str | None = args.file
    if isinstance(check, str):
        if path is not None and path != check:
            raise CommandError("give the file once: --check FILE or --file FILE --check", code=2)
        path = check
    return path


def _describe_catalog(raw: Mapping[str, Any], types: Mapping[str, type[Buffer]]) -> dict[str, Any]:
    """The catalog as JSON data: raw type strings, with every default applied."""
    from ..buffer import DeviceBuffer

    result: dict[str, Any] = {}
    for name, buffer_type in types.items():
        raw_types = {param["name"]: param["type"] for param in raw[name]["params"]}
        entry: dict[str, Any] = {}
        if issubclass(buffer_type, DeviceBuffer):
            entry["device_id"] = buffer_type.device_id
            for key in ("sub_interval", "write_interval", "heartbeat_interval"):
                entry[key] = float(getattr(buffer_type, key))
        entry["params"] = [
            {
                "name": param.name,
                "id": param.id,
                "type": str(raw_types.get(param.name, ctype_name(param.ctype))).replace(" ", ""),
                "readable": param.readable,
                "writeable": param.writeable,
                "subscribed": param.subscribed,
                "lower": jsonable(float(param.lower)),
                "upper": jsonable(float(param.upper)),
            }
            for param in buffer_type.params.values()
        ]
        result[name] = entry
    return result


def _flags(param: Mapping[str, Any]) -> str:
    flags = ["r" if param["readable"] else "no-r"]
    if param["writeable"]:
        flags.append("w")
    if not param["subscribed"]:
        flags.append("no-sub")
    return " ".join(flags)


def catalog_main(args: argparse.Namespace) -> int:
    """Run ``runtime catalog``."""
    from .. import catalog

    path = _catalog_path(args)
    source = path or "the packaged catalog"
    try:
        raw = catalog.load_raw(path)
        from ..buffer import BufferStore

        types = BufferStore.make_catalog(raw)
    except (RuntimeBaseException, ValueError) as exc:
        message = exc.message if isinstance(exc, RuntimeBaseException) else str(exc)
        if args.check and args.json:
            print_json({"ok": False, "source": source, "error": message})
            return 1
        raise CommandError(message) from None
    if args.check:
        if args.json:
            print_json({"ok": True, "source": source, "types": len(types)})
        else:
            print(f"ok: {source}: {len(types)} device type{'s' * (len(types) != 1)}")
        return 0
    described = _describe_catalog(raw, types)
    unknown = [name for name in args.types if name not in described]
    if unknown:
        raise CommandError(
            f"no device type {unknown[0]!r} in {source}{suggest(unknown[0], list(described))}", code=1
        )
    if args.types:
        described = {name: described[name] for name in args.types}
    if args.json:
        print_json({"source": source, "types": described})
        return 0
    _print_catalog(described)
    return 0


def _print_catalog(described: Mapping[str, Any]) -> None:
    from rich import box
    from rich.table import Table

    console = make_console()
    for name, entry in described.items():
        if "device_id" in entry:
            title = (
                f"{name}: device_id {entry['device_id']}, sub {entry['sub_interval']:g} s, "
                f"write {entry['write_interval']:g} s, heartbeat {entry['heartbeat_interval']:g} s"
            )
        else:
            title = f"{name}: plain buffer (not a Smart Device)"
        console.print(title, soft_wrap=True)  # not a table title: rich would wrap it to the table's width
        table = Table(box=box.SIMPLE, pad_edge=False)
        for column in ("id", "parameter", "type", "flags", "bounds"):
            table.add_column(column, justify="right" if column == "id" else "left")
        for param in entry["params"]:
            lower = -math.inf if param["lower"] is None else param["lower"]
            upper = math.inf if param["upper"] is None else param["upper"]
            table.add_row(
                str(param["id"]), param["name"], param["type"], _flags(param), format_bounds(lower, upper)
            )
        console.print(table)


# ---- the parser ----------------------------------------------------------------------------------

MainFunction = Callable[[argparse.Namespace], int]


class _Command:
    """One subcommand: where its code lives and how ``runtime --help`` sums it up."""

    def __init__(self, name: str, module: str, summary: str, description: str, epilog: str) -> None:
        self.name = name
        self.module = module
        self.summary = summary
        self.description = description
        self.epilog = epilog


COMMANDS = (
    _Command(
        "bridge",
        "runtime.tools.bridge",
        "serve Smart Devices on serial ports into shared-memory buffers",
        """\
Serve Smart Devices into shared memory.

The bridge opens each serial port (a real USB device, or a pseudo-terminal of
'runtime emulate'), learns which device is there from its subscription
response, creates the device's buffer in shared memory and then pumps
messages both ways: DEV_DATA into the buffer, pending reads and writes out to
the device, heartbeats to notice a device that went silent (its buffer is then
marked invalid). It exits cleanly on Ctrl-C or SIGTERM.
""",
        """\
examples:
  $ runtime bridge --port /dev/ttyACM0 --port /dev/ttyACM1
  $ runtime bridge --glob '/dev/ttyACM*' --stats /tmp/bridge.json --verbose
  $ runtime bridge --glob '/tmp/devs/*' --catalog my-catalog.yaml   # runtime emulate ... --link /tmp/devs
""",
    ),
    _Command(
        "emulate",
        "runtime.tools.emulate",
        "pretend to be Smart Devices on pseudo-terminals (no hardware needed)",
        """\
Emulate Smart Devices on pseudo-terminals.

Each TYPE[:UID] argument becomes one device of that catalog type that speaks
the Smart Device protocol on its own pseudo-terminal, so the bridge can serve
it as if it were plugged in. At start one line per device gives its type, UID
and terminal path. It exits cleanly on Ctrl-C or SIGTERM.
""",
        """\
examples:
  $ runtime emulate yogi-bear limit-switch
  $ runtime emulate yogi-bear:0xa0a0000000000c0ffee --link /tmp/devs
""",
    ),
    _Command(
        "buffers",
        "runtime.tools.buffers",
        "list, show and watch the live buffers in shared memory",
        "",
        "",
    ),
    _Command("msg", "runtime.tools.msg", "decode and encode Smart Device protocol messages", "", ""),
    _Command(
        "catalog", "", "show the device catalog or check a catalog file", CATALOG_DESCRIPTION, CATALOG_EPILOG
    ),
    _Command(
        "demo",
        "runtime.tools.demo",
        "emulated devices, the bridge and student code working together",
        "",
        "",
    ),
)


def _unavailable(name: str, problem: str) -> tuple[Callable[[argparse.ArgumentParser], None], MainFunction]:
    """A stand-in for a command whose module cannot be imported: it says why, and exits 1."""

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("arguments", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    def command_main(args: argparse.Namespace) -> int:
        raise CommandError(f"the {name} command is not available: {problem}")

    return add_arguments, command_main


def _load_command(
    command: _Command,
) -> tuple[Callable[[argparse.ArgumentParser], None], MainFunction, ModuleType | None]:
    if not command.module:
        return add_catalog_arguments, catalog_main, None
    try:
        module = importlib.import_module(command.module)
        add_arguments = module.add_arguments
        command_main = module.main
    except Exception as exc:  # one broken module must not take down every command
        logger.debug("cannot import %s", command.module, exc_info=True)
        add_arguments, command_main = _unavailable(command.name, f"{type(exc).__name__}: {exc}")
        return add_arguments, command_main, None
    return add_arguments, command_main, module


def build_parser() -> argparse.ArgumentParser:
    """The ``runtime`` parser: global options and one subparser per command."""
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--log-level",
        dest="global_log_level",
        type=str.upper,
        choices=LOG_LEVELS,
        default=None,
        metavar="LEVEL",
        help=f"log messages of this level and above to stderr: {', '.join(LOG_LEVELS)} "
        "(default: INFO for bridge and emulate, which log one line per event; WARNING otherwise)",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        dest="global_verbosity",
        action="count",
        default=0,
        help="log more: -v for INFO, -vv for DEBUG",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands", required=True)
    for command in COMMANDS:
        add_arguments, command_main, module = _load_command(command)
        description = getattr(module, "DESCRIPTION", None) or command.description or None
        epilog = getattr(module, "EPILOG", None) or command.epilog or None
        subparser = subparsers.add_parser(
            command.name,
            help=command.summary,
            description=description,
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_arguments(subparser)
        subparser.set_defaults(command_main=command_main)
    return parser


def _exit_status(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


SERVICE_COMMANDS = frozenset({"bridge", "emulate"})
"""Long-running commands whose events (INFO) are shown unless asked otherwise."""


def _log_level(args: argparse.Namespace) -> int:
    """The level asked for with --log-level and -v, or the command's default."""
    name = args.global_log_level or ("INFO" if args.command in SERVICE_COMMANDS else "WARNING")
    return max(logging.DEBUG, logging.getLevelNamesMapping()[name] - 10 * int(args.global_verbosity))


def _configure_logging(args: argparse.Namespace) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger().setLevel(_log_level(args))


def log_level_arguments(args: argparse.Namespace) -> list[str]:
    """The global options that give a child ``runtime`` process the same log level as this one."""
    return ["--log-level", logging.getLevelName(_log_level(args))]


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
    _configure_logging(args)
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
