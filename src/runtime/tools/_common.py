"""What the ``runtime`` commands share: one helper for each job they all do.

* :class:`CommandError`: an expected failure, printed as one line (no traceback);
* :func:`add_catalog_option` and :func:`load_catalog`: the ``--catalog FILE``
  option of every command that reads a device catalog, and the loading of it;
* :func:`parse_uid` (the library's :func:`runtime.messaging.parse_uid`, given
  here to the commands): a UID typed by a user, accepted the same way
  everywhere; :func:`parse_key`: ``TYPE:UID`` or a Smart Device UID;
* :func:`bounded`: the argparse type of every number option, with a finite
  range (so ``1e308``, ``inf`` and ``nan`` are usage errors everywhere);
* :func:`suggest`: the ``(did you mean ...?)`` hint for a misspelled name;
* :func:`configure_logging` and :func:`log_level`: how every command logs;
* :func:`make_console`, :func:`param_table`, :func:`format_value`,
  :func:`print_json`: tables and JSON
  for people and scripts (the table of buffers is ``runtime.tools.buffers.list_table``).

This module is imported by ``runtime --help``: it imports nothing heavy at the
top (ctypes, difflib, json, rich and the library's buffers come in when used).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..exception import RuntimeBaseException, did_you_mean

if TYPE_CHECKING:
    import asyncio
    from typing import TypeVar

    from rich.console import Console
    from rich.table import Table

    from ..buffer import Buffer
    from ..messaging import UID_FORMS, parse_uid
    from ..store import BufferStore

    Number = TypeVar("Number", int, float)  # only for the checker: a TypeVar costs milliseconds at startup

__all__ = [
    "LOG_FORMAT",
    "LONGEST_SECONDS",
    "PROG",
    "REFRESH_INTERVALS",
    "UID_FORMS",
    "CommandError",
    "add_catalog_option",
    "add_interval_option",
    "add_log_options",
    "bounded",
    "configure_logging",
    "devices_text",
    "elsewhere",
    "empty_namespace_line",
    "format_value",
    "load_catalog",
    "log_level",
    "log_level_arguments",
    "make_console",
    "other_namespaces",
    "param_table",
    "parse_key",
    "parse_uid",
    "print_json",
    "say_if_empty",
    "suggest",
    "switch_robot",
]

PROG = "runtime"
"""The program's name, first word of every error line (``runtime buffers: error: ...``)."""
MAX_SHOWN_ITEMS = 8
"""Array items shown in tables before eliding the rest (JSON always has them all)."""
REFRESH_INTERVALS = (0.01, 3600.0)
"""The seconds between refreshes of a live view (``buffers watch``, ``demo``): from a blur to once an hour."""
LONGEST_SECONDS = 86400.0
"""The most seconds a duration option takes (``demo --duration``, ``emulate --disconnect-every``): a day."""


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


# ---- the device catalog ---------------------------------------------------------------------------


def add_catalog_option(parser: argparse.ArgumentParser, *, default: Any = None) -> None:
    """Add ``--catalog FILE`` to a command that reads the device catalog.

    Args:
        default: None, or ``argparse.SUPPRESS`` on a parser whose parent
            parser has the option too (so that it is not overwritten).
    """
    parser.add_argument(
        "--catalog",
        metavar="FILE",
        default=default,
        help="device catalog file (default: the one packaged with runtime)",
    )


def add_namespace_option(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, default: Any = None
) -> None:
    """Add ``--namespace NS`` to a command that uses the buffers of a namespace.

    Args:
        default: As for :func:`add_catalog_option`.
    """
    from ..buffer import NAMESPACE_ENV

    parser.add_argument(
        "--namespace",
        metavar="NS",
        default=default,
        type=namespace_argument,
        help=f"the buffers' namespace (default: ${NAMESPACE_ENV}, or 'rt')",
    )


def namespace_argument(text: str) -> str:
    """``--namespace``'s value, checked as every namespace is (:func:`runtime.store.check_namespace`).

    A refused one is a usage error (status 2), before the command does anything.
    """
    from ..store import check_namespace

    try:
        return check_namespace(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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


# ---- the robot's state ----------------------------------------------------------------------------


def switch_robot(args: argparse.Namespace, *, enable: bool) -> tuple[str, bool, list[str]]:
    """Enable or disable the robot of ``--namespace`` (``runtime enable``/``disable``).

    Returns:
        ``(namespace, whether it was enabled before, the buffers marked)``.

    Raises:
        CommandError: The catalog or the robot's state cannot be read.
    """
    from ..buffer import DeviceBufferError
    from ..store import BufferStore

    catalog = load_catalog(args.catalog)
    with BufferStore.use_namespace(args.namespace) as namespace, BufferStore(catalog) as store:
        try:
            was_enabled = store.enabled
            marked = store.enable() if enable else store.disable()
        except DeviceBufferError as exc:
            action = "enable" if enable else "disable"
            raise CommandError(f"cannot {action} the robot (namespace {namespace}): {exc.message}") from None
    return namespace, was_enabled, marked


def devices_text(count: int) -> str:
    """``1 device``, ``2 devices``."""
    return f"{count} device{'' if count == 1 else 's'}"


# ---- what users type ------------------------------------------------------------------------------


def parse_key(text: str, store: BufferStore) -> tuple[str, int]:
    """Turn ``TYPE:UID`` or a Smart Device UID into a ``(type, uid)`` key (``runtime buffers``, ``record``).

    UIDs are read by :func:`parse_uid`, as by every command.

    Raises:
        CommandError: (status 2) The key is malformed, or names no catalog
            type; a Smart Device type with the UID of another type (``UID
            0x... is a yogi-bear (device_id 10), not a limit-switch``); or a
            UID that names no buffer here but differs in a hex digit or two
            from a device of that type in this namespace (a typo: the
            devices listed, closest first).
    """
    from ..messaging import parse_uid, uid_device_id

    type_name, sep, uid_text = text.rpartition(":")
    try:
        uid = parse_uid(uid_text, where=text)
    except ValueError as exc:
        raise CommandError(str(exc), code=2) from None
    if sep:
        if type_name not in store.catalog:
            raise CommandError(
                f"no device type {type_name!r} in the catalog{suggest(type_name, store.catalog)}", code=2
            )
        device_id = uid_device_id(uid)
        owner = store.device_types.get(device_id)
        if (
            device_id
            and owner is not None
            and owner != type_name
            and type_name in store.device_types.values()
        ):
            raise CommandError(
                f"UID {uid:#x} is a {owner} (device_id {device_id}), not a {type_name}: "
                f"give {owner}:{uid:#x}, or the UID alone",
                code=2,
            )
        key = type_name, uid
    else:
        try:
            key = store.normalize_key(uid)
        except KeyError:
            raise CommandError(
                f"UID {uid:#x} has device_id {uid_device_id(uid)}, which is no Smart Device type of the "
                "catalog; for other buffers give TYPE:UID",
                code=2,
            ) from None
    _check_typo(store, *key)
    return key


_TYPO_DIGITS = 2
"""Hex digits a typed UID may differ by from a device's for :func:`parse_key` to call it a typo."""


def _check_typo(store: BufferStore, type_name: str, uid: int) -> None:
    """A :class:`CommandError` when ``uid`` names no buffer here but is a digit or two off a device's."""
    from ..buffer import SHM_DIR
    from ..messaging import uid_digits_apart
    from ..report import devices_of_type

    if os.path.exists(os.path.join(SHM_DIR, store.segment_name(type_name, uid))):
        return
    devices = devices_of_type(store, type_name, near=uid)
    if not devices or uid_digits_apart(uid, devices[0]) > _TYPO_DIGITS:
        return
    listed = ", ".join(f"{other:#x}" for other in devices[:5]) + (" ..." if len(devices) > 5 else "")
    raise CommandError(
        f"no {type_name} {uid:#x} in namespace {store.namespace()!r}: did you mean {devices[0]:#x}? "
        f"(the {type_name} devices here, closest first: {listed})",
        code=2,
    )


def bounded(
    kind: Callable[[str], Number], low: Number, high: Number, *, above: bool = False, unit: str = ""
) -> Callable[[str], Number]:
    """The argparse ``type`` of a number option: ``kind`` (int or float) from ``low`` to ``high``.

    The range is always finite, so that ``1e308``, ``inf`` and ``nan`` are
    usage errors rather than a sleep until the end of time.

    >>> seconds = bounded(float, 0, 60, above=True, unit="seconds")
    >>> seconds("1.5")
    1.5
    >>> seconds("inf")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: must be a positive number of seconds, at most 60, not 'inf'

    Args:
        above: ``low`` itself is excluded (``above=True`` with ``low=0``: positive).
        unit: What the number counts, for the error message (``seconds``).
    """
    if not (math.isfinite(low) and math.isfinite(high) and low <= high):
        raise ValueError(f"bounded() needs a finite range, not {low!r}..{high!r}")
    noun = "an integer" if kind is int else "a number"
    what = f"{noun} of {unit}" if unit else noun
    low_text, high_text = (f"{bound:g}" if isinstance(bound, float) else str(bound) for bound in (low, high))

    def number(text: str) -> Number:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {noun}: {text!r}") from None
        if not (low < value <= high if above else low <= value <= high):  # also false for nan
            if above and low == 0:
                expected = f"a positive {what.removeprefix('a ').removeprefix('an ')}, at most {high_text}"
            elif above:
                expected = f"{what} above {low_text} and at most {high_text}"
            else:
                expected = f"{what} from {low_text} to {high_text}"
            raise argparse.ArgumentTypeError(f"must be {expected}, not {text!r}")
        return value

    return number


def add_interval_option(parser: argparse.ArgumentParser, *, default: float, what: str) -> None:
    """``--interval S``: the seconds between refreshes of a live view, within :data:`REFRESH_INTERVALS`."""
    low, high = REFRESH_INTERVALS
    parser.add_argument(
        "--interval",
        type=bounded(float, low, high, unit="seconds"),
        default=default,
        metavar="S",
        help=f"seconds between refreshes of {what}, {low:g} to {high:g} (default {default:g})",
    )


def __getattr__(name: str) -> Any:
    """``UID_FORMS`` and ``parse_uid``, the library's (:mod:`runtime.messaging`), imported when first used.

    ``runtime --help`` imports this module and not the protocol's codec (the
    compiled core): so these two come in only for a command that reads UIDs.
    """
    if name in ("UID_FORMS", "parse_uid"):
        from .. import messaging

        return getattr(messaging, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


suggest = did_you_mean
"""A ``(did you mean ...?)`` hint for a misspelled name, or an empty string: the library's one helper."""


# ---- logging ------------------------------------------------------------------------------------

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def add_log_options(parser: argparse.ArgumentParser) -> None:
    """``--log-level LEVEL`` and ``-v``: the program's options that choose what is logged."""
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


def log_level(args: argparse.Namespace) -> int:
    """The level asked for with ``--log-level`` and ``-v``, or else the command's default.

    A command that logs one line per event (a service) sets ``default_log_level``
    to ``INFO`` in its parser's defaults; the others log warnings and errors.
    """
    name = str(getattr(args, "global_log_level", None) or getattr(args, "default_log_level", "WARNING"))
    verbosity = int(getattr(args, "global_verbosity", 0) or 0)
    return max(logging.DEBUG, logging.getLevelNamesMapping()[name] - 10 * verbosity)


def log_level_arguments(args: argparse.Namespace) -> list[str]:
    """The program's options that give a child ``runtime`` process the same log level as this one."""
    return ["--log-level", logging.getLevelName(log_level(args))]


@contextlib.contextmanager
def stop_on_signals(
    stop: asyncio.Event | threading.Event,
    loop: asyncio.AbstractEventLoop | None = None,
    signals: Sequence[signal.Signals] = (signal.SIGINT, signal.SIGTERM),
) -> Iterator[None]:
    """Call ``stop.set()`` on these signals while inside, for a clean shutdown.

    With ``loop``, through the event loop (an asyncio server); without, as
    plain handlers (a threaded one). Off the main thread it does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[signal.Signals, Any] = {}
    for signum in signals:
        if loop is not None:
            loop.add_signal_handler(signum, stop.set)
        else:
            previous[signum] = signal.signal(signum, lambda *_: stop.set())
    try:
        yield
    finally:
        for signum in signals:
            if loop is not None:
                loop.remove_signal_handler(signum)
            else:
                signal.signal(signum, previous[signum])


def configure_logging(level: int | None = None, *, debug: Iterable[str] = ()) -> None:
    """Set up logging the one way every command logs: :data:`LOG_FORMAT` lines on stderr.

    ``runtime`` calls it once, with :func:`log_level`. A command's ``main``
    calls it too, with ``level`` None: run by ``runtime`` it then keeps the
    level chosen there, run on its own (``python -m runtime.tools.bridge``) it
    logs at INFO.

    Args:
        level: The root logger's level; None keeps the one already set up.
        debug: Loggers whose DEBUG lines pass whatever the level (a command's
            own ``--verbose``: every frame, every protocol error).
    """
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format=LOG_FORMAT, stream=sys.stderr)
        if level is None:
            level = logging.INFO
    if level is not None:
        root.setLevel(level)
    for name in debug:
        logging.getLogger(name).setLevel(logging.DEBUG)


# ---- output -------------------------------------------------------------------------------------


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

    >>> import ctypes
    >>> format_value(ctypes.c_float(0.1).value), format_value(True), format_value(list(range(20)))
    ('0.1', 'true', '[0, 1, 2, 3, 4, 5, 6, 7, ... (20 items)]')
    """
    import ctypes

    from ..values import short_float

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


def param_table(params: Iterable[Mapping[str, Any]], values: Sequence[str] | None = None) -> Table:
    """The table of a device type's parameters: id, name, type, (value,) flags, bounds.

    Args:
        params: Each parameter's ``id``, ``name``, ``type``, ``readable``,
            ``writeable``, ``subscribed``, ``lower`` and ``upper`` (None for
            an infinite bound, as in JSON).
        values: The text of each parameter's value, for a column of values.

    Flags: ``r`` readable (``no-r``: write-only), ``w`` writeable, ``no-sub``
    not in the device's subscription.
    """
    from rich import box
    from rich.table import Table

    from ..values import format_bounds

    table = Table(box=box.SIMPLE, pad_edge=False)
    columns = ["id", "parameter", "type", "flags", "bounds"]
    if values is not None:
        columns.insert(3, "value")
    for column in columns:
        table.add_column(column, justify="right" if column == "id" else "left", overflow="fold")
    for index, param in enumerate(params):
        flags = ["r" if param["readable"] else "no-r"]
        if param["writeable"]:
            flags.append("w")
        if not param["subscribed"]:
            flags.append("no-sub")
        lower = -math.inf if param["lower"] is None else param["lower"]
        upper = math.inf if param["upper"] is None else param["upper"]
        row = [str(param["id"]), param["name"], param["type"], " ".join(flags), format_bounds(lower, upper)]
        if values is not None:
            row.insert(3, values[index])
        table.add_row(*row)
    return table


def print_json(data: Any) -> None:
    """Print JSON for scripts: plain data, two-space indents, keys in insertion order."""
    import json

    print(json.dumps(data, indent=2, allow_nan=False))


# ---- where the buffers are ------------------------------------------------------------------------


def other_namespaces() -> list[str]:
    """The namespaces other than the current one that have buffers (:func:`runtime.store.buffer_namespaces`).

    Those with a live producer come first.
    """
    from ..store import BufferStore, buffer_namespaces

    current = BufferStore.namespace()
    live = set(buffer_namespaces(live=True))
    others = [namespace for namespace in buffer_namespaces() if namespace != current]
    return sorted(others, key=lambda namespace: namespace not in live)


def elsewhere() -> str:
    """Where the buffers are, for a message that found none in the current namespace."""
    from ..buffer import SHM_DIR

    others = other_namespaces()
    if not others:
        return f"no other namespace has buffers in {SHM_DIR}"
    return f"namespaces with buffers: {', '.join(others)} (choose one with --namespace NS)"


def empty_namespace_line() -> str:
    """The line that says that the current namespace has no buffers, and which namespaces do."""
    from ..store import BufferStore

    return f"no buffers in namespace {BufferStore.namespace()!r}; {elsewhere()}"


def say_if_empty(catalog: dict[str, type[Buffer]], namespace: str, command: str, then: str) -> None:
    """A line on stderr when the namespace has no buffers yet (and which namespaces have some)."""
    from ..store import BufferStore

    if not BufferStore(catalog).find_segments(namespace):
        print(f"{PROG} {command}: {empty_namespace_line()}; {then}", file=sys.stderr, flush=True)
